"""Hugging Face causal LMs as the source of an adaptation (``ddlm train --init DIR``), on tiny random GPT-2, Llama
and Qwen3 networks built here and saved to temporary directories (no network).

References are computed apart from ddlm's code: the source network loaded afresh by ``transformers``, run on the
tokens moved one place right behind the start token, its next-token log-likelihood written out below.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers
from test_hf_backend import TEXT, encoder_model, word_tokenizer

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.errors import DDLMError
from ddlm.families import build_process, sampler_steps
from ddlm.model import Transformer
from ddlm.processes import LossOutput, Vocabulary
from ddlm.samplers import Canvas, SamplerOptions
from ddlm.training import load_config, prepare_training, saved_config
from ddlm.training.init import load_source
from ddlm.training.trainer import build_optimizer

ARCHITECTURES = ("gpt2", "llama", "qwen3")
POSITIONS = 64
QWEN_SPARE_ROWS = 6  # Qwen pads its embedding matrix past the tokenizer's ids
TRAIN = ["optim.max_steps=3", "optim.batch_size=4", "data.context_length=32", "log.eval_every=0", "log.sample_every=0"]


def tokenizer_of(kind: str) -> transformers.PreTrainedTokenizerFast:
    """Special tokens as each family has them: GPT-2 one end-of-text token for everything; Llama <s>, </s> and
    <unk>; Qwen no BOS, its end-of-text also the padding. None has a mask token."""
    if kind == "gpt2":
        return word_tokenizer(dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"),
                              chat=False)
    if kind == "llama":
        return word_tokenizer(dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"), chat=False)
    return word_tokenizer(dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>"), extra=("<|im_start|>", "<|im_end|>"),
                          chat=False)


def causal_lm(kind: str, directory: Path) -> Path:
    """A tiny random causal LM of family ``kind`` with its tokenizer, saved as ``save_pretrained`` writes it."""
    tokenizer = tokenizer_of(kind)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=POSITIONS)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=POSITIONS, n_embd=32, n_layer=2, n_head=2,
                                         **ids)
    elif kind == "llama":
        config = transformers.LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, **shape, **ids)
    else:
        config = transformers.Qwen3Config(vocab_size=len(tokenizer) + QWEN_SPARE_ROWS, head_dim=8,
                                          tie_word_embeddings=True, **shape, **ids)
    torch.manual_seed(0)
    network = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # peaked predictions, so that differences show
        network.get_input_embeddings().weight.mul_(20)
    network.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal")
    return {kind: causal_lm(kind, root / kind) for kind in ARCHITECTURES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def adapted(sources) -> dict[str, DiffusionPipeline]:
    """Each source as ``--init`` reads it, before any step of adaptation."""
    return {kind: load_source(str(path)) for kind, path in sources.items()}


def text_tokens(pipe: DiffusionPipeline, rows: int = 3, length: int = 16) -> torch.Tensor:
    ids = pipe.tokenizer.encode(TEXT)
    return torch.tensor([ids[row * 50 : row * 50 + length] for row in range(rows)])


def source_next_token_logits(directory: Path, x0: torch.Tensor, start_id: int) -> torch.Tensor:
    """The source network, loaded afresh, on ``[start] + x0[:-1]``: its logits over the source tokenizer's ids."""
    network = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    inputs = torch.cat((torch.full_like(x0[:, :1], start_id), x0[:, :-1]), dim=1)
    with torch.no_grad():
        logits = network(inputs).logits
    return logits[..., : len(transformers.AutoTokenizer.from_pretrained(directory))]


# ----- exactness before any step of adaptation -----

@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_under_the_causal_pattern_the_adapted_model_is_the_source(sources, adapted, kind):
    pipe = adapted[kind]
    x0 = text_tokens(pipe)
    reference = source_next_token_logits(sources[kind], x0, pipe.model.start_id)
    causal = torch.ones(x0.shape[1], x0.shape[1], dtype=torch.bool).tril()
    with torch.no_grad():
        logits = pipe.model(x0, attention=causal)
    torch.testing.assert_close(logits[..., : reference.shape[-1]], reference, rtol=1e-5, atol=1e-5)


