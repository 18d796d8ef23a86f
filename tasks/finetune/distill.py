"""Knowledge distillation from soft labels (Hinton et al. 2015): pseudo-labeled rows carry their teacher's logits, and
the student learns the teacher's whole distribution beside its hard label.

The augment stage stores the logits on each pseudo-labeled row and `distill` (temperature, alpha) in the dataset's card;
a training set whose card has it trains with `DistillTrainer`, which adversarial training wraps like any Trainer.
"""

import torch
import torch.nn.functional as F
from transformers import Trainer

from tasks.data import labeled

LOGITS, SOFT = "teacher_logits", "soft"  # batch keys: the teacher's logits, and which rows have them


def settings(data: str) -> dict | None:
    """{temperature, alpha} when the dataset's pseudo-labeled rows are to be distilled, else None."""
    return labeled.card(data).get("augment", {}).get("distill")


def loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher: torch.Tensor,
    soft: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Mean over the batch of (1 − α)·CE(label) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)) on rows where `soft`,
    CE alone elsewhere. T² keeps the soft term's gradients the size of the hard term's as T grows."""
    logits = logits.float()
    ce = F.cross_entropy(logits, labels, reduction="none")
    student = F.log_softmax(logits / temperature, dim=-1)
    target = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(student, target, log_target=True, reduction="none").sum(-1) * temperature**2
    return torch.where(soft.bool(), (1 - alpha) * ce + alpha * kl, ce).mean()


def attach(encoded, rows: list[dict], num_labels: int):
    """The training examples with each row's teacher logits (zeros and soft False where it has none, a gold row)."""
    encoded.encodings[LOGITS] = [r.get(LOGITS) or [0.0] * num_labels for r in rows]
    encoded.encodings[SOFT] = [bool(r.get(LOGITS)) for r in rows]
    return encoded


class Collator:
    """Pads like `base` and stacks the teacher logits beside the batch (the tokenizer's pad knows nothing of them)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features: list[dict]) -> dict:
        if LOGITS not in features[0]:  # validation and test
            return self.base(features)
        extra = {
            LOGITS: torch.tensor([f[LOGITS] for f in features], dtype=torch.float32),
            SOFT: torch.tensor([f[SOFT] for f in features], dtype=torch.bool),
        }
        batch = self.base([{k: v for k, v in f.items() if k not in extra} for f in features])
        batch.update(extra)
        return batch


def trainer_class(temperature: float, alpha: float) -> type[Trainer]:
    """A Trainer whose training loss is `loss` on batches that carry teacher logits; evaluation is the base's."""

    class DistillTrainer(Trainer):
        loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it for gradient accumulation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)  # the adversarial trainer passes the same inputs to several passes
            teacher, soft = inputs.pop(LOGITS, None), inputs.pop(SOFT, None)
            if teacher is None:  # validation and test rows carry no teacher
                return super().compute_loss(
                    model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
                )
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            value = loss(outputs.logits, labels, teacher, soft, temperature, alpha)
            return (value, outputs) if return_outputs else value

    return DistillTrainer
