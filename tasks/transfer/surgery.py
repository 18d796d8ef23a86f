"""Structure surgery for transfer learning: drop or insert transformer blocks, add tokens, put on a classification head;
and the transfer stage's body, `run`."""

import copy
import json
from functools import reduce

import mlflow
import torch
from torch import nn
from transformers import PreTrainedModel, set_seed

from tasks import model as models
from tasks import registry
from tasks.errors import UserError
from tasks.heads import BLOCKS, arch, classification_head
from tasks.transfer.spec import TransferSpec

# Projections that write into the residual stream, per block; zeroed, a pre-LN block adds 0 to its input.
# BERT is absent on purpose: it is post-LN, LayerNorm(x + 0) != x.
RESIDUAL_WRITERS = {
    "gpt2": ("attn.c_proj", "mlp.c_proj", "crossattention.c_proj"),  # crossattention only with add_cross_attention
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
}
# Config lists with one entry per block; they follow the blocks through surgery.
PER_LAYER_LISTS = ("layer_types",)


def _blocks(model: PreTrainedModel) -> nn.ModuleList:
    """The ModuleList of transformer blocks, found by architecture."""
    return reduce(getattr, BLOCKS[arch(model)].split("."), model.base_model)


def _restack(model: PreTrainedModel, blocks: list[nn.Module], sources: list[int]) -> None:
    """Install `blocks` as the stack; `sources[i]` is the old index block i was taken or copied from."""
    config = model.config
    if getattr(config, "is_heterogeneous", False):
        raise UserError(
            f"transfer: {type(model).__name__} has a per-layer (heterogeneous) config, which surgery cannot renumber: "
            "use a model with one config for all blocks."
        )
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise UserError(
            f"transfer: this {type(model).__name__} scales attention by 1/(layer index + 1), so moving a block changes what it "
            "computes: structure surgery needs scale_attn_by_inverse_layer_idx=False."
        )
    path = BLOCKS[arch(model)].split(".")
    holder = reduce(getattr, path[:-1], model.base_model)
    setattr(holder, path[-1], nn.ModuleList(blocks))
    # Forward loops over layers[:num_hidden_layers] and DynamicCache sizes itself from it (GPT-2 maps it to n_layer).
    config.num_hidden_layers = len(blocks)
    for name in PER_LAYER_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, list):
            setattr(config, name, [values[s] for s in sources])
    # Attention modules address the KV cache by layer_idx: two blocks with one index would share a cache slot.
    for index, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index


def _resolve(field: str, values: list[int], n: int, what: str) -> list[int]:
    """Python-style indices into a stack of n, made non-negative; out of range or repeated ones are errors."""
    resolved = []
    for v in values:
        if not -n <= v < n:
            raise UserError(
                f"transfer.{field}: index {v} is out of range for {what} (valid: 0–{n - 1}, or -{n} to -1)."
            )
        if v % n in resolved:
            raise UserError(f"transfer.{field}: index {v} names block {v % n} a second time: list each block once.")
        resolved.append(v % n)
    return sorted(resolved)


def drop_layers(model: PreTrainedModel, layers: list[int] | None = None, every: int | None = None) -> list[int]:
    """Remove blocks in place, by index (negative from the end) or every k-th one; returns the dropped indices."""
    blocks = _blocks(model)
    n = len(blocks)
    if layers and every:
        raise UserError("transfer: give drop_layers or drop_every, not both.")
    if every is not None:
        if every < 2:
            raise UserError(f"transfer.drop_every: {every} would drop every block: use 2 or more.")
        dropped = list(range(every - 1, n, every))
        if not dropped:
            raise UserError(
                f"transfer.drop_every: {every} drops nothing from a model with {n} layers: use at most {n}."
            )
    else:
        dropped = _resolve("drop_layers", layers or [], n, f"a model with {n} layers")
    keep = [i for i in range(n) if i not in dropped]
    if not keep:
        raise UserError(f"transfer.drop_layers: dropping {dropped} removes all {n} layers: keep at least one.")
    _restack(model, [blocks[i] for i in keep], keep)
    return dropped


