"""The finetune stage's specs: what to start from, how to train (the method's fields, adversarial training), what to
score after training (generations, an attack's robust accuracy)."""

from typing import Literal

from pydantic import Field, model_validator

from tasks.spec import AttackSpec, MethodSpec, Spec, TrainSpec


class AdversarialSpec(Spec):
    method: Literal["fgm", "pgd"] = "fgm"
    """fgm: one step of size epsilon up the normalised loss gradient (Miyato et al. 2017); pgd: `steps` steps of size alpha, each projected into the epsilon ball (Madry et al. 2018)."""
    epsilon: float = Field(1.0, gt=0)
    """Radius of the perturbation: the L2 norm of each example's whole [seq, hidden] block of word embeddings (padding excluded), not of each token."""
    alpha: float = Field(0.3, gt=0)
    """PGD: L2 size of each step (per example); ignored by fgm."""
    steps: int = Field(3, ge=1, le=20)
    """PGD: steps per batch, each one more forward and backward pass; ignored by fgm."""
    weight: float = Field(1.0, ge=0)
    """The loss trained on is clean + weight × adversarial; logged as `loss` = `clean_loss` + weight × `adv_loss`."""


class SelfConsistencySpec(Spec):
    samples: int = Field(5, ge=2, le=64)
    """Generations sampled per problem; the answer is the number most of them end in (a tie goes to the one sampled first)."""
    temperature: float = Field(0.7, gt=0, le=2)
    """Sampling temperature, with no top-k or top-p cut; the seed is finetune.train.seed, so a rerun draws the same samples."""
    rows: int | None = Field(None, ge=1)
    """Vote on the first this many of the generation rows only (each costs `samples` generations); greedy accuracy on the same rows is reported beside it as greedy_answer_accuracy_voted_rows; empty votes on all."""