def source_nll(directory: Path, pipe: DiffusionPipeline, x0: torch.Tensor) -> float:
    """The source's autoregressive NLL of ``x0`` (summed), over the source tokenizer's ids (less the padding id
    where it is one of them: no ddlm process predicts padding)."""
    logits = source_next_token_logits(directory, x0, pipe.model.start_id)
    if pipe.tokenizer.pad_id < logits.shape[-1]:
        logits[..., pipe.tokenizer.pad_id] = -torch.inf
    return float(-logits.log_softmax(dim=-1).gather(-1, x0[..., None]).sum())


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_block_size_one_gives_the_source_log_likelihood(sources, adapted, kind):
    """Block diffusion of block size 1 under the shift is the source's autoregressive NLL."""
    pipe = adapted[kind]
    x0 = text_tokens(pipe)
    nll = source_nll(sources[kind], pipe, x0)
    process = build_process({"name": "block", "block_size": 1, "estimator": "count"}, Vocabulary.of(pipe.tokenizer))
    with torch.no_grad():
        nelbo = process.loss(pipe.model.eval(), x0, torch.Generator().manual_seed(0)).nelbo_sum
    assert nelbo == pytest.approx(nll, rel=1e-5)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_the_ar_term_is_the_source_log_likelihood(sources, adapted, corpus, tmp_path, kind):
    """adapt.ar_loss_weight's term, before any step, is the source's next-token NLL per token, times the weight."""
    config = load_config(None, None, ["process.name=masked", "adapt.ar_loss_weight=0.5", *TRAIN])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, init=str(sources[kind]), show_progress=False)
    x0 = text_tokens(adapted[kind])
    trainer.model.eval()
    with torch.no_grad():
        output = trainer.with_ar_term(LossOutput(torch.tensor(0.0), 0.0, 1), x0)
    nll = source_nll(sources[kind], adapted[kind], x0)
    assert trainer.ar_sum == [pytest.approx(nll, rel=1e-5), x0.numel()]
    assert float(output.loss) == pytest.approx(0.5 * nll / x0.numel(), rel=1e-5)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_the_attention_pattern_replaces_the_causal_mask(adapted, kind):
    """Changing token 8 (read at position 9 under the shift) moves the logits before position 9 under full
    attention, and none of them under the causal pattern; block-causal (blocks of 4) moves only its own block."""
    model = adapted[kind].model
    x0 = text_tokens(adapted[kind], rows=2)
    changed = x0.clone()
    changed[:, 8] = (x0[:, 8] + 1) % 20 + 1
    length = x0.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    blocks = torch.arange(length) // 4
    block_causal = blocks[:, None] >= blocks[None, :]
    with torch.no_grad():
        full_moved = (model(changed) - model(x0))[:, :9].abs().amax(dim=(0, 2))
        causal_moved = (model(changed, attention=causal) - model(x0, attention=causal))[:, :9].abs().amax(dim=(0, 2))
        block_moved = (model(changed, attention=block_causal) - model(x0, attention=block_causal)).abs().amax(dim=(0, 2))
    assert bool((full_moved > 1e-4).all())
    assert float(causal_moved.max()) == 0.0
    assert float(block_moved[:8].max()) == 0.0 and bool((block_moved[8:12] > 1e-4).all())


# ----- the added tokens -----

@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_a_mask_token_is_added_with_the_mean_embedding(sources, adapted, kind):
    pipe = adapted[kind]
    known = len(transformers.AutoTokenizer.from_pretrained(sources[kind]))
    tokenizer = pipe.tokenizer
    assert tokenizer.mask_id == known and tokenizer.hf.mask_token == "<|mask|>"
    assert tokenizer.pad_id not in (tokenizer.eos_id, tokenizer.mask_id)
    added = 1 if kind == "llama" else 2  # Llama pads with its <unk>; GPT-2's and Qwen's padding is end-of-text
    assert tokenizer.vocab_size == known + added
    embeddings = pipe.model.network.get_input_embeddings().weight
    expected_rows = known + QWEN_SPARE_ROWS if kind == "qwen3" else known + added  # Qwen's spare rows take them
    assert embeddings.shape[0] == expected_rows
    mean = embeddings[:known].mean(dim=0)
    for token in range(known, known + added):
        torch.testing.assert_close(embeddings[token], mean)
    assert pipe.model.start_id == (tokenizer.hf.bos_token_id if kind != "qwen3" else tokenizer.eos_id)


# ----- training, export, loading -----

@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_train_from_the_cli_then_sample_eval_and_load(sources, corpus, tmp_path, capsys, kind):
    out = tmp_path / "run"
    code = main(["train", "--init", str(sources[kind]), "--out", str(out), "--data", str(corpus), "--no-progress",
                 "process.name=block", "process.block_size=4", *TRAIN])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    record = config["ddlm_adaptation"]
    assert record["process"]["name"] == "block" and record["process"]["block_size"] == 4
    assert record["source"] == str(sources[kind]) and record["context_length"] == 32
    pipe = DiffusionPipeline.from_pretrained(out, device="cpu")
    assert (pipe.process.name, pipe.process.block_size, pipe.context_length) == ("block", 4, 32)
    assert config["mask_token_id"] == pipe.tokenizer.mask_id and pipe.tokenizer.hf.mask_token == "<|mask|>"
    assert pipe.model.start_id == record["start_id"]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["run_config"]["init"]["source_process"] == "ar"
    output = pipe.sample("the cat", length=8, steps=4, seed=0)
    assert not bool((output.tokens == pipe.tokenizer.mask_id).any())
    capsys.readouterr()
    assert main(["sample", "--model", str(out), "--prompt", "the cat", "--length", "8", "--steps", "4",
                 "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["eval", "--model", str(out), "--data", str(corpus), "--metrics", "likelihood", "--max-sequences", "4",
                 "--draws", "2", "--no-progress", "--json", str(tmp_path / "eval.json")]) == 0
    [report] = json.loads((tmp_path / "eval.json").read_text())["models"].values()
    assert report["likelihood"]["tokens"] == 4 * 32 and report["likelihood"]["nats_per_token"] > 0


