"""The base of every spec, and the specs of the helpers that several stages share; `flows/spec.py` composes the stage
specs into `PipelineSpec`.

Every spec module (this one, and each stage's `spec.py`) imports only pydantic, typing and other spec modules, so that
each process reading a spec (each stage flow a Prefect worker starts, the CLI) need not wait for torch and transformers.
TrainSpec configures tasks/train.py, ModelSpec tasks/model.py, MethodSpec tasks/methods.py, and AttackSpec
tasks/attack.py (adversarial examples in augment, robust accuracy in finetune).
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema

# Words of field names that read better in the form as their usual spelling than title-cased.
SPELLED = {
    "lr": "LR",
    "lora": "LoRA",
    "mlm": "MLM",
    "mlp": "MLP",
    "eda": "EDA",
    "cpu": "CPU",
    "gpu": "GPU",
    "minhash": "MinHash",
    "ngram": "N-gram",
}

# Prefect's form labels an untitled {"type": "null"} choice "None" and prints `Property is type "None"` under it; its
# description, shown above that line, says what choosing it does. A section is on or off; a value is set or empty.
EMPTY_SECTION = {"title": "off", "description": "Off (null): the pipeline leaves this section out."}
EMPTY_VALUE = {"title": "empty", "description": "Empty (null): the help text above says what that means."}


def title(name: str, _field=None) -> str:
    """The form's label of a field: `lora_rank` → LoRA Rank, `stage_timeout_s` → Stage Timeout (s)."""
    words = name.split("_")
    if len(words) > 1 and words[-1] == "s":  # a duration in seconds
        words[-1] = "(s)"
    return " ".join(SPELLED.get(w, w.capitalize()) for w in words)


def label_empty(schema: dict) -> dict:
    """Name the null choice of an `X | None` property's schema (in place; returned for `WithJsonSchema`)."""
    choices = schema.get("anyOf", [])
    section = any("$ref" in c for c in choices)
    for choice in choices:
        if choice.get("type") == "null":
            choice.update(EMPTY_SECTION if section else EMPTY_VALUE)
        elif "$ref" in choice:
            choice.setdefault("title", "on")  # instead of the spec class's name
    return schema


def form_schema(schema: dict, cls: type[BaseModel]) -> None:
    """What Prefect's run form needs beyond pydantic's JSON schema of a spec: every field titled (pydantic titles no
    nested section), every default written out (pydantic omits a `default_factory`'s, and the form then starts the
    field empty whenever a preset leaves it out), and the empty choices named."""
    for name, field in cls.model_fields.items():
        prop = schema["properties"][field.alias or name]
        prop.setdefault("title", field.title or title(name))
        if field.default_factory is not None and "default" not in prop:
            prop["default"] = TypeAdapter(field.annotation).dump_python(field.default_factory(), mode="json")
        label_empty(prop)


# Flow parameters that may be left empty, their empty choice named in the form like a spec field's.
OptionalStr = Annotated[str | None, WithJsonSchema(label_empty({"anyOf": [{"type": "string"}, {"type": "null"}]}))]
OptionalInt = Annotated[int | None, WithJsonSchema(label_empty({"anyOf": [{"type": "integer"}, {"type": "null"}]}))]


class Spec(BaseModel):
    """Frozen, no unknown keys, and each field's attribute docstring becomes its help text in the Prefect form."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        field_title_generator=title,
        json_schema_extra=form_schema,
    )

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
    """Training precision; bf16/fp16 train under autocast. On CPU, bf16 needs AMX or AVX512-BF16: with them package:minilm classification ran 1.7x faster on one thread but under 1.3x on two, and a 4-layer 128-wide GPT-2 ran slower."""
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
            raise ValueError(
                f"model.n_embd ({self.n_embd}) must be a multiple of model.n_head ({self.n_head}): change one of them"
            )


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
            raise ValueError(
                "finetune.lora_targets has an empty name: give module names such as q_proj, or leave it unset"
            )
        if self.lora_targets == []:
            raise ValueError(
                "finetune.lora_targets is an empty list: name at least one module, or leave it unset for the default"
            )


class AttackSpec(Spec):
    importance: Literal["deletion", "gradient"] = "deletion"
    """How words are ranked: `deletion` (drop in the true label's probability when the word is removed; one batch per example) or `gradient` (norm of the loss gradient at the word's token embeddings; one backward pass)."""
    max_edits: int = Field(3, ge=1, le=50)
    """Words substituted at most per example."""
    max_edit_fraction: float = Field(0.25, gt=0, le=1)
    """And at most this fraction of an example's words (at least one), so short texts keep their meaning."""
    candidates: int = Field(8, ge=1, le=64)
    """Synonyms tried for each word, best first."""
    rows: int | None = Field(300, ge=1)
    """Examples attacked, chosen by content hash; empty attacks them all (each costs about one forward batch per word)."""
    synonyms: Literal["auto", "wordnet", "embedding"] = "auto"
    """Where substitutes come from: WordNet when installed (`auto`), else nearest neighbours in the attacked model's input embeddings."""
    protected: list[str] = []
    """Words never substituted (case-insensitive), e.g. negations that would change the true label."""
    max_length: int = Field(128, ge=8, le=4096)
    """Longest tokenized example the model sees."""
    seed: int = 0
    """Salts the content hash that picks the attacked rows when `rows` caps them (0 keeps the original choice). A sweep's seeds vary augment.adversarial's and keep finetune.attack's, so robust accuracy is measured on the same test rows."""