def insert_identity_blocks(model: PreTrainedModel, positions: list[int]) -> list[int]:
    """LLaMA-Pro expansion: copies of the block below each position with residual writers zeroed; returns the new indices."""
    kind = arch(model)
    if kind not in RESIDUAL_WRITERS:
        raise UserError(
            f"transfer.insert_identity_at: {type(model).__name__} is post-LN (LayerNorm after each residual add), so a block "
            "with zeroed output projections is not an identity: drop layers instead, or expand a pre-LN decoder (GPT-2, Llama)."
        )
    blocks = _blocks(model)
    n, total = len(blocks), len(blocks) + len(positions)
    new = set(
        _resolve("insert_identity_at", positions, total, f"a stack of {total} blocks after inserting {len(positions)}")
    )
    stack, sources, old = [], [], iter(range(n))
    for pos in range(total):
        if pos in new:
            src = sources[-1] if sources else 0  # the block just below, or the first block at position 0
            stack.append(_identity_copy(blocks[src], kind))
        else:
            src = next(old)
            stack.append(blocks[src])
        sources.append(src)
    _restack(model, stack, sources)
    return sorted(new)


def _identity_copy(block: nn.Module, kind: str) -> nn.Module:
    copy_ = copy.deepcopy(block)
    with torch.no_grad():
        for path in RESIDUAL_WRITERS[kind]:
            try:
                writer = copy_.get_submodule(path)
            except AttributeError:
                continue
            for p in writer.parameters():  # weight and bias: x + attn(...) + mlp(...) = x + 0 + 0
                p.zero_()
    return copy_


def resize_embeddings(model: PreTrainedModel, tokenizer, new_tokens: list[str]) -> int:
    """Add the tokens the tokenizer lacks and embed them at the mean of the existing rows; returns how many were added."""
    vocab = tokenizer.get_vocab()
    fresh = [t for t in dict.fromkeys(new_tokens) if t not in vocab]
    if not fresh:
        return 0
    added = tokenizer.add_tokens(fresh)
    ids = tokenizer.convert_tokens_to_ids(fresh)
    # Never shrink: a model may embed more rows than its tokenizer has (vocab padded to a multiple of 64).
    rows = max(len(tokenizer), model.get_input_embeddings().num_embeddings)
    # mean_resizing=True (the default) samples N(mean, 1e-9·cov) from the global RNG; the exact mean is the same
    # to ~3e-5 of a std, needs no RNG and logs no warning.
    model.resize_token_embeddings(rows, mean_resizing=False)
    first = min(ids)
    out = model.get_output_embeddings()  # tied to the input embeddings, or its own rows; None without an LM head
    with torch.no_grad():
        for p in (model.get_input_embeddings().weight, getattr(out, "weight", None), getattr(out, "bias", None)):
            if p is not None:  # [vocab, hidden] rows, or [vocab] bias entries
                p[ids] = p[:first].mean(0)
    return added


def apply(spec: TransferSpec, model: PreTrainedModel, tokenizer) -> tuple[PreTrainedModel, object, list[dict]]:
    """Add tokens, drop, insert, then put on a head (in that order); returns the model, tokenizer and the operations done."""
    # The model and tokenizer change in place; the head, when asked for, comes back as a new model.
    ops: list[dict] = []
    if spec.add_tokens:
        added = resize_embeddings(model, tokenizer, spec.add_tokens)
        ops.append({"op": "add_tokens", "tokens": list(spec.add_tokens), "added": added})
    if spec.drop_layers or spec.drop_every:
        dropped = drop_layers(model, spec.drop_layers or None, spec.drop_every)
        ops.append({"op": "drop_layers", "layers": dropped} | ({"every": spec.drop_every} if spec.drop_every else {}))
    if spec.insert_identity_at:
        ops.append({"op": "insert_identity", "at": insert_identity_blocks(model, spec.insert_identity_at)})
    if spec.labels:
        model = classification_head(model, tokenizer, spec.labels)
        ops.append({"op": "classification_head", "labels": list(spec.labels)})
    return model, tokenizer, ops


def run(spec: TransferSpec, model_uri: str, register_as: str, ctx) -> str:
    """Apply the spec's surgery to a model URI and register the result with the operations in its lineage."""
    existing = registry.find_version(register_as, ctx.key)
    if existing:
        return existing
    set_seed(spec.seed)
    where = models.locate(model_uri)
    model, tokenizer = models.load(model_uri, auto=models.auto_class(where), where=where)
    before = model.num_parameters()
    model, tokenizer, operations = apply(spec, model, tokenizer)
    mlflow.log_dict(operations, "transfer/operations.json")
    mlflow.log_metrics({"parameters_before": before, "parameters_after": model.num_parameters()})
    task = models.task_of(model)
    logged = models.log(model, tokenizer, task=task, name=register_as)
    tags = {"multistep.parent_model": model_uri, "multistep.operations": json.dumps(operations)[:4900]}
    version = registry.register(logged, register_as, ctx, tags, task=task)
    print(f"transfer: {', '.join(op['op'] for op in operations) or 'no operations'} → {version}")
    return version
