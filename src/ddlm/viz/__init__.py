"""Views of sampling and training: a live terminal view, GIF animations and plots.

A thin layer over :meth:`ddlm.DiffusionPipeline.stream` and the training logs; no diffusion
logic lives here. rich and Pillow are core dependencies; matplotlib (plots) is the ``plot`` extra.
"""