def test_the_exported_model_is_the_trained_one_and_serves(sources, corpus, tmp_path):
    config = load_config(None, None, ["process.name=masked", *TRAIN])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, init=str(sources["llama"]), show_progress=False)
    trainer.train()
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run", device="cpu", precision="fp32")
    x0 = text_tokens(pipe, length=32)
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(x0), trainer.load_ema_into_eval_model()(x0), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(pipe.model(x0), load_source(str(sources["llama"])).model(x0), atol=1e-3)
    assert pipe.process.name == "masked"
    from ddlm.app.service import Models

    card = Models.load([str(tmp_path / "run")], device="cpu").get(None).card()
    assert (card["layers"], card["d_model"], card["context_length"]) == (2, 32, 32)
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())  # the card's held-out figure
    assert card["held_out_nelbo"] == summary["final_valid_nelbo"] is not None
    assert card["training_summary"]["steps"] == summary["steps"] and card["training_summary"]["model_type"] == "llama"


@pytest.mark.parametrize("ar_term", [[], ["adapt.ar_loss_weight=0.5"]], ids=["diffusion", "with-ar-term"])
def test_an_adaptation_run_resumes_exactly(sources, corpus, tmp_path, ar_term):
    overrides = ["process.name=block", "process.block_size=4", "adapt.grow_steps=2", "log.save_every=0",
                 *TRAIN, "optim.max_steps=4", *ar_term]
    straight = prepare_training(load_config(None, None, overrides), tmp_path / "a", data=corpus,
                                init=str(sources["gpt2"]), show_progress=False)
    straight.train()
    paused = prepare_training(load_config(None, None, overrides), tmp_path / "b", data=corpus,
                              init=str(sources["gpt2"]), show_progress=False)
    paused.train(stop_after=2)
    resumed = prepare_training(saved_config(tmp_path / "b"), tmp_path / "b", resume=True, show_progress=False)
    resumed.train()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def reversed_decay_group(build):
    """An optimizer whose weight-decay group holds the same matrices in reverse order: torch's own check (group
    sizes) passes, yet each saved moment would meet a parameter of another shape."""
    def build_reversed(model, config):
        optimizer = build(model, config)
        optimizer.param_groups[0]["params"].reverse()
        return optimizer
    return build_reversed


@pytest.mark.parametrize("earlier", ["embeddings-decayed", "order-reversed"])
def test_a_checkpoint_with_other_optimizer_groups_is_refused_in_one_line(sources, corpus, tmp_path, monkeypatch, earlier):
    """A checkpoint of another grouping (before commit a3dc7a4 a network's embeddings took weight decay; or the same
    group sizes in another order) names the problem and the fix on resume, instead of torch's error or a silent mix-up."""
    with monkeypatch.context() as other:
        if earlier == "embeddings-decayed":
            other.setattr("ddlm.training.trainer.embedding_parameters", lambda model: set())
        else:
            other.setattr("ddlm.training.trainer.build_optimizer", reversed_decay_group(build_optimizer))
        prepare_training(load_config(None, None, ["process.name=masked", *TRAIN]), tmp_path / "run", data=corpus,
                         init=str(sources["gpt2"]), show_progress=False).train(stop_after=1)
    with pytest.raises(DDLMError, match="groups its optimizer's parameters otherwise .*start the run again, or resume "
                                        "it with the ddlm that wrote it") as error:
        prepare_training(saved_config(tmp_path / "run"), tmp_path / "run", resume=True, show_progress=False)
    assert "\n" not in str(error.value)
    assert ("has shape" in str(error.value)) == (earlier == "order-reversed")


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_cached_and_uncached_block_sampling_agree(adapted, temperature):
    pipe = adapted["qwen3"]
    process = build_process({"name": "block", "block_size": 4}, Vocabulary.of(pipe.tokenizer))
    canvas = Canvas.from_rows([[5, 6, 7, *[None] * 13], [8, *[None] * 15]], pipe.tokenizer.mask_id,
                              pipe.tokenizer.pad_id)
    tokens = [list(sampler_steps(pipe.model, process, canvas, SamplerOptions(
        seed=0, steps=16, temperature=temperature, use_cache=use_cache)))[-1].tokens for use_cache in (True, False)]
    assert torch.equal(tokens[0], tokens[1])


