"""Fine-tuning: each process's SFT loss against its formula written out by hand, the prompt/response data,
and ``ddlm finetune`` end to end on tiny ddlm and Hugging Face models (full and LoRA, exact resume)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.data.sft import ChatFormat, SFTLoader, SFTRow, collate, load_rows, read_examples
from ddlm.errors import DDLMError
from ddlm.model import ModelConfig, Transformer
from ddlm.processes import Autoregressive, BlockDiffusion, MaskedDiffusion, Vocabulary, build_schedule
from ddlm.processes.sedd import ScoreEntropyDiffusion
from ddlm.tokenizers import CharTokenizer
from ddlm.training.finetune import FineTuneSettings, finetune, prepare_finetune
from tests.helpers import IIDOracle
from tests.test_hf_backend import WORDS, encoder_model, llada_model

MASK, EOS, PAD = 8, 9, 10  # real tokens 0..7 (EOS is real too: the model writes it)
VOCAB = Vocabulary(11, MASK, EOS, PAD)
SHAPES = [(3, 4), (0, 6), (5, 2)]  # (prompt, response) lengths; rows are padded with EOS to 12


# ----- the losses against their formulas -----


class Recorder(nn.Module):
    """The model, keeping each call's inputs and logits."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.calls: list[SimpleNamespace] = []

    def forward(self, tokens, noise=None, **keywords):
        logits = self.module(tokens, noise, **keywords)
        self.calls.append(SimpleNamespace(tokens=tokens, noise=noise, logits=logits))
        return logits


def recorded_times(process) -> list[torch.Tensor]:
    """Every batch of times the process draws, kept as it draws them."""
    times, draw = [], process.sample_times

    def keep(*arguments, **keywords):
        times.append(draw(*arguments, **keywords))
        return times[-1]

    process.sample_times = keep
    return times


