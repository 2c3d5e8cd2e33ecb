"""Starting a run from a trained model's weights: adaptation across processes (``--init``).

An autoregressive model becomes a masked or block diffusion model by reading its weights under
the shift (``model.shift``: position i reads token i - 1, so its next-token head is reused as is;
DiffuGPT, Dream); a block model grows to a larger block size the same way. Before the first step
of adaptation, a block model of block size 1 initialised from an autoregressive model gives that
model's log-likelihood exactly (tested): the path between the two ends is continuous. A Hugging Face
causal LM (GPT-2, Llama, Qwen) starts a run the same way, its own network trained under the shift
(:mod:`ddlm.hf.causal`, :mod:`ddlm.training.hf_init`).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import torch

from ddlm.errors import DDLMError
from ddlm.families import build_process
from ddlm.hf import is_causal_lm_config, is_transformers_config
from ddlm.hf.causal import ADAPTATION_KEY, HFCausalDiffusionModel, adaptation_source
from ddlm.model import Transformer
from ddlm.pipeline import CONFIG_FILE, WEIGHTS_FILE, DiffusionPipeline, read_json, resolve_model_directory
from ddlm.processes import Vocabulary
from ddlm.training.config import RunConfig

# The backbone's shape comes from the source; the run's model section keeps only these.
RUN_MODEL_KEYS = ("dropout",)
HF_PROCESSES = ("masked", "block")  # what a Hugging Face causal LM is adapted to
# Parameters a source may lack: noise conditioning, which starts as the identity (adaLN at zero).
NEW_PARAMETER_PREFIXES = ("noise_embed.", "final_modulation.")
NEW_PARAMETER_PARTS = (".modulation.",)


def weights_fingerprint(source: str) -> str:
    """The first 16 hex digits of the SHA-256 of the source's weights: its weights file, or the shards
    of a Hugging Face model in name order."""
    directory = resolve_model_directory(source)
    files = [directory / WEIGHTS_FILE] if (directory / WEIGHTS_FILE).is_file() else sorted(directory.glob("model*.safetensors"))
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def load_source(source: str, hugging_face: bool = False, trust_remote_code: bool = False) -> DiffusionPipeline:
    """The model ``--init`` names, in fp32 on the CPU: a ddlm model directory or bundled name, a Hugging Face causal
    LM (a directory or Hub id; as the autoregressive process, ready to adapt: :mod:`ddlm.hf.causal`) or one adapted
    before; with ``hugging_face`` (fine-tuning) also a Hugging Face diffusion LM, but no causal LM not yet adapted."""
    directory = resolve_model_directory(source)
    config = read_json(directory / CONFIG_FILE, what="model config")
    if is_causal_lm_config(config) and ADAPTATION_KEY not in config:
        if hugging_face:
            raise DDLMError(f"{source} is an autoregressive LM; adapt it to diffusion before fine-tuning: "
                            f"ddlm train --init {source} --out DIR process.name=block")
        model, tokenizer = adaptation_source(directory, config, trust_remote_code)
        return DiffusionPipeline(model, tokenizer, build_process({"name": "ar"}, Vocabulary.of(tokenizer)),
                                 precision="fp32")
    pipe = DiffusionPipeline.from_pretrained(source, device="cpu", precision="fp32", trust_remote_code=trust_remote_code)
    if not isinstance(pipe.model, (Transformer, HFCausalDiffusionModel)) and not hugging_face:
        raise DDLMError(f"--init {source}: a run starts from a ddlm model or a Hugging Face causal LM (GPT-2, Llama, "
                        "Qwen); Hugging Face diffusion LMs are fine-tuned with ddlm finetune")
    return pipe


def is_hf_source(source: DiffusionPipeline) -> bool:
    """Whether ``source`` is a Hugging Face causal LM (adapted or not), which a run trains as it is."""
    return isinstance(source.model, HFCausalDiffusionModel)


def adapted_config(config: RunConfig, source: DiffusionPipeline, source_name: str) -> RunConfig:
    """``config`` with the source's backbone shape, the shift where the source predicts the next
    token (an autoregressive or already shifted model), and the source recorded in ``init``."""
    if is_hf_source(source):
        return hf_adapted_config(config, source, source_name)
    source_model = source.model.config
    causal_source = source_model.causal or source_model.shift
    if config.process.name == "ar" and not source_model.causal:
        raise DDLMError(f"--init {source_name}: a {source.process.name} model cannot become an autoregressive one; "
                        "initialise an ar run from an ar model")
    if config.process.name.startswith("sedd") and causal_source:
        raise DDLMError(f"--init {source_name}: SEDD models cannot start from an autoregressive model; "
                        "use process.name=masked or block")
    kept = {key: getattr(config.model, key) for key in RUN_MODEL_KEYS}
    model = replace(source_model, **kept, shift=causal_source and config.process.name != "ar",
                    time_conditioning=config.model.time_conditioning, start_id=None)
    return record_source(replace(config, model=model), source, source_name)


def hf_adapted_config(config: RunConfig, source: DiffusionPipeline, source_name: str) -> RunConfig:
    """``config`` for a run over a Hugging Face causal LM's network: masked or block diffusion under the shift,
    without noise conditioning (the network does not see the noise level), within the network's context, under
    the network's own dropout (``model.dropout`` is refused)."""
    name, context = config.process.name, source.model.context_length
    if name not in HF_PROCESSES:
        raise DDLMError(f"--init {source_name}: a Hugging Face causal LM is adapted to masked or block diffusion, "
                        f"not {name}; use process.name=masked or process.name=block")
    if config.data.context_length > context:
        raise DDLMError(f"data.context_length {config.data.context_length} exceeds the context of {source_name} "
                        f"({context}); use data.context_length={context} or less")
    refuse_dropout(config, f"--init {source_name}")
    model = replace(config.model, shift=True, time_conditioning=False, start_id=None)
    return record_source(replace(config, model=model), source, source_name)


