"""The range of every numeric training setting (a :class:`ddlm.schema.Bounds`, as sampler options have),
and which settings are durations."""

from __future__ import annotations

from ddlm.schema import Bounds

AT_LEAST_ONE = Bounds(1)
NOT_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
FRACTION = Bounds(0, 1)
BELOW_ONE = Bounds(0, 1, high_open=True)

# Every numeric setting's range, in one place (a test checks that none is missing).
BOUNDS: dict[str, Bounds] = {
    "tokenizer.vocab_size": AT_LEAST_ONE,
    "data.context_length": AT_LEAST_ONE,
    "data.valid_fraction": BELOW_ONE,
    "model.d_model": AT_LEAST_ONE,
    "model.n_layers": AT_LEAST_ONE,
    "model.n_heads": AT_LEAST_ONE,
    "model.mlp_hidden": AT_LEAST_ONE,
    "model.dropout": BELOW_ONE,
    "model.cond_dim": AT_LEAST_ONE,
    "model.rope_theta": POSITIVE,
    "model.norm_eps": POSITIVE,
    "process.eps": Bounds(0, 1, low_open=True, high_open=True),
    "process.block_size": AT_LEAST_ONE,
    "process.clip_min": Bounds(0, 1, low_open=True),
    "process.clip_max": Bounds(0, 1, low_open=True),
    "optim.batch_size": AT_LEAST_ONE,
    "optim.grad_accum": AT_LEAST_ONE,
    "optim.lr": POSITIVE,
    "optim.min_lr_ratio": FRACTION,
    "optim.warmup_steps": NOT_NEGATIVE,
    "optim.warmup_fraction": FRACTION,
    "optim.weight_decay": NOT_NEGATIVE,
    "optim.beta1": BELOW_ONE,
    "optim.beta2": BELOW_ONE,
    "optim.grad_clip": NOT_NEGATIVE,
    "optim.ema": BELOW_ONE,
    "optim.max_steps": AT_LEAST_ONE,
    "optim.time_budget": POSITIVE,
    "optim.seed": Bounds(0, 2**31 - 1),
    "log.log_every": AT_LEAST_ONE,
    "log.eval_every": NOT_NEGATIVE,
    "log.eval_batches": AT_LEAST_ONE,
    "log.sample_every": NOT_NEGATIVE,
    "log.sample_steps": AT_LEAST_ONE,
    "log.save_every": NOT_NEGATIVE,
    "adapt.anneal_steps": NOT_NEGATIVE,
    "adapt.grow_steps": NOT_NEGATIVE,
    "adapt.ar_loss_weight": NOT_NEGATIVE,
}
DURATION_KEYS = {"optim.time_budget"}  # settings that also take "10m", "1.5h"