def sft_batch(shapes=SHAPES, length: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of random prompt and response tokens padded with EOS, and the mask of response + padding."""
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.full((len(shapes), length), EOS)
    response = torch.zeros((len(shapes), length), dtype=torch.bool)
    for row, (prompt, answer) in enumerate(shapes):
        x0[row, : prompt + answer] = torch.randint(0, 8, (prompt + answer,), generator=generator)
        response[row, prompt:] = True
    return x0, response


def tiny(**settings) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=11, context_length=24, d_model=16, n_layers=1, n_heads=2, **settings)).eval()


def log_probs(logits: torch.Tensor, never: list[int]) -> torch.Tensor:
    """log softmax in float64 with the ids ``never`` at probability 0."""
    logits = logits.double().clone()
    logits[..., never] = -math.inf
    return logits - logits.logsumexp(-1, keepdim=True)


def check_per_response(output, nelbo_rows: list[float], response: torch.Tensor) -> None:
    """loss = mean over rows of NELBO_row / |r0_row|; the sum and the count are over the batch's response."""
    lengths = response.sum(dim=1).tolist()
    assert output.loss.item() == pytest.approx(sum(n / r for n, r in zip(nelbo_rows, lengths)) / len(lengths), rel=1e-5)
    assert output.nelbo_sum == pytest.approx(sum(nelbo_rows), rel=1e-5)
    assert output.num_tokens == sum(lengths)


@pytest.mark.parametrize("estimator", ["time", "count"])
def test_masked_sft_loss_is_llada_formula(estimator):
    """-(1/|r0|) sum over masked response positions of (1/t) log p(x0_i | x_t) (time: LLaDA's; count: k masked
    of n, weight n/k, so 1/k), averaged over the rows; the prompt is never masked."""
    process = MaskedDiffusion(build_schedule("linear"), mask_id=MASK, pad_id=PAD, estimator=estimator)
    model = Recorder(tiny(time_conditioning=estimator == "time"))
    times = recorded_times(process)
    x0, response = sft_batch()
    output = process.sft_loss(model, x0, response, torch.Generator().manual_seed(1))
    call = model.calls[0]
    masked = call.tokens == MASK
    assert masked.any() and not (masked & ~response).any(), "a prompt position was masked"
    assert torch.equal(call.tokens[~masked], x0[~masked])
    logp = log_probs(call.logits, [MASK, PAD])
    rows = []
    for row in range(len(x0)):
        nll = sum(-logp[row, i, x0[row, i]].item() for i in range(x0.shape[1]) if masked[row, i])
        if estimator == "time":
            t = times[0][row].item()
            assert call.noise[row].item() == pytest.approx(t)  # the model sees the mask rate, t
            rows.append(nll / t)
        else:
            rows.append(nll * response[row].sum().item() / masked[row].sum().item())
    check_per_response(output, rows, response)


def test_masked_sft_masks_the_response_at_rate_t_and_never_the_prompt():
    process = MaskedDiffusion(build_schedule("linear"), mask_id=MASK, pad_id=PAD, antithetic=False)
    model = Recorder(IIDOracle(torch.full((8,), 1 / 8)))
    times = recorded_times(process)
    x0, response = sft_batch([(4, 8)] * 4000, length=16)
    process.sft_loss(model, x0, response, torch.Generator().manual_seed(2))
    masked = model.calls[0].tokens == MASK
    assert not masked[:, :4].any()
    t = times[0].float()
    expected, spread = (12 * t).sum().item(), (12 * t * (1 - t)).sum().sqrt().item()
    assert abs(masked.sum().item() - expected) < 4 * spread


@pytest.mark.parametrize("shift", [False, True])
def test_block_sft_loss_treats_the_prompt_as_clean_earlier_blocks(shift):
    """Each block b: its masked response positions scored given the clean blocks before it and its own noisy
    tokens, weighted 1/t_b (computed block by block here, in one pass by the process); a shifted model
    reads the clean token before each block's first position."""
    size = 4
    process = BlockDiffusion(build_schedule("linear"), mask_id=MASK, pad_id=PAD, block_size=size, eos_id=EOS)
    network = tiny(shift=shift, start_id=EOS if shift else None)
    model = Recorder(network)
    times = recorded_times(process)
    x0, response = sft_batch()
    output = process.sft_loss(model, x0, response, torch.Generator().manual_seed(3))
    length = x0.shape[1]
    xt = model.calls[0].tokens[:, :length]
    masked = xt == MASK
    assert masked.any() and not (masked & ~response).any(), "a prompt position was masked"
    block_times = times[0].view(len(x0), -1)
    rows = []
    for row in range(len(x0)):
        nelbo = 0.0
        for block in range(length // size):
            start, end = block * size, (block + 1) * size
            context = torch.cat((x0[row, :start], xt[row, start:end]))[None]
            positions = torch.arange(end)
            attention = positions[:, None] // size >= positions[None, :] // size
            with torch.no_grad():
                logp = log_probs(network(context, attention=attention)[0, start:], [MASK, PAD])
            nll = sum(-logp[i - start, x0[row, i]].item() for i in range(start, end) if masked[row, i])
            nelbo += nll / block_times[row, block].item()
        rows.append(nelbo)
    check_per_response(output, rows, response)


def test_autoregressive_sft_loss_scores_only_the_response():
    """-(1/|r0|) sum over response positions of log p(x0_i | x0_<i), each prefix run on its own."""
    process = Autoregressive(mask_id=MASK, eos_id=EOS, pad_id=PAD)
    model = tiny(causal=True)
    x0, response = sft_batch()
    output = process.sft_loss(model, x0, response)
    rows = []
    for row in range(len(x0)):
        nll = 0.0
        for i in range(x0.shape[1]):
            if response[row, i]:
                prefix = torch.cat((torch.tensor([EOS]), x0[row, :i]))[None]
                with torch.no_grad():
                    nll -= log_probs(model(prefix)[0, -1], [MASK, PAD])[x0[row, i]].item()
        rows.append(nll)
    check_per_response(output, rows, response)


@pytest.mark.parametrize("name", ["sedd-absorb", "sedd-uniform"])
def test_sedd_sft_loss_is_the_response_score_entropy(name):
    """(1 - eps) sigma(t) sum over response positions of sum_y Q(y -> x_t)[s_y - r_y log s_y + K(r_y)]
    plus |r0| times the prior KL, per row over |r0|; the prompt never moves and carries nothing."""
    process = ScoreEntropyDiffusion.from_config({"name": name}, VOCAB)
    model = Recorder(tiny(time_conditioning=True))
    times = recorded_times(process)
    x0, response = sft_batch()
    output = process.sft_loss(model, x0, response, torch.Generator().manual_seed(4))
    call = model.calls[0]
    xt, t = call.tokens, times[0]
    assert torch.equal(xt[~response], x0[~response])
    assert (xt != x0).any()
    n = 9  # real tokens: 0..7 and EOS
    schedule = process.schedule
    absorbing = name == "sedd-absorb"
    end = schedule.total(torch.tensor(1.0, dtype=torch.float64)).item()
    if absorbing:
        prior = math.exp(-end) * math.log(n)
    else:
        a, b = math.exp(-end) + -math.expm1(-end) / n, -math.expm1(-end) / n
        prior = a * math.log(a * n) + (n - 1) * b * math.log(b * n)
    rows = []
    for row in range(len(x0)):
        sb, rate = schedule.total(t[row]).item(), schedule.rate(t[row]).item()
        entropy = 0.0
        for i in range(x0.shape[1]):
            current, clean = xt[row, i].item(), x0[row, i].item()
            if not response[row, i] or (absorbing and current != MASK):
                continue
            logits = call.logits[row, i].double()
            for y in range(n + 1):
                if y in (MASK, PAD) or y == current:
                    continue
                if absorbing:
                    log_s = logits[y].item() - math.log(math.expm1(sb)) - math.log(n)
                    r, q = (1 / math.expm1(sb) if y == clean else 0.0), 1.0
                else:
                    log_s = logits[y].item()
                    p = [math.exp(-sb) * (a == clean) + -math.expm1(-sb) / n for a in (y, current)]
                    r, q = p[0] / p[1], 1 / n
                entropy += q * (math.exp(log_s) - r * log_s + (r * (math.log(r) - 1) if r else 0.0))
        rows.append((1 - process.eps) * rate * entropy + response[row].sum().item() * prior)
    lengths = response.sum(dim=1).tolist()
    assert output.loss.item() == pytest.approx(sum(v / r for v, r in zip(rows, lengths)) / len(rows), rel=1e-4)
    assert output.nelbo_sum == pytest.approx(sum(rows), rel=1e-4)


# ----- the data -----

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ:?!.,\n"))


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("bad", ['{"prompt": "a"}', '{"prompt": 1, "response": "b"}', "not json",
                                 '{"messages": [{"role": "user", "content": "hi"}]}', '["a", "b"]'])
def test_a_row_without_prompt_and_response_names_its_line(tmp_path, bad):
    path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, "", bad])
    with pytest.raises(DDLMError, match=r"bad\.jsonl line 3 .*fix or remove the line"):
        read_examples(path)