def refuse_dropout(config: RunConfig, source: str) -> None:
    """A one-line error for a non-zero ``model.dropout`` on a Hugging Face network (``source``, as the command names
    it), which keeps its own dropout rates."""
    if config.model.dropout:
        raise DDLMError(f"{source}: a Hugging Face network keeps its own dropout (its config.json's rates); "
                        "drop model.dropout, or change those rates in the source's config.json")


def record_source(config: RunConfig, source: DiffusionPipeline, source_name: str) -> RunConfig:
    """``config`` with its ``init`` section naming the source: its name, process and weights' fingerprint."""
    config.init.source = source_name
    config.init.fingerprint = weights_fingerprint(source_name)
    config.init.source_process = source.process.name
    return config


def resumed_hf_source(config: RunConfig) -> DiffusionPipeline | None:
    """The Hugging Face causal LM a run being resumed started from (its network is rebuilt from it before the
    checkpoint is read), or None for a run of a ddlm backbone; its weights must be the ones the run started from."""
    source = config.init.source
    if source is None:
        return None
    if not is_transformers_config(read_json(resolve_model_directory(source) / CONFIG_FILE, what="model config")):
        return None
    if weights_fingerprint(source) != config.init.fingerprint:
        raise DDLMError(f"the weights of {source} changed since this run started from them; restore them to resume")
    return load_source(source)


def load_initial_weights(model: Transformer, source: Transformer) -> None:
    """Copy the source's weights into ``model``; parameters the source lacks (noise conditioning) keep
    their identity initialisation. A one-line error names any shape that does not fit."""
    state = source.state_dict()
    own = model.state_dict()
    misfits = [name for name, tensor in state.items() if name in own and own[name].shape != tensor.shape]
    unexpected = [name for name in state if name not in own]
    missing = [name for name in own if name not in state and not is_new_parameter(name)]
    if misfits or unexpected or missing:
        names = (misfits or unexpected or missing)[:3]
        raise DDLMError(f"the --init model does not fit this run's backbone ({', '.join(names)}); "
                        "leave the model.* settings to the source model")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def is_new_parameter(name: str) -> bool:
    return name.startswith(NEW_PARAMETER_PREFIXES) or any(part in name for part in NEW_PARAMETER_PARTS)


def describe(config: RunConfig) -> dict[str, Any]:
    """The ``adapted_from`` record of a model directory: the source's name, process and weights' fingerprint."""
    return {"source": config.init.source, "process": config.init.source_process,
            "fingerprint": config.init.fingerprint, "shift": config.model.shift}
