"""Per-layer fine-tuning recipes of Zhang et al. 2021 ("Revisiting Few-sample BERT Fine-tuning"): layer-wise
learning-rate decay, and re-initialising the top blocks before training."""

import re

import torch

from tasks.errors import UserError

# A parameter of block i is named `...<list>.<i>.<rest>` in every transformers encoder and decoder
# (bert.encoder.layer.3., transformer.h.3., model.layers.3.); a PeftModel only adds a prefix.
BLOCK = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")
EMBEDDINGS = re.compile(r"embed|\.wte\.|\.wpe\.")  # BERT's and Llama's tables, GPT-2's


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The backbone's transformer blocks, bottom first: the ModuleList as long as `config.num_hidden_layers`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's transformers model
    count = getattr(base.config, "num_hidden_layers", None)
    found = next((m for m in base.base_model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count), None)
    if found is None:
        raise UserError(
            f"finetune.reinit_layers and finetune.layer_lr_decay: cannot find the transformer blocks of a "
            f"{base.config.model_type} model: set reinit_layers to 0 and layer_lr_decay to 1."
        )
    return found


def reinit_top(model: torch.nn.Module, k: int) -> None:
    """Draw the top `k` blocks afresh with the model's own initialiser (`_init_weights`), as before pretraining.

    The pretrained top blocks are the most specialised to the pretraining objective; on a few thousand rows, training
    them from a fresh start is faster and steadier (Zhang et al. §5.2). The head is new anyway; the pooler stays.
    """
    stack = blocks(model)
    if k > len(stack):
        raise UserError(
            f"finetune.reinit_layers ({k}) exceeds the model's {len(stack)} blocks: set it to at most {len(stack)}."
        )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for block in stack[len(stack) - k :]:
        if not all(p.requires_grad for p in block.parameters()):
            raise UserError(
                f"finetune.reinit_layers ({k}) re-initialises blocks that finetune.freeze_layers keeps frozen: "
                "lower one of them so that the re-initialised blocks train."
            )
        # transformers marks loaded tensors initialised, and its initialisers then leave them be: unmark this block's.
        for tensor in [*block.parameters(), *block.buffers()]:
            tensor._is_hf_initialized = False
        for module in block.modules():
            base._init_weights(module)


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, decay: float, no_decay: set[str]) -> list:
    """AdamW parameter groups where a block `d` blocks below the top trains at lr × decay^d, the embeddings at
    lr × decay^(blocks) and the head (everything above the blocks) at lr; `no_decay` names take no weight decay."""
    count = len(blocks(model))
    groups: dict[tuple[int, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        block = BLOCK.search(name)
        if block:
            depth = count - 1 - int(block.group(1))
        else:
            depth = count if EMBEDDINGS.search(name) else 0
        groups.setdefault((depth, name in no_decay), []).append(p)
    return [
        {"params": params, "lr": lr * decay**depth, "weight_decay": 0.0 if skip else weight_decay}
        for (depth, skip), params in sorted(groups.items())
    ]
