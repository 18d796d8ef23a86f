"""Fine-tuning methods on tiny random GPT-2, Llama and BERT models: what trains, what is refused, what reloads identically."""

import json

import pydantic
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, GPT2Config, LlamaConfig

from tasks import methods
from tasks.errors import UserError
from tasks.spec import MethodSpec

VOCAB, LABELS, LAYERS = 64, 3, 3
IDS = torch.randint(1, VOCAB, (4, 10), generator=torch.Generator().manual_seed(0))  # [batch, seq]

CONFIGS = {
    "gpt2": lambda: GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=2, n_positions=16, bos_token_id=1, eos_token_id=1
    ),
    "llama": lambda: LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=1,
    ),
    "bert": lambda: BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    ),
}
CASES = [
    ("gpt2", "causal_lm"),
    ("llama", "causal_lm"),
    ("gpt2", "classification"),
    ("llama", "classification"),
    ("bert", "classification"),
]
# Names of each backbone's embeddings and blocks, spelled out rather than derived, so the test checks the rule.
EMBEDDINGS = {
    "gpt2": ("transformer.wte.", "transformer.wpe."),
    "llama": ("model.embed_tokens.",),
    "bert": ("bert.embeddings.",),
}
BLOCK = {"gpt2": "transformer.h.{}.", "llama": "model.layers.{}.", "bert": "bert.encoder.layer.{}."}
HEAD = {"gpt2": "score", "llama": "score", "bert": "classifier"}


def tiny(arch: str, task: str):
    torch.manual_seed(0)
    config = CONFIGS[arch]()
    if task == "classification":
        config.num_labels, config.pad_token_id = LABELS, 0  # GPT-2/Llama pick each row's last non-pad token
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForCausalLM.from_config(config)


def batch(task: str) -> dict[str, torch.Tensor]:
    if task == "classification":
        return {"input_ids": IDS, "labels": torch.tensor([0, 1, 2, 1])}
    return {"input_ids": IDS, "labels": IDS}