# ----- weight decay and dropout of the trained network -----

def decay_groups(model: torch.nn.Module, config) -> tuple[list[str], list[str]]:
    """The names of the parameters build_optimizer decays and of those it does not, in its order."""
    names = {id(p): name for name, p in model.named_parameters()}
    decayed, other = build_optimizer(model, config).param_groups
    assert (decayed["weight_decay"], other["weight_decay"]) == (config.optim.weight_decay, 0.0)
    return [names[id(p)] for p in decayed["params"]], [names[id(p)] for p in other["params"]]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_no_weight_decay_on_embeddings_norms_and_biases_of_a_network(adapted, kind):
    """Every matrix of the attention and MLP layers decays; the input, position and output embeddings, the norms
    and the biases (transformers' own names for them) do not."""
    model = adapted[kind].model
    decayed, undecayed = decay_groups(model, load_config(None, None, []))
    kept = ("wte", "wpe", "embed_tokens", "lm_head", "ln_", "norm", ".bias")
    assert set(undecayed) == {name for name, _ in model.named_parameters() if any(part in name for part in kept)}
    assert set(decayed) == {name for name, _ in model.named_parameters()} - set(undecayed)
    assert any(".mlp." in name for name in decayed) and any(".attn" in name or ".self_attn." in name for name in decayed)


def test_the_weight_decay_groups_of_a_ddlm_backbone_are_unchanged():
    """ddlm's backbone keeps its groups and their order (an optimizer checkpoint indexes them): matrices decay,
    except the embedding, named ``embed``, as the rule by name had it."""
    config = load_config("tiny", None, ["model.time_conditioning=true"])
    model = Transformer(replace(config.model, vocab_size=40, context_length=16))
    by_name = [name for name, p in model.named_parameters() if p.ndim >= 2 and not name.startswith("embed")]
    rest = [name for name, _ in model.named_parameters() if name not in by_name]
    assert decay_groups(model, config) == (by_name, rest)


def test_the_network_keeps_its_own_dropout(sources, corpus, tmp_path):
    """GPT-2's dropout rates (config.json) stay those of the trained network; model.dropout is refused."""
    config = load_config(None, None, ["process.name=masked", *TRAIN])
    trainer = prepare_training(config, tmp_path / "run", data=corpus, init=str(sources["gpt2"]), show_progress=False)
    source = transformers.AutoConfig.from_pretrained(sources["gpt2"])
    rates = {module.p for module in trainer.model.modules() if isinstance(module, torch.nn.Dropout)}
    assert rates == {source.resid_pdrop, source.embd_pdrop, source.attn_pdrop} and source.resid_pdrop > 0
    with pytest.raises(DDLMError, match="drop model.dropout, or change those rates in the source's config.json"):
        prepare_training(load_config(None, None, ["process.name=masked", "model.dropout=0.2", *TRAIN]), tmp_path / "x",
                         data=corpus, init=str(sources["gpt2"]), show_progress=False)


# ----- what is refused -----

@pytest.mark.parametrize("process", ["ar", "sedd-absorb"])
def test_an_autoregressive_or_sedd_run_from_a_causal_lm_is_refused(sources, corpus, tmp_path, process):
    config = load_config(None, None, [f"process.name={process}", *TRAIN])
    with pytest.raises(DDLMError, match="process.name=masked or process.name=block"):
        prepare_training(config, tmp_path / "x", data=corpus, init=str(sources["gpt2"]), show_progress=False)


def test_a_context_past_the_source_is_refused(sources, corpus, tmp_path):
    config = load_config(None, None, ["process.name=masked", *TRAIN, f"data.context_length={2 * POSITIONS}"])
    with pytest.raises(DDLMError, match=f"data.context_length={POSITIONS} or less"):
        prepare_training(config, tmp_path / "x", data=corpus, init=str(sources["gpt2"]), show_progress=False)


def test_a_causal_lm_not_yet_adapted_is_not_sampled_nor_fine_tuned(sources):
    with pytest.raises(DDLMError, match="adapt it to diffusion first: ddlm train --init"):
        DiffusionPipeline.from_pretrained(sources["gpt2"], device="cpu")
    with pytest.raises(DDLMError, match="adapt it to diffusion before fine-tuning"):
        load_source(str(sources["gpt2"]), hugging_face=True)


def test_a_masked_lm_cannot_start_a_run(tmp_path, corpus):
    directory = encoder_model("bert", tmp_path / "bert")
    config = load_config(None, None, ["process.name=masked", *TRAIN])
    with pytest.raises(DDLMError, match="a run starts from a ddlm model or a Hugging Face causal LM"):
        prepare_training(config, tmp_path / "x", data=corpus, init=str(directory), show_progress=False)