def test_chat_turns_in_the_plain_template_and_rows_padded_with_end_of_text(tmp_path):
    chat = ChatFormat(user="ROMEO", assistant="JULIET")
    turns = [{"role": "ROMEO", "content": "Hi"}, {"role": "NURSE", "content": "Ho"}, {"role": "JULIET", "content": "Go"}]
    assert chat.prompt_text(turns) == "ROMEO:\nHi\n\nNURSE:\nHo\n\nJULIET:\n"
    assert chat.response_text(turns[-1]) == "Go\n\n"
    assert chat.chat_prompt("Hi") == "ROMEO:\nHi\n\nJULIET:\n"
    with pytest.raises(DDLMError, match="must hold"):
        ChatFormat("{content} then {role}")
    tokenizer = CharTokenizer(CHARS)
    path = write_lines(tmp_path / "pairs.jsonl", [{"messages": turns}, {"prompt": "ab", "response": "c"}])
    data = load_rows(path, tokenizer, chat, tokenizer.eos_id, max_length=64)
    assert data.chat and data.truncated == 0
    first, second = data.rows
    assert tokenizer.decode(first.prompt) == chat.prompt_text(turns)
    assert first.response == [*tokenizer.encode("Go\n\n"), tokenizer.eos_id]
    batch = collate(data.rows, tokenizer.eos_id, multiple=8)
    assert batch.tokens.shape == (2, 40)  # the longest row (30 + 5), rounded up to 8
    assert batch.tokens[1].tolist() == [*tokenizer.encode("abc")] + [tokenizer.eos_id] * 37
    assert batch.response[1].tolist() == [False, False] + [True] * 38  # the padding is response too
    cut = SFTRow([1, 2, 3, 4], [5, 6, EOS]).fitted(4)
    assert cut == SFTRow([4], [5, 6, EOS]) and SFTRow([1], [5, 6, 7, EOS]).fitted(3) == SFTRow([], [5, 6, 7])


