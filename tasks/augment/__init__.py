"""The augment stage: a labeled dataset URI (+ an unlabeled pool, + a teacher model) → a new dataset URI with more training rows.

Operations: EDA edits (`eda`), pseudo-labels from a teacher (`pseudo`), adversarial examples that flip a teacher
(`adversarial`). Every new row carries provenance (source row, operation, parameters, teacher and confidence);
validation and test are copied untouched. The body is `stage.run`.
"""

from typing import Literal

from pydantic import Field, model_validator

from tasks.augment.attack import AttackSpec
from tasks.augment.eda import EdaSpec
from tasks.augment.pseudo import PseudoLabelSpec
from tasks.spec import Spec


class AugmentSpec(Spec):
    eda: EdaSpec | None = None
    """Easy Data Augmentation: synonym replacement, random insertion, swap and deletion, `copies` new rows per training row; needs no model when WordNet is installed."""
    pseudo: PseudoLabelSpec | None = None
    """Pseudo-labels: a teacher labels an unlabeled pool and its confident rows join training; with `rounds` > 1 the student becomes the next teacher (self-training)."""
    adversarial: AttackSpec | None = None
    """Adversarial examples: training rows that a word-substitution attack makes the teacher misclassify, added with their true labels."""
    teacher: str | None = None
    """Classifier that labels the pool and is attacked (models:/name@alias, a folder); empty fine-tunes one on the labeled (and EDA) data first."""
    synonym_model: str | None = None
    """Model whose input embeddings give EDA's synonyms when WordNet is missing; empty takes the model fine-tuning starts from."""
    rounds: int = Field(1, ge=1, le=20)
    """Teacher → student rounds for pseudo-labels and adversarial examples: each round's student is fine-tuned from the same start and becomes the next teacher."""
    min_gain: float = Field(0.0, ge=0, le=1)
    """Self-training stops when a student's validation accuracy beats its teacher's by less than this (0: stop as soon as it is no better)."""
    max_length: int = Field(128, ge=8, le=4096)
    """Longest tokenized text the teacher sees when it labels or is attacked."""

    @model_validator(mode="after")
    def _something_to_do(self):
        if not (self.eda or self.pseudo or self.adversarial):
            raise ValueError("augment has no operation: set augment.eda, augment.pseudo or augment.adversarial, or set augment to null")
        return self

    @property
    def model_driven(self) -> bool:
        """Pseudo-labels and adversarial examples need a teacher; EDA alone does not."""
        return bool(self.pseudo or self.adversarial)

    @property
    def hardware(self) -> Literal["cpu", "gpu"]:
        """Where the stage belongs: a teacher's forward passes want a GPU, EDA's word edits a CPU."""
        return "gpu" if self.model_driven else "cpu"


from tasks.augment.stage import run  # noqa: E402  (the body needs AugmentSpec's module loaded first)

__all__ = ["AttackSpec", "AugmentSpec", "EdaSpec", "PseudoLabelSpec", "run"]
