"""Hugging Face masked-diffusion models in ddlm's samplers, on tiny random models built here (no network).

Four families: BERT, RoBERTa and ModernBERT (``AutoModelForMaskedLM``), and a directory with
its own model code that follows LLaDA's interface (``AutoModel`` + ``trust_remote_code``,
``model(input_ids).logits``, the mask id in config.json), whose network is ddlm's own
Transformer, so the two backends can be compared token for token.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from helpers import run_steps
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ddlm import DiffusionPipeline
from ddlm.cli import main
from ddlm.errors import DDLMError
from ddlm.eval.likelihood import evaluate_likelihood
from ddlm.model import ModelConfig, Transformer
from ddlm.samplers import Canvas
from ddlm.samplers.policies import POLICIES

WORDS = ("the cat sat on a mat dog ran far and away to big small red house tree sun moon it was "
         "night day good bad old new").split()
TEXT = " ".join(WORDS[(7 * i + i // 3) % len(WORDS)] for i in range(600))
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
CONTEXT = 40  # position embeddings of the tiny models

ENCODER_SPECIALS = {
    "bert": dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"),
    "roberta": dict(bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>",
                    cls_token="<s>", sep_token="</s>"),
    "modernbert": dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"),
}
MODELING_CODE = '''
import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ddlm.model import KVCache, ModelConfig, Transformer
from ddlm.model.transformer import rotary_tables


class TinyConfig(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=32, d_model=32, n_layers=2, n_heads=2, max_sequence_length=40,
                 mask_token_id=None, kv_cache=False, **kwargs):
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        self.max_sequence_length, self.mask_token_id, self.kv_cache = max_sequence_length, mask_token_id, kv_cache
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    """LLaDA's interface: model(input_ids, attention_mask=None).logits; no noise level. past_key_values as
    (key, value) tuples per layer when config.kv_cache (as Fast-dLLM's LLaDA code), else refused (as LLaDA's own)."""

    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.net = Transformer(ModelConfig(vocab_size=config.vocab_size, context_length=config.max_sequence_length,
                                           d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads))
        self.post_init()

    def _init_weights(self, module):  # weights come from the file; the rotary tables are not stored there
        if isinstance(module, Transformer):
            cos, sin = rotary_tables(module.config.head_dim, module.config.context_length, module.config.rope_theta)
            module.rope_cos.copy_(cos)
            module.rope_sin.copy_(sin)

    def get_input_embeddings(self):
        return self.net.embed

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        assert not use_cache or self.config.kv_cache, "The kvcache is not supported for MDM."
        key_mask = None if attention_mask is None else attention_mask.bool()
        cache = KVCache(input_ids.shape[0], self.config.n_layers, self.config.max_sequence_length) if use_cache else None
        for layer, (keys, values) in enumerate(past_key_values or ()):
            cache.store(layer, keys, values)
        if past_key_values:
            cache.length = past_key_values[0][0].shape[2]
        logits = self.net(input_ids, key_mask=key_mask, cache=cache)
        if {shifted}:  # Dream's convention: position i scores token i + 1
            logits = torch.cat((logits[:, 1:], logits[:, -1:]), dim=1)
        past = None if cache is None else tuple(
            (cache.keys[layer][:, :, : cache.length], cache.values[layer][:, :, : cache.length])
            for layer in range(self.config.n_layers))
        return CausalLMOutputWithPast(logits=logits, past_key_values=past)
'''


def word_tokenizer(specials: dict[str, str], extra: tuple[str, ...] = (), start: str | None = None,
                   chat: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS; special tokens first (ids 0..), unlike ddlm's own tokenizers."""
    names = list(dict.fromkeys([*specials.values(), *extra]))
    vocab = {token: index for index, token in enumerate([*names, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=specials.get("unk_token", names[0])))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece()
    if start is not None:
        backend.post_processor = processors.TemplateProcessing(single=f"{start} $A", special_tokens=[(start, vocab[start])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in extra if t not in specials.values()]})
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def encoder_model(kind: str, directory: Path) -> Path:
    tokenizer = word_tokenizer(ENCODER_SPECIALS[kind], extra=("<|user|>", "<|assistant|>"),
                               start="<s>" if kind == "roberta" else "[CLS]")
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, pad_token_id=tokenizer.pad_token_id)
    if kind == "bert":
        config = transformers.BertConfig(max_position_embeddings=CONTEXT, **shape)
    elif kind == "roberta":
        config = transformers.RobertaConfig(max_position_embeddings=CONTEXT + tokenizer.pad_token_id + 1,
                                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                            **shape)
    else:
        config = transformers.ModernBertConfig(
            max_position_embeddings=CONTEXT, global_attn_every_n_layers=2, local_attention=16,
            cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id, **shape)
    torch.manual_seed(0)
    transformers.AutoModelForMaskedLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def llada_model(directory: Path, shifted: bool = False, kv_cache: bool = False) -> tuple[Path, Transformer]:
    """A LLaDA-interface directory with its own code, and the same network as a native ddlm Transformer.

    Special tokens as in LLaDA-Instruct: no mask token in the tokenizer (config.json names it; the
    shifted Dream-style model leaves even that out), end of turn ``<|eot_id|>``, and
    ``<|endoftext|>``, which fills the tail of an answer, named as padding and as the config's eos.
    """
    specials = dict(bos_token="<|startoftext|>", eos_token="<|eot_id|>", pad_token="<|endoftext|>", unk_token="<|unk|>")
    tokenizer = word_tokenizer(specials, extra=("<|mdm_mask|>", "<|user|>", "<|assistant|>"))
    mask_id = tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    model_type = "Dream" if shifted else "tiny-llada"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "modeling_tiny.py").write_text(MODELING_CODE.format(model_type=model_type, shifted=shifted))
    sys.path.insert(0, str(directory))
    try:
        import modeling_tiny
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("modeling_tiny", None)
    config = modeling_tiny.TinyConfig(vocab_size=len(tokenizer), mask_token_id=None if shifted else mask_id,
                                      max_sequence_length=CONTEXT, eos_token_id=tokenizer.pad_token_id,
                                      kv_cache=kv_cache)
    config.auto_map = {"AutoConfig": "modeling_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"}
    torch.manual_seed(1)
    network = modeling_tiny.TinyModel(config)
    network.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    native = Transformer(ModelConfig(vocab_size=len(tokenizer), context_length=CONTEXT, d_model=32, n_layers=2, n_heads=2))
    native.load_state_dict({name.removeprefix("net."): value for name, value in network.state_dict().items()})
    return directory, native.eval()