def test_loader_resumes_exactly_splits_ranks_and_scores_every_row_once():
    rows = [SFTRow([1] * (i % 3), [2] * (1 + i % 5)) for i in range(11)]
    loader = SFTLoader(rows, 4, EOS, seed=3)
    batches = [next(loader) for _ in range(4)]  # spans epochs (11 rows)
    again = SFTLoader(rows, 4, EOS, seed=3)
    next(again)
    resumed = SFTLoader(rows, 4, EOS, seed=3)
    resumed.load_state_dict(again.state_dict())
    for batch in batches[1:]:
        assert torch.equal(next(resumed).tokens, batch.tokens)
    ranks = [SFTLoader(rows, 2, EOS, seed=3, rank=rank, world_size=2) for rank in range(2)]
    for batch in batches:  # two ranks' rows are one process's batch, padding included
        halves = [next(rank) for rank in ranks]
        for part in ("tokens", "response", "lengths"):
            assert torch.equal(torch.cat([getattr(half, part) for half in halves]), getattr(batch, part)), part
    seen = list(loader.iter_eval_batches(3))  # each row once, in a batch of its own length: no padding
    assert sorted(batch.tokens.shape[1] for batch in seen for _ in batch.tokens) == sorted(map(len, rows))
    assert all(len(batch.tokens) <= 3 for batch in seen)


def test_a_periodic_estimate_scores_rows_spread_over_the_file_not_its_shortest():
    """The periodic validation of ddlm finetune caps the rows; capped, they must be like the whole set."""
    rows = [SFTRow([1], [2] * length) for length in range(1, 41)]  # lengths 2..41
    loader = SFTLoader(rows, 4, EOS)
    subset = [int(length) for batch in loader.iter_eval_batches(64, max_rows=8) for length in batch.lengths]
    assert len(subset) == 8 and min(subset) < 10 and max(subset) > 35  # evenly spread, not the 8 shortest
    assert abs(sum(subset) / 8 - 21.5) < 3  # the whole set's mean length
    assert sorted(int(n) for batch in loader.iter_eval_batches(64, max_rows=99) for n in batch.lengths) == \
        list(range(2, 42))  # a cap above the rows: every row


# ----- ddlm finetune end to end -----


@pytest.fixture(scope="module")
def ddlm_models(tmp_path_factory) -> Path:
    """A tiny masked model and a tiny autoregressive one over CHARS, and a file of examples for them."""
    from ddlm.families import build_process

    root = tmp_path_factory.mktemp("ddlm")
    tokenizer = CharTokenizer(CHARS)
    for name, process, causal in (("masked", "masked", False), ("ar", "ar", True)):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=48, d_model=32, n_layers=2,
                                        n_heads=2, causal=causal, dropout=0.1))
        DiffusionPipeline(model, tokenizer, build_process({"name": process}, Vocabulary.of(tokenizer)),
                          precision="fp32").save_pretrained(root / name)
    rows = []
    for i in range(24):
        rows.append({"prompt": f"say {'abc'[i % 3]}:", "response": "yes " * (1 + i % 3)})
        rows.append({"messages": [{"role": "ROMEO", "content": "hello"}, {"role": "JULIET", "content": "good night"}]})
    write_lines(root / "pairs.jsonl", rows)
    return root


def finetune_args(models: Path, out: Path, *extra: str, model: str = "masked") -> list[str]:
    """`ddlm finetune` of ``ddlm_models``' ``model`` for three steps (``extra`` after the settings)."""
    return ["finetune", "--model", str(models / model), "--data", str(models / "pairs.jsonl"), "--out", str(out),
            "--no-progress", "--max-steps", "3", "optim.batch_size=4", "optim.lr=1e-2", "optim.warmup_steps=0", *extra]


