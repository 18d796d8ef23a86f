"""The finetune stage: classification or instruction SFT from any model URI, fully, with LoRA, or head-only."""

from pydantic import Field
from transformers import Trainer

from tasks.augment.attack import AttackSpec
from tasks.data import labeled
from tasks.finetune import classify, sft
from tasks.finetune.adversarial import AdversarialSpec
from tasks.methods import MethodSpec
from tasks.tracking import StageRun
from tasks.train import TrainSpec


# FinetuneSpec extends the method's fields (method, freeze_layers, lora_*) so the form reads finetune.method=lora.
class FinetuneSpec(MethodSpec):
    init: str | None = None
    """Model to start from (models:/name@alias, a local folder, package:minilm, package:smollm2-135m, hf:<id>); empty takes the model the pipeline trained before this stage."""
    train: TrainSpec = TrainSpec(max_steps=200, batch_size=16, lr=5e-5, warmup_steps=20, weight_decay=0.01, checkpoint_every=50)
    """Optimisation and checkpointing; validation is scored at every checkpoint, and the best checkpoint is the one registered."""
    max_length: int = Field(128, ge=8, le=32768)
    """Longest tokenized example (prompt and response together for SFT); longer ones are truncated."""
    patience: int | None = Field(3, ge=1)
    """Stop after this many validation scores without improvement; empty trains for max_steps."""
    generation_rows: int = Field(50, ge=0)
    """SFT: held-out test rows generated and scored (BLEU, chrF, exact match) before and after training; 0 skips it."""
    max_new_tokens: int = Field(48, ge=1, le=4096)
    """SFT: longest generated response when scoring."""
    adversarial: AdversarialSpec | None = None
    """Adversarial training: each batch also trains on its word embeddings nudged against the model (FGM or PGD); empty trains on clean inputs only."""
    attack: AttackSpec | None = None
    """Classification: after training, attack test rows with word substitutions and report robust accuracy and the attack success rate beside clean accuracy; empty skips it."""
    register_suffix: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$")
    """The model is registered as `<name><suffix>`."""


def run(spec: FinetuneSpec, init: str, data: str, register_as: str, ctx: StageRun) -> str:
    """Fine-tune `init` on the labeled dataset and register the best checkpoint; returns `models:/<register_as>/<version>`."""
    task = labeled.card(data)["task"]
    train = classify.run if task == "classification" else sft.run
    return train(spec, init, data, register_as, ctx)


def trainer(spec: FinetuneSpec, init: str, data: str, ctx: StageRun) -> Trainer:
    """What each torchrun rank trains: the classification or SFT Trainer of the single-process path."""
    task = labeled.card(data)["task"]
    return (classify.trainer if task == "classification" else sft.trainer)(spec, init, data, ctx)

