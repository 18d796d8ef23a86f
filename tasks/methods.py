"""Fine-tuning methods — how much of a model trains: full, LoRA (peft), the task head alone, frozen lower blocks."""

import json
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from tasks.errors import UserError
from tasks.spec import MethodSpec

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"

# Attention projections only, by `config.model_type`. The MLP holds about two thirds of a block's weights and would
# more than double the adapter; LoRA's own study (Hu et al. 2021, §7.1) adapts attention only, and the classification
# and short SFT runs this serves get most of their gain there. List MLP names in `lora_targets` to add them.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    # GPT-2 names both its attention output and its MLP output `c_proj`; the suffix keeps the MLP out.
    "gpt2": ["c_attn", "attn.c_proj"],
    "bert": ["query", "key", "value"],
}


def prepare(model: PreTrainedModel, spec: MethodSpec, task: Literal["causal_lm", "classification"]) -> torch.nn.Module:
    """The model to train under the spec's method (a `PeftModel` for lora); the other methods set `requires_grad` in place."""
    if spec.method == "lora":
        return _lora(model, spec, task)
    if spec.method == "head" and task != "classification":
        tied = " (its output layer is the input embedding matrix, tied)" if model.config.tie_word_embeddings else ""
        raise UserError(
            f"finetune.method head trains a classification head, and a causal LM has none separate from its vocabulary "
            f"projection{tied}: use method lora, or full with freeze_layers."
        )
    model.requires_grad_(spec.method == "full")
    if spec.method == "head":
        for module in _heads(model).values():
            module.requires_grad_(True)
    if spec.freeze_layers:
        _freeze_lower(model, spec.freeze_layers)
    return model


def trainable_fraction(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    params = list(model.parameters())  # parameters() yields each shared tensor once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def finalize(model: torch.nn.Module, spec: MethodSpec) -> torch.nn.Module:
    """The model to register: LoRA merged into plain weights when `merge_lora`, else the `PeftModel` as it is."""
    if isinstance(model, PeftModel) and spec.merge_lora:
        # Folds B @ A * alpha / r into each weight and swaps the trained head copy in: a plain transformers model.
        return model.merge_and_unload()
    return model


def save_adapter(peft_model: PeftModel, path: str | Path, base_uri: str | None = None) -> Path:
    """Write adapter_model.safetensors + adapter_config.json (with the base's URI, when given) into `path`."""
    if base_uri is not None:
        peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path = base_uri
    # No embedding copy: methods here never train embeddings, and peft's "auto" check looks the base id up on the Hub.
    peft_model.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)
    return Path(path)


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter folder records (what `save_adapter` was given as `base_uri`)."""
    return json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or None


def load_with_adapter(base: PreTrainedModel | str | Path, adapter_dir: str | Path, **base_kwargs) -> PeftModel:
    """The base (a loaded model or a `save_pretrained` folder) with the adapter's weights on top, ready for inference.

    `base_kwargs` go to `from_pretrained` for a folder, e.g. `num_labels` when the base is a plain LM under a
    classification adapter (the trained head itself comes from the adapter).
    """
    # Never mlflow.transformers for a PeftModel: its reload re-initialises the base weights (DESIGN §3); base first, then adapter.
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file() or not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise UserError(
            f"Adapter folder {adapter_dir} lacks {ADAPTER_CONFIG} or {ADAPTER_WEIGHTS} (pickled adapters are refused): "
            "point at a folder written by save_adapter."
        )
    if not isinstance(base, torch.nn.Module):
        task = json.loads((adapter_dir / ADAPTER_CONFIG).read_text()).get("task_type")
        auto = AutoModelForSequenceClassification if task == TaskType.SEQ_CLS else AutoModelForCausalLM
        if not any(Path(base).glob("*.safetensors")):
            raise UserError(
                f"Base model folder {base} has no *.safetensors weights: point at a folder written by save_pretrained."
            )
        base = auto.from_pretrained(base, use_safetensors=True, trust_remote_code=False, **base_kwargs)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()


def _lora(model: PreTrainedModel, spec: MethodSpec, task: str) -> PeftModel:
    layers = _linear_layers(model)
    names = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in layers}))
    targets = spec.lora_targets or DEFAULT_LORA_TARGETS.get(model.config.model_type)
    if targets is None:
        raise UserError(
            f"finetune.lora_targets: there is no default for model type {model.config.model_type!r}; "
            f"the model has {names}: set finetune.lora_targets to some of those."
        )
    matched = {t: [n for n in layers if n == t or n.endswith("." + t)] for t in targets}
    for target, hits in matched.items():
        if not hits:
            raise UserError(
                f"finetune.lora_targets: the model has no module named {target!r}; it has {names}: pick from those."
            )
    # GPT-2's Conv1D stores its weight as [in, out], the transpose of nn.Linear's [out, in]; peft must know to transpose.
    conv1d = any(isinstance(layers[n], Conv1D) for hits in matched.values() for n in hits)
    config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(targets),
        fan_in_fan_out=conv1d,
        # The head starts untrained (or is new), so it trains in full beside the adapters and is saved with them.
        modules_to_save=list(_heads(model)) if task == "classification" else None,
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, config)


def _linear_layers(model: PreTrainedModel) -> dict[str, torch.nn.Module]:
    """The backbone's Linear/Conv1D layers by full name (heads excluded: they train whole, not through adapters)."""
    prefix = model.base_model_prefix
    return {
        f"{prefix}.{n}" if model.base_model is not model else n: m
        for n, m in model.base_model.named_modules()
        if isinstance(m, (torch.nn.Linear, Conv1D))
    }


def _heads(model: PreTrainedModel) -> dict[str, torch.nn.Module]:
    """The task head: the top-level children with weights beside the backbone (`classifier` in BERT, `score` in GPT-2/Llama)."""
    heads = {
        n: m for n, m in model.named_children()
        if m is not model.base_model and any(True for _ in m.parameters())
    }  # fmt: skip
    if not heads or model.base_model is model:
        raise UserError(
            f"finetune.method: {type(model).__name__} has no task head beside its backbone: "
            "load the model for sequence classification, or use method full or lora."
        )
    return heads


def _freeze_lower(model: PreTrainedModel, n: int) -> None:
    """Freeze the embeddings and blocks [0, n) of the backbone."""
    backbone = model.base_model
    count = getattr(model.config, "num_hidden_layers", None)
    blocks = next((m for m in backbone.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count), None)
    if blocks is None:
        raise UserError(
            f"finetune.freeze_layers: cannot find the transformer blocks of a {model.config.model_type} model: set it to 0."
        )
    if n > len(blocks):
        raise UserError(
            f"finetune.freeze_layers ({n}) exceeds the model's {len(blocks)} blocks: set it to at most {len(blocks)}."
        )
    # Embeddings are what the backbone registers before its blocks (token and position tables, BERT's embedding
    # LayerNorm); transformers models build their input that way. A tied LM head freezes with the token table.
    first_block = {id(p) for p in blocks[0].parameters()}
    for p in backbone.parameters():
        if id(p) in first_block:
            break
        p.requires_grad_(False)
    for block in blocks[:n]:
        block.requires_grad_(False)