@pytest.mark.parametrize("lora", [[], ["--lora-rank", "4"]], ids=["full", "lora"])
def test_finetune_cli_exports_a_model_directory_that_samples_in_its_chat_format(ddlm_models, tmp_path, lora):
    out = tmp_path / "ft"
    assert main(finetune_args(ddlm_models, out, "--chat-roles", "ROMEO,JULIET", *lora)) == 0
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    pipe = DiffusionPipeline.from_pretrained(out, device="cpu")
    assert not any("lora" in name for name in pipe.model.state_dict())
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_valid_nelbo"] > 0
    base = load_file(str(ddlm_models / "masked" / "model.safetensors"))
    tuned = load_file(str(out / "model.safetensors"))
    changed = [name for name in base if not torch.equal(base[name], tuned[name])]
    if lora:  # only the adapted projections changed (merged in)
        assert changed and all(name.split(".")[-2] in ("qkv", "out", "gate_up", "down") for name in changed)
        assert summary["trainable_parameters"] < 0.2 * summary["parameters"]
    else:
        assert "embed.weight" in changed
    text = pipe.generate("hello", chat=True, length=6, steps=6, seed=0)[0]
    assert text.startswith("ROMEO:\nhello\n\nJULIET:\n")


@pytest.mark.parametrize("lora", [[], ["--lora-rank", "4", "--lora-save", "adapter"]], ids=["full", "adapter"])
def test_a_fine_tuned_model_keeps_the_sampler_defaults_of_its_source(ddlm_models, tmp_path, lora):
    source = tmp_path / "source"
    shutil.copytree(ddlm_models / "masked", source)
    defaults = {"policy": "confidence", "temperature": 0.7}
    (source / "sampler_config.json").write_text(json.dumps(defaults))
    assert main(finetune_args(ddlm_models, tmp_path / "ft", *lora, model=str(source))) == 0  # (an absolute path)
    assert DiffusionPipeline.from_pretrained(tmp_path / "ft").sampler_defaults == defaults