FAMILIES = ("bert", "roberta", "modernbert", "llada")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    dirs = {kind: encoder_model(kind, root / kind) for kind in FAMILIES[:3]}
    dirs["llada"], _ = llada_model(root / "llada")
    return dirs


@pytest.fixture(scope="module")
def pipes(model_dirs) -> dict[str, DiffusionPipeline]:
    return {kind: DiffusionPipeline.from_pretrained(path, device="cpu", precision="fp32", trust_remote_code=kind == "llada")
            for kind, path in model_dirs.items()}


def check_sample(pipe: DiffusionPipeline, output) -> None:
    canvas = output.canvas
    mask_id = pipe.tokenizer.mask_id
    assert torch.equal(output.tokens[canvas.fixed], canvas.tokens[canvas.fixed]), "a given token changed"
    assert not bool((output.tokens[canvas.generated] == mask_id).any()), "a mask survived"
    assert not bool((output.tokens[canvas.generated] == pipe.tokenizer.pad_id).any()), "the pad id was generated"
    assert int(output.tokens.max()) < pipe.tokenizer.vocab_size


POLICY_OPTIONS = [dict(policy=policy) for policy in POLICIES] + [
    dict(policy="ancestral", remask="cap"), dict(policy="confidence", block_length=4),
    dict(policy="threshold", block_length=4, threshold=0.5), dict(policy="random", threshold=0.3),
    dict(policy="entropy", min_length=8),
]


