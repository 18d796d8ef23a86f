"""The base of every stage spec, and the specs of the shared helpers; `flows/spec.py` composes the stage specs into `PipelineSpec`.

TrainSpec, ModelSpec and MethodSpec configure tasks/train.py, tasks/model.py and tasks/methods.py (which still export
them) but live here because those modules import torch and transformers: seconds that every process reading a spec
(each stage flow a Prefect worker starts, the CLI) would otherwise wait for.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Spec(BaseModel):
    """Frozen, no unknown keys, and each field's attribute docstring becomes its help text in the Prefect form."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    def replace(self, **changes):
        """A copy with `changes`, validated like the original: bounds and cross-field checks hold for derived specs too.

        (`model_copy(update=...)` skips validation, so a derived `lr` of 50 would pass a field that says `le=1`.)
        """
        return type(self).model_validate({**dict(self), **changes})


class TrainSpec(Spec):
    max_steps: int = Field(200, ge=0)
    """Optimizer steps to train for; 0 registers the initial weights untrained (a from-scratch baseline for comparisons)."""
    batch_size: int = Field(16, ge=1)
    """Sequences per optimizer step on each device (before gradient accumulation)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches accumulated into one optimizer step."""
    lr: float = Field(1e-3, gt=0, le=1)
    """Peak learning rate."""
    schedule: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = Field(20, ge=0)
    """Steps of linear warmup from 0 to the peak learning rate."""
    weight_decay: float = Field(0.1, ge=0, le=1)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm (0 to disable)."""
    log_every: int = Field(10, ge=1)
    """Log loss, learning rate and tokens/s to MLflow every this many steps."""
    checkpoint_every: int = Field(100, ge=1)
    """Save a resumable checkpoint (model, optimizer, scheduler, RNG, data position) every this many steps."""
    keep_checkpoints: int = Field(2, ge=1)
    """Newest checkpoints kept in the artifact store; older ones are deleted."""
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    deterministic: bool = False
    """Deterministic kernels (slower): a resumed run then ends with exactly the weights of an uninterrupted one."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision; bf16/fp16 use autocast on a GPU (fp32 is fastest for small models on CPU)."""
    compile: bool = False
    """torch.compile the model (faster steps after a compile warm-up)."""
    devices: int = Field(1, ge=1, le=64)
    """Processes (GPUs) that train together with DDP on this worker; more than 1 launches torchrun. On a machine without CUDA they run on the CPU with the gloo backend (for tests)."""
    sharding: Literal["ddp", "fsdp"] = "ddp"
    """With devices above 1: `ddp` gives each device a whole copy of the model; `fsdp` (CUDA only) shards parameters, gradients and optimizer state across the devices (FULL_SHARD), for models that do not fit one card."""


class ModelSpec(Spec):
    arch: Literal["gpt2", "llama", "bert"] = "gpt2"
    """Architecture of a model trained from scratch: gpt2 or llama (causal LM), bert (an encoder, for pretrain.objective mlm)."""
    n_layer: int = Field(4, ge=1, le=128)
    """Transformer blocks."""
    n_head: int = Field(4, ge=1, le=128)
    """Attention heads per block; must divide n_embd."""
    n_embd: int = Field(128, ge=8, le=16384)
    """Width of the residual stream."""
    n_positions: int = Field(256, ge=2, le=131072)
    """Longest sequence the model accepts; data.block_size must not exceed it."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on embeddings, attention and residual paths (0 is usual for short pretraining)."""
    mlp_ratio: float = Field(4.0, gt=0, le=16)
    """Width of the feed-forward layer as a multiple of n_embd."""

    def model_post_init(self, _context) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd ({self.n_embd}) must be a multiple of model.n_head ({self.n_head}): change one of them")


class MethodSpec(Spec):
    method: Literal["full", "lora", "head"] = "full"
    """What trains: every weight (full), low-rank adapters beside frozen weights (lora), or only the task head (head)."""
    freeze_layers: int = Field(0, ge=0)
    """With method full: freeze the embeddings and this many of the lowest transformer blocks (0 trains them all)."""
    lora_rank: int = Field(8, ge=1, le=1024)
    """LoRA: rank of each adapter (its trainable size grows linearly with it)."""
    lora_alpha: int = Field(16, ge=1)
    """LoRA: scale of the adapters' output; the update is multiplied by lora_alpha / lora_rank."""
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    """LoRA: dropout on the adapters' input during training."""
    lora_targets: list[str] | None = None
    """LoRA: names of the linear layers to adapt (e.g. q_proj, v_proj); unset means the architecture's attention projections."""
    merge_lora: bool = True
    """LoRA: register the model with the adapters merged into its weights; off registers the adapter alone, pointing at its base."""

    def model_post_init(self, _context) -> None:
        if self.freeze_layers and self.method != "full":
            raise ValueError(
                f"finetune.freeze_layers ({self.freeze_layers}) only applies to method full ({self.method} already freezes "
                "the whole base model): set finetune.freeze_layers to 0 or finetune.method to full"
            )
        if self.lora_targets is not None and not all(t.strip() for t in self.lora_targets):
            raise ValueError("finetune.lora_targets has an empty name: give module names such as q_proj, or leave it unset")
        if self.lora_targets == []:
            raise ValueError("finetune.lora_targets is an empty list: name at least one module, or leave it unset for the default")
