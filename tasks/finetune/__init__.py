"""The finetune stage: classification or instruction SFT from any model URI, fully, with LoRA, or head-only."""

from typing import TYPE_CHECKING

from tasks.data import labeled
from tasks.finetune.spec import FinetuneSpec
from tasks.tracking import StageRun

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["FinetuneSpec", "run", "trainer"]


def run(spec: FinetuneSpec, init: str, data: str, register_as: str, ctx: StageRun) -> str:
    """Fine-tune `init` on the labeled dataset and register the best checkpoint; returns `models:/<register_as>/<version>`."""
    # Imported here: they pull in torch and transformers, which importing this package for its spec must not wait for.
    from tasks.finetune import classify, sft

    task = labeled.card(data)["task"]
    train = classify.run if task == "classification" else sft.run
    return train(spec, init, data, register_as, ctx)


def trainer(spec: FinetuneSpec, init: str, data: str, ctx: StageRun) -> "Trainer":
    """What each torchrun rank trains: the classification or SFT Trainer of the single-process path."""
    from tasks.finetune import classify, sft  # imported here, as in run

    task = labeled.card(data)["task"]
    return (classify.trainer if task == "classification" else sft.trainer)(spec, init, data, ctx)