def train_steps(model, task: str, steps: int = 1, lr: float = 1e-2) -> None:
    """Plain AdamW steps over every parameter: frozen ones get no gradient, so AdamW must leave them alone."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        model(**batch(task)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch,task", CASES)
def test_full_trains_everything(arch, task):
    model = methods.prepare(tiny(arch, task), MethodSpec(), task)
    n_trainable, total = methods.trainable_fraction(model)
    assert n_trainable == total > 0


@pytest.mark.parametrize("arch,task", [("gpt2", "causal_lm"), ("llama", "classification"), ("bert", "classification")])
def test_freeze_layers_freezes_embeddings_and_lowest_blocks_exactly(arch, task):
    model = methods.prepare(tiny(arch, task), MethodSpec(freeze_layers=2), task)
    frozen_prefixes = EMBEDDINGS[arch] + tuple(BLOCK[arch].format(i) for i in range(2))
    names = {n for n, _ in model.named_parameters()}
    assert names - trainable(model) == {n for n in names if n.startswith(frozen_prefixes)}
    assert any(n.startswith(BLOCK[arch].format(2)) for n in trainable(model))  # block 2 of 3 still trains

    before = snapshot(model)
    train_steps(model, task)
    assert changed(before, model) == trainable(model)


def test_freeze_layers_beyond_the_model_says_how_many_blocks_it_has():
    with pytest.raises(
        UserError, match=r"finetune.freeze_layers \(4\) exceeds the model's 3 blocks: set it to at most 3"
    ):
        methods.prepare(tiny("gpt2", "causal_lm"), MethodSpec(freeze_layers=4), "causal_lm")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_head_trains_only_the_classifier(arch):
    model = methods.prepare(tiny(arch, "classification"), MethodSpec(method="head"), "classification")
    assert trainable(model) == {n for n, _ in model.named_parameters() if n.startswith(HEAD[arch] + ".")}
    assert trainable(model)

    before = snapshot(model)
    train_steps(model, "classification")
    assert changed(before, model) == trainable(model)


def test_head_on_a_causal_lm_is_refused_with_the_reason():
    with pytest.raises(
        UserError, match="finetune.method head trains a classification head, and a causal LM has none.*tied"
    ):
        methods.prepare(tiny("gpt2", "causal_lm"), MethodSpec(method="head"), "causal_lm")


@pytest.mark.parametrize("arch,task", CASES)
def test_lora_trains_only_adapters_and_the_head_on_default_targets(arch, task):
    model = methods.prepare(tiny(arch, task), MethodSpec(method="lora", lora_rank=2), task)
    assert isinstance(model, PeftModel)
    head = {n for n in trainable(model) if ".modules_to_save." in n}
    adapters = trainable(model) - head
    assert all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert {n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n in head} == (
        {HEAD[arch]} if task == "classification" else set()
    )
    # Every default target is wrapped in every block, and nothing else is.
    wrapped = {n.split(".lora_A.")[0] for n in adapters if ".lora_A." in n}
    targets = methods.DEFAULT_LORA_TARGETS[arch]
    assert len(wrapped) == LAYERS * len(targets)
    assert all(any(w.endswith("." + t) for t in targets) for w in wrapped)
    n_trainable, total = methods.trainable_fraction(model)
    assert 0 < n_trainable / total < 0.1


def test_gpt2_lora_knows_conv1d_is_transposed():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = methods.prepare(tiny("gpt2", "causal_lm"), MethodSpec(method="lora"), "causal_lm")
    assert model.peft_config["default"].fan_in_fan_out
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]  # peft warns when it has to correct this
    names = {n for n, _ in model.named_modules()}
    assert "base_model.model.transformer.h.0.attn.c_proj.lora_A" in names
    assert "base_model.model.transformer.h.0.mlp.c_proj.lora_A" not in names


def test_explicit_targets_may_include_the_mlp():
    spec = MethodSpec(method="lora", lora_targets=["q_proj", "down_proj"])
    model = methods.prepare(tiny("llama", "causal_lm"), spec, "causal_lm")
    parents = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_modules() if n.endswith(".lora_A")}
    assert parents == {"q_proj", "down_proj"}


def test_unknown_lora_target_lists_the_modules_the_model_has():
    spec = MethodSpec(method="lora", lora_targets=["c_attn", "qkv"])
    with pytest.raises(
        UserError,
        match=r"^finetune.lora_targets: the model has no module named 'qkv'; it has c_attn, c_fc, c_proj: pick from those\.$",
    ):
        methods.prepare(tiny("gpt2", "causal_lm"), spec, "causal_lm")
    # the head is not a target: it trains whole
    with pytest.raises(UserError, match="it has dense, key, query, value: pick"):
        methods.prepare(
            tiny("bert", "classification"), MethodSpec(method="lora", lora_targets=["classifier"]), "classification"
        )


def test_architecture_without_default_targets_asks_for_them():
    model = tiny("gpt2", "causal_lm")
    model.config.model_type = "mystery"
    with pytest.raises(
        UserError,
        match="no default for model type 'mystery'; the model has c_attn, c_fc, c_proj: set finetune.lora_targets",
    ):
        methods.prepare(model, MethodSpec(method="lora"), "causal_lm")


@pytest.mark.parametrize(
    "arch,task", [("gpt2", "causal_lm"), ("llama", "causal_lm"), ("gpt2", "classification"), ("bert", "classification")]
)
def test_lora_merged_and_adapter_only_reload_with_the_same_logits(tmp_path, arch, task):
    base = tiny(arch, task)
    base.save_pretrained(tmp_path / "base")
    spec = MethodSpec(method="lora", lora_rank=4, lora_dropout=0.1)
    model = methods.prepare(base, spec, task)
    train_steps(model, task, steps=3)
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)  # B starts at zero
    with torch.no_grad():
        expected = model(input_ids=IDS).logits

    # Adapter alone, onto a freshly loaded base: from its folder, or already in memory.
    methods.save_adapter(model, tmp_path / "adapter", base_uri="models:/tiny-base/1")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "README.md",
    }
    assert methods.adapter_base(tmp_path / "adapter") == "models:/tiny-base/1"
    for fresh in (tmp_path / "base", _reload(tmp_path / "base", task)):
        reloaded = methods.load_with_adapter(fresh, tmp_path / "adapter")
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=IDS).logits, expected, atol=1e-6, rtol=0)

    # Merged into plain weights, through save_pretrained / from_pretrained.
    merged = methods.finalize(model, spec)
    assert not isinstance(merged, PeftModel) and not any("lora_" in n for n, _ in merged.named_parameters())
    merged.save_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(
            _reload(tmp_path / "merged", task)(input_ids=IDS).logits, expected, atol=1e-5, rtol=0
        )


def _reload(path, task):
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    return auto.from_pretrained(path).eval()


def test_classification_adapter_carries_its_head_onto_a_plain_encoder(tmp_path):
    base = tiny("bert", "classification")
    base.bert.save_pretrained(tmp_path / "encoder")  # a pretrained encoder with no classifier, as a base model would be
    model = methods.prepare(base, MethodSpec(method="lora"), "classification")
    train_steps(model, "classification", steps=2)
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    methods.save_adapter(model, tmp_path / "adapter")
    reloaded = methods.load_with_adapter(tmp_path / "encoder", tmp_path / "adapter", num_labels=LABELS)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS).logits, expected, atol=1e-6, rtol=0)


def test_unmerged_finalize_keeps_the_adapter_and_full_is_untouched():
    lora = methods.prepare(tiny("gpt2", "causal_lm"), MethodSpec(method="lora", merge_lora=False), "causal_lm")
    assert methods.finalize(lora, MethodSpec(method="lora", merge_lora=False)) is lora
    full = methods.prepare(tiny("gpt2", "causal_lm"), MethodSpec(), "causal_lm")
    assert methods.finalize(full, MethodSpec()) is full


def test_adapter_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(
        UserError, match="lacks adapter_config.json or adapter_model.safetensors .*pickled adapters are refused"
    ):
        methods.load_with_adapter(tiny("gpt2", "causal_lm"), tmp_path)


@pytest.mark.parametrize(
    "fields,message",
    [
        (
            {"method": "lora", "freeze_layers": 2},
            "finetune.freeze_layers \\(2\\) only applies to method full \\(lora already freezes",
        ),
        ({"method": "head", "freeze_layers": 1}, "set finetune.freeze_layers to 0 or finetune.method to full"),
        ({"lora_targets": []}, "finetune.lora_targets is an empty list"),
        ({"lora_targets": ["q_proj", " "]}, "finetune.lora_targets has an empty name"),
        ({"freeze_layers": -1}, "greater than or equal to 0"),
        ({"lora_rank": 0}, "greater than or equal to 1"),
        ({"method": "prefix"}, "'full', 'lora' or 'head'"),
        ({"lora_rnak": 4}, "Extra inputs are not permitted"),
    ],
)
def test_spec_validation_names_the_fields(fields, message):
    with pytest.raises(pydantic.ValidationError, match=message):
        MethodSpec(**fields)


def test_every_spec_field_has_help_text():
    assert all(f.description for f in MethodSpec.model_fields.values())