@pytest.mark.parametrize("kind", FAMILIES)
@pytest.mark.parametrize("options", POLICY_OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_every_policy_keeps_given_tokens_and_leaves_no_mask(pipes, kind, options):
    pipe = pipes[kind]
    output = pipe.sample(["the cat sat", "a dog"], num_samples=2, length=8, steps=8, seed=0, **options)
    check_sample(pipe, output)
    assert output.tokens.shape[0] == 4
    if options.get("min_length"):
        assert not bool((output.tokens[output.canvas.generated] == pipe.tokenizer.eos_id).any())


@pytest.mark.parametrize("kind", FAMILIES)
def test_padding_does_not_change_a_sample(pipes, kind):
    pipe = pipes[kind]
    prompts = ["the cat sat on a", "a dog"]  # the second row is padded when both share a batch
    greedy = dict(length=6, steps=6, seed=3, policy="confidence", temperature=0.0)
    together = pipe.sample(prompts, **greedy)
    alone = pipe.sample(prompts, **greedy, batch_size=1)
    assert together.canvas.key_mask is not None
    for row in range(2):
        active = together.canvas.active[row]
        assert torch.equal(together.tokens[row][active], alone.tokens[row][alone.canvas.active[row]])


@pytest.mark.parametrize("kind", FAMILIES)
def test_padding_is_hidden_from_the_network(pipes, kind):
    """key_mask becomes the attention mask: a padded row's logits are those of the row alone."""
    model, tokenizer = pipes[kind].model, pipes[kind].tokenizer
    short = torch.tensor([tokenizer.encode("a dog") + [tokenizer.mask_id] * 3])
    width = short.shape[1] + 4
    padded = torch.cat((short, torch.full((1, 4), tokenizer.pad_id)), dim=1)
    key_mask = torch.arange(width)[None, :] < short.shape[1]
    with torch.no_grad():
        alone = model(short)
        hidden = model(padded, key_mask=key_mask)[:, : short.shape[1]]
        seen = model(padded)[:, : short.shape[1]]
    assert torch.allclose(hidden, alone, atol=1e-5)
    assert not torch.allclose(seen, alone, atol=1e-5)  # the padding would matter if it were not hidden


@pytest.mark.parametrize("kind", FAMILIES)
def test_infill_and_stream(pipes, kind):
    pipe = pipes[kind]
    output = pipe.sample(infill="the [MASK*3] sat on [MASK] mat", steps=4, seed=0)
    check_sample(pipe, output)
    steps = list(pipe.stream(infill="the [MASK*3] sat on [MASK] mat", steps=4, seed=0))
    assert torch.equal(steps[-1].tokens, output.tokens)
    assert len(steps) >= 2 and steps[-1].texts[0].startswith("the ")


def test_special_ids_anywhere_and_special_text_stays_text(pipes):
    tokenizer = pipes["bert"].tokenizer
    assert tokenizer.mask_id < tokenizer.vocab_size - 3  # BERT's specials come first, not last
    assert tokenizer.eos_id == tokenizer.hf.sep_token_id and tokenizer.pad_id == tokenizer.hf.pad_token_id
    assert tokenizer.mask_id not in tokenizer.encode("the [MASK] cat")
    llada = pipes["llada"].tokenizer  # no mask_token in the tokenizer (as LLaDA's): config.json names it
    assert llada.mask_id == llada.hf.convert_tokens_to_ids("<|mdm_mask|>")
    assert llada.eos_id == llada.hf.convert_tokens_to_ids("<|eot_id|>")
    assert llada.pad_id == llada.hf.bos_token_id  # its pad token is an end token the model writes: not the pad


def test_encoder_models_see_their_start_token_and_context(pipes):
    assert pipes["bert"].model.start_ids == [pipes["bert"].tokenizer.hf.cls_token_id]
    assert pipes["roberta"].model.start_ids == [pipes["roberta"].tokenizer.hf.bos_token_id]
    assert pipes["llada"].model.start_ids == []
    assert {kind: pipe.context_length for kind, pipe in pipes.items()} == {
        "bert": CONTEXT - 1, "roberta": CONTEXT - 1, "modernbert": CONTEXT - 1, "llada": CONTEXT}
    with pytest.raises(DDLMError, match="context"):
        pipes["bert"].sample("the cat", length=CONTEXT, steps=2)


@pytest.mark.parametrize("kind", FAMILIES)
def test_chat_applies_the_template(pipes, kind):
    pipe = pipes[kind]
    row = pipe.canvas_rows("the cat", 1, 4, chat=True)[0]
    expected = pipe.tokenizer.hf.apply_chat_template([{"role": "user", "content": "the cat"}],
                                                     add_generation_prompt=True, tokenize=True)["input_ids"]
    assert row == [*expected, None, None, None, None]
    assert pipe.tokenizer.hf.convert_tokens_to_ids("<|assistant|>") == row[len(expected) - 1]
    check_sample(pipe, pipe.sample("the cat", chat=True, length=4, steps=4, seed=0, policy="threshold"))


def test_chat_without_a_template_is_refused(tmp_path, pipes):
    tokenizer = word_tokenizer(ENCODER_SPECIALS["bert"], chat=False)
    directory = tmp_path / "bert"
    transformers.AutoModelForMaskedLM.from_config(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=CONTEXT)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    pipe = DiffusionPipeline.from_pretrained(directory, device="cpu")
    with pytest.raises(DDLMError, match="no chat template.*drop chat"):
        pipe.sample("the cat", chat=True, length=4, steps=2)


@pytest.mark.parametrize("kind", ["bert", "llada"])
def test_prefix_cache_is_refused_in_one_line_where_the_model_has_none(pipes, kind):
    """BERT takes no past_key_values; the LLaDA-interface model's code asserts, as LLaDA's own does."""
    with pytest.raises(DDLMError, match="(prefix cache is off|refuses a key/value cache).*drop prefix_cache") as error:
        pipes[kind].sample("the cat", length=8, steps=4, block_length=4, prefix_cache=True)
    assert "\n" not in str(error.value) and error.value.field == "prefix_cache"


@pytest.mark.parametrize("kind", ["bert", "llada"])
def test_the_dual_cache_is_refused_in_one_line(pipes, kind):
    """Hugging Face models hold at most a prefix cache (past_key_values), never keys right of the block."""
    with pytest.raises(DDLMError, match="(prefix only|is off).*drop (prefix_cache and )?dual_cache") as error:
        pipes[kind].sample("the cat", length=8, steps=4, policy="confidence", block_length=4, dual_cache=True)
    assert "\n" not in str(error.value)


def test_custom_code_never_runs_without_the_flag(tmp_path, capsys):
    directory, _ = llada_model(tmp_path / "refused-model")
    capsys.readouterr()
    with pytest.raises(DDLMError, match="--trust-remote-code") as error:
        DiffusionPipeline.from_pretrained(directory, device="cpu")
    assert "\n" not in str(error.value)
    assert not any("refused-model" in name or "refused_model" in name for name in sys.modules)
    code = main(["sample", "--model", str(directory), "--length", "4", "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--trust-remote-code" in err and err.count("\n") == 1


@pytest.mark.parametrize("shifted", [False, True], ids=["llada", "dream-shifted"])
def test_one_sampler_two_backends_same_tokens(tmp_path, shifted):
    """The same network through transformers + trust_remote_code and as a native ddlm model: identical samples,
    with the prefix cache too (past_key_values) where the network is not shifted."""
    directory, native = llada_model(tmp_path / ("dream" if shifted else "llada"), shifted=shifted, kv_cache=True)
    pipe = DiffusionPipeline.from_pretrained(directory, device="cpu", precision="fp32", trust_remote_code=True)
    assert pipe.model.shift_logits == shifted
    assert pipe.tokenizer.mask_id == pipe.tokenizer.hf.convert_tokens_to_ids("<|mdm_mask|>")
    rows = pipe.canvas_rows(["the cat sat on", "a dog"], 1, 12)  # padded second row
    canvas = Canvas.from_rows(rows, pipe.tokenizer.mask_id, pipe.tokenizer.pad_id, pipe.device)
    cached = [] if shifted else [dict(policy="confidence", block_length=4, prefix_cache=True),
                                  dict(policy="threshold", block_length=6, prefix_cache=True, threshold=0.3)]
    for options in (dict(policy="confidence"), dict(policy="confidence", block_length=4),
                    dict(policy="threshold", threshold=0.2), *cached):
        hf_run = run_steps(pipe.model, pipe.process, canvas=canvas, steps=12, temperature=0.0, **options)
        native_run = run_steps(native, pipe.process, canvas=canvas, steps=12, temperature=0.0, **options)
        assert torch.equal(hf_run.tokens, native_run.tokens)
        assert hf_run.model_calls == native_run.model_calls
    if shifted:
        with pytest.raises(DDLMError, match="prefix cache is off"):
            run_steps(pipe.model, pipe.process, canvas=canvas, steps=12, block_length=4, prefix_cache=True)
    rows = [torch.tensor(pipe.tokenizer.encode(TEXT)[:CONTEXT]), torch.tensor(pipe.tokenizer.encode(TEXT)[5:CONTEXT])]
    if not shifted:  # a shifted network cannot score position 0, so only the LLaDA interface gives the same bound
        hf_bound = evaluate_likelihood(pipe.model, pipe.process, rows, pipe.tokenizer.byte_lengths(), draws=4, seed=0)
        native_bound = evaluate_likelihood(native, pipe.process, rows, pipe.tokenizer.byte_lengths(), draws=4, seed=0)
        assert hf_bound.nats_per_token == pytest.approx(native_bound.nats_per_token, rel=1e-6)


def test_cli_sample_chat_threshold_blocks_and_eval(model_dirs, tmp_path, capsys):
    directory = model_dirs["llada"]
    code = main(["sample", "--model", str(directory), "--trust-remote-code", "--chat", "--prompt", "the cat",
                 "--policy", "threshold", "--block-length", "32", "--length", "32", "--steps", "8", "--seed", "0",
                 "--format", "jsonl"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["text"].startswith("the cat")  # the template's special tokens are not printed
    data = tmp_path / "held-out.txt"
    data.write_text(TEXT + "\n", encoding="utf-8")
    report = tmp_path / "eval.json"
    for kind in ("llada", "bert"):
        flags = ["--trust-remote-code"] if kind == "llada" else []
        code = main(["eval", "--model", str(model_dirs[kind]), "--data", str(data), *flags, "--draws", "2",
                     "--max-sequences", "4", "-n", "2", "--steps", "8", "--no-progress", "--json", str(report)])
        out, err = capsys.readouterr()
        assert code == 0, err
        likelihood = json.loads(report.read_text())["models"][str(model_dirs[kind])]["likelihood"]
        assert 0 < likelihood["nats_per_token"] < 50 and likelihood["tokens"] > 0


def test_a_cached_hub_id_loads_offline(model_dirs, tmp_path, monkeypatch):
    """A Hub id whose snapshot is in the local Hugging Face cache loads without the network (HF_HUB_OFFLINE)."""
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--tiny-org--tiny-bert"
    commit = "0" * 40
    shutil.copytree(model_dirs["bert"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = DiffusionPipeline.from_pretrained("tiny-org/tiny-bert", device="cpu")
    assert pipe.summary["model_type"] == "bert"
    check_sample(pipe, pipe.sample("the cat", length=4, steps=4, seed=0))


@pytest.mark.parametrize("kind", ["bert", "llada"])
def test_save_pretrained_keeps_the_transformers_format(pipes, kind, tmp_path):
    pipe = pipes[kind]
    pipe.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "config.json").read_text()).get("library") != "ddlm"
    assert not any(path.name.startswith(".saving-") for path in (tmp_path / "copy").iterdir())
    copy = DiffusionPipeline.from_pretrained(tmp_path / "copy", device="cpu", trust_remote_code=kind == "llada")
    arguments = dict(length=6, steps=6, seed=1, policy="confidence")
    assert torch.equal(copy.sample("the cat", **arguments).tokens, pipe.sample("the cat", **arguments).tokens)


def test_a_trained_summary_survives_saving_a_transformers_directory_again(pipes, tmp_path):
    pipe = copy.copy(pipes["bert"])
    pipe.summary = {**pipe.summary, "final_valid_nelbo": 1.25, "steps": 7}  # as ddlm training leaves it
    pipe.save_pretrained(tmp_path / "copy")
    again = DiffusionPipeline.from_pretrained(tmp_path / "copy", device="cpu")
    assert (again.summary["final_valid_nelbo"], again.summary["steps"]) == (1.25, 7)


def test_tokenizer_code_never_runs_without_the_flag(model_dirs, tmp_path):
    import shutil

    directory = tmp_path / "custom-tokenizer"
    shutil.copytree(model_dirs["bert"], directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_tiny.TinyTokenizer", None]}
    config_path.write_text(json.dumps(config))
    with pytest.raises(DDLMError, match=r"tokenization_tiny.*--trust-remote-code"):
        DiffusionPipeline.from_pretrained(directory, device="cpu")


def test_the_web_app_serves_a_hugging_face_model(model_dirs):
    from ddlm.app.service import Models

    with pytest.raises(DDLMError, match="--trust-remote-code"):
        Models.load([str(model_dirs["llada"])], device="cpu")
    models = Models.load([str(model_dirs["llada"]), str(model_dirs["bert"])], device="cpu", trust_remote_code=True)
    cards = [models.get(name).card() for name in models.names]
    assert [card["tokenizer"]["kind"] for card in cards] == ["hf", "hf"]
    assert [(card["layers"], card["d_model"], card["heads"]) for card in cards] == [(2, 32, 2), (2, 32, 2)]
    assert cards[1]["context_length"] == CONTEXT - 1 and cards[1]["process"]["schedule"]["name"] == "linear"