def test_lora_adapter_alone_loads_as_the_merged_model(ddlm_models, tmp_path):
    merged_out, adapter_out = tmp_path / "merged", tmp_path / "adapter"
    assert main(finetune_args(ddlm_models, merged_out, "--lora-rank", "4")) == 0
    assert main(finetune_args(ddlm_models, adapter_out, "--lora-rank", "4", "--lora-save", "adapter")) == 0
    config = json.loads((adapter_out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((ddlm_models / "masked").resolve()) and config["r"] == 4
    assert not (adapter_out / "model.safetensors").exists()
    tokens = torch.randint(0, len(CHARS), (2, 20))
    with torch.no_grad():
        logits = [DiffusionPipeline.from_pretrained(out, device="cpu").model(tokens, torch.full((2,), 0.5))
                  for out in (merged_out, adapter_out)]
    torch.testing.assert_close(logits[0], logits[1])


@pytest.mark.parametrize("lora", [[], ["--lora-rank", "4"]], ids=["full", "lora"])
def test_finetune_resumes_exactly(ddlm_models, tmp_path, lora):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(finetune_args(ddlm_models, straight, *lora)) == 0
    assert main(finetune_args(ddlm_models, split, "--stop-after", "1", *lora)) == 0
    assert main(["finetune", "--out", str(split), "--resume", "--no-progress"]) == 0
    assert (straight / "model.safetensors").read_bytes() == (split / "model.safetensors").read_bytes()


def test_autoregressive_finetune_with_gradient_checkpointing_matches_without(ddlm_models, tmp_path):
    outputs = []
    for checkpointing in (False, True):
        out = tmp_path / f"ckpt-{checkpointing}"
        finetune(str(ddlm_models / "ar"), ddlm_models / "pairs.jsonl", out, show_progress=False, device="cpu",
                 overrides=["optim.max_steps=2", "optim.batch_size=4", "optim.lr=1e-2"],
                 settings=FineTuneSettings(gradient_checkpointing=checkpointing))
        outputs.append(load_file(str(out / "model.safetensors")))
    for name, tensor in outputs[0].items():
        torch.testing.assert_close(outputs[1][name], tensor)


def test_finetune_refuses_a_changed_backbone_and_lora_flags_without_rank(ddlm_models, tmp_path):
    with pytest.raises(DDLMError, match="drop process.name=ar"):
        prepare_finetune(str(ddlm_models / "masked"), ddlm_models / "pairs.jsonl", tmp_path / "a",
                         overrides=["process.name=ar"])
    with pytest.raises(DDLMError, match="--lora-rank"):
        FineTuneSettings(lora_save="adapter")
    with pytest.raises(DDLMError, match="--lora-targets nope: no linear layer .*choose among .*qkv"):
        prepare_finetune(str(ddlm_models / "masked"), ddlm_models / "pairs.jsonl", tmp_path / "b",
                         settings=FineTuneSettings(lora_rank=2, lora_targets=["nope"]))


# ----- Hugging Face diffusion LMs -----

ROLE_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def hf_model(kind: str, directory: Path) -> Path:
    """A tiny random Hugging Face diffusion LM (bert, llada or dream) whose chat template writes each turn under
    its role, as real ones do."""
    directory = encoder_model("bert", directory) if kind == "bert" else llada_model(directory, shifted=kind == "dream")[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = ROLE_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def write_hf_pairs(path: Path) -> Path:
    """Prompt/response rows and chat turns over the tiny models' words."""
    rows = []
    for i in range(16):
        words = [WORDS[(3 * i + j) % len(WORDS)] for j in range(4)]
        rows.append({"prompt": " ".join(words[:2]), "response": " ".join(words[2:])})
        rows.append({"messages": [{"role": "user", "content": " ".join(words[:3])},
                                  {"role": "assistant", "content": words[3]}]})
    return write_lines(path, rows)


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    write_hf_pairs(root / "pairs.jsonl")
    return {kind: hf_model(kind, root / kind) for kind in ("bert", "llada", "dream")}


@pytest.mark.parametrize("kind", ["bert", "llada", "dream"])
@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_hugging_face_models_fine_tune_and_load(hf_models, tmp_path, kind, lora):
    out = tmp_path / kind
    remote = kind != "bert"
    summary = finetune(str(hf_models[kind]), hf_models[kind].parent / "pairs.jsonl", out, device="cpu",
                       show_progress=False, trust_remote_code=remote, settings=FineTuneSettings(lora_rank=lora),
                       overrides=["optim.max_steps=2", "optim.batch_size=4", "optim.lr=1e-2", "optim.warmup_steps=0"])
    assert summary["steps"] == 2 and math.isfinite(summary["final_valid_nelbo"])
    pipe = DiffusionPipeline.from_pretrained(out, device="cpu", trust_remote_code=remote)
    assert not any("lora" in name for name in pipe.model.state_dict())
    before = DiffusionPipeline.from_pretrained(hf_models[kind], device="cpu", trust_remote_code=remote)
    changed = [name for name, tensor in before.model.state_dict().items()
               if not torch.equal(tensor, pipe.model.state_dict()[name])]
    assert changed
    output = pipe.sample("the cat", chat=True, length=4, steps=4, seed=0)
    assert not (output.tokens == pipe.tokenizer.mask_id).any()


def test_a_hugging_face_network_keeps_its_own_dropout(hf_models, tmp_path, capsys):
    """model.dropout is refused in one line for a Hugging Face network, as by `ddlm train --init`; the network's own
    rates (its config.json's) are the ones trained with."""
    model, pairs = hf_models["bert"], hf_models["bert"].parent / "pairs.jsonl"
    assert main(["finetune", "--model", str(model), "--data", str(pairs), "--out", str(tmp_path / "a"), "--no-progress",
                 "model.dropout=0.1"]) == 2
    err = capsys.readouterr().err  # (after the progress of loading the weights)
    error = err[err.index("error: "):].strip().splitlines()
    assert len(error) == 1 and error[0].endswith("drop model.dropout, or change those rates in the source's config.json")
    trainer = prepare_finetune(str(model), pairs, tmp_path / "b", device="cpu", show_progress=False)
    source = transformers.AutoConfig.from_pretrained(model)
    rates = {module.p for module in trainer.model.modules() if isinstance(module, nn.Dropout)}
    assert rates == {source.hidden_dropout_prob, source.attention_probs_dropout_prob}


def test_finetune_counts_the_tokens_of_its_examples_not_their_padding(ddlm_models, tmp_path):
    trainer = prepare_finetune(str(ddlm_models / "masked"), ddlm_models / "pairs.jsonl", tmp_path / "ft",
                               overrides=["optim.max_steps=3", "optim.batch_size=4", "optim.grad_accum=2"],
                               device="cpu", show_progress=False)
    stream = copy.deepcopy(trainer.train_loader)  # the rows the run will draw, in its order
    expected = sum(len(stream.rows[index]) for index in stream.take(3 * 2 * 4))
    summary = trainer.train()
    assert summary["tokens"] == expected
    assert expected < 3 * 2 * 4 * max(len(row) for row in stream.rows)  # the examples differ in length