# FinetuneSpec extends the method's fields (method, freeze_layers, lora_*) so the form reads finetune.method=lora.
class FinetuneSpec(MethodSpec):
    init: str | None = None
    """Model to start from (models:/name@alias, a local folder, package:minilm, package:smollm2-135m, hf:<id>); empty takes the model the pipeline trained before this stage."""
    train: TrainSpec = TrainSpec(
        max_steps=200, batch_size=16, lr=5e-5, warmup_steps=20, weight_decay=0.01, checkpoint_every=50
    )
    """Optimisation and checkpointing; validation is scored at every checkpoint, and the best checkpoint is the one registered."""
    max_length: int = Field(128, ge=8, le=32768)
    """Longest tokenized example (prompt and response together for SFT); longer ones are truncated."""
    patience: int | None = Field(3, ge=1)
    """Stop after this many validation scores without improvement; empty trains for max_steps."""
    generation_rows: int = Field(50, ge=0)
    """SFT and math: the first this many test rows generated and scored (BLEU, chrF, exact match; math: the extracted answer's accuracy) before and after training; 0 skips it."""
    max_new_tokens: int = Field(48, ge=1, le=4096)
    """SFT and math: longest generated response when scoring (a worked solution needs ~256)."""
    self_consistency: SelfConsistencySpec | None = None
    """Math: also score a majority vote over sampled generations of each held-out problem (self-consistency, Wang et al. 2022), reported as voted_answer_accuracy beside greedy answer_accuracy; empty scores greedy decoding only."""
    doc_stride: int | None = Field(None, ge=1)
    """Extractive QA: tokens shared by consecutive windows of a context longer than max_length (Hugging Face's `--doc_stride`); below max_length / 2; empty is a quarter of max_length."""
    max_answer_length: int = Field(30, ge=1, le=512)
    """Extractive QA: longest answer predicted, in tokens."""
    n_best: int = Field(20, ge=1, le=200)
    """Extractive QA: start and end candidates kept per window (the n best logits of each) when picking the answer span."""
    adversarial: AdversarialSpec | None = None
    """Adversarial training: each batch also trains on its word embeddings nudged against the model (FGM or PGD); empty trains on clean inputs only."""
    attack: AttackSpec | None = None
    """Classification: after training, attack test rows with word substitutions and report robust accuracy and the attack success rate beside clean accuracy; empty skips it."""
    layer_lr_decay: float = Field(1.0, gt=0, le=1)
    """Layer-wise learning-rate decay (Zhang et al. 2021): the head and top block train at train.lr, each block below at this factor times the one above, the embeddings below the lowest block; 1 trains every layer at train.lr."""
    reinit_layers: int = Field(0, ge=0, le=128)
    """Re-initialise the top this many transformer blocks with the model's initialiser before training (Zhang et al. 2021: they help on small data); method full only, and not blocks that freeze_layers freezes; 0 keeps every pretrained block."""
    stop_behind: dict[int, float] = {}
    """Stop training at an evaluation step listed here when the best validation score so far is worse than the value given (rounds.search sets it to the earlier rounds' median at each step, its pruner's bar); empty never stops for this."""
    register_suffix: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$")
    """The model is registered as `<name><suffix>`."""
    init_seed: int | None = None
    """Seeds the weights fine-tuning adds (a new classification or span head, LoRA's adapters); empty follows train.seed. The rounds of a soup keep their first round's, so their heads start alike and average well (train.seed still varies their data order and dropout)."""
    average_last: int | None = Field(None, ge=2, le=20)
    """Checkpoint averaging: register the element-wise mean of the last this many checkpoints (every train.checkpoint_every steps) instead of the best one; early stopping still decides when training ends, and the scores are the mean's; empty registers the best checkpoint."""

    @property
    def seed_of_new_weights(self) -> int:
        """The seed a new head or adapter is drawn with."""
        return self.train.seed if self.init_seed is None else self.init_seed

    @model_validator(mode="after")
    def _stride_leaves_context(self):
        if self.doc_stride is not None and self.doc_stride >= self.max_length // 2:
            raise ValueError(
                f"finetune.doc_stride ({self.doc_stride}) must be below half of finetune.max_length ({self.max_length}) "
                "so that each window moves on through the context: lower doc_stride or raise max_length"
            )
        if self.average_last and self.train.sharding == "fsdp":
            raise ValueError(
                "finetune.average_last averages safetensors checkpoints, and FSDP saves its own format: "
                "set finetune.train.sharding to ddp, or average_last to null"
            )
        return self

    @model_validator(mode="after")
    def _layer_recipes_fit(self):
        if self.reinit_layers and self.method != "full":
            raise ValueError(
                f"finetune.reinit_layers re-initialises blocks that method {self.method} keeps frozen: "
                "set finetune.method to full, or reinit_layers to 0"
            )
        if self.layer_lr_decay < 1 and self.train.devices > 1 and self.train.sharding == "fsdp":
            raise ValueError(
                "finetune.layer_lr_decay sets per-layer learning rates, which FSDP's flattened parameters do not keep: "
                "set finetune.train.sharding to ddp, or layer_lr_decay to 1"
            )
        return self


class SoupSpec(Spec):
    method: Literal["uniform", "greedy"] = "uniform"
    """uniform: the element-wise mean of every round's model; greedy: the rounds' models by validation accuracy, best first, each added only if the soup's validation accuracy does not drop (Wortsman et al. 2022)."""

    def misfit(self, pipeline) -> str | None:
        """Why the pipeline (a PipelineSpec) cannot make a soup, or None: it averages the rounds' whole classifiers."""
        if pipeline.rounds is None or pipeline.labeled is None or pipeline.labeled.task != "classification":
            return "soup averages the models of rounds on classification data: set rounds and labeled.task classification, or set soup to null"
        if pipeline.rounds.max_rounds < 2:
            return "soup averages two or more rounds' models, and rounds.max_rounds is 1: raise it, or set soup to null"
        if pipeline.finetune.method == "lora" and not pipeline.finetune.merge_lora:
            return "soup averages whole models, and finetune.merge_lora off registers LoRA adapters alone: set merge_lora to true, or set soup to null"
        return None
