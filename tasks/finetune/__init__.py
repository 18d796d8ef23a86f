"""The finetune stage: classification or instruction SFT from any model URI, fully, with LoRA, or head-only."""

from types import ModuleType
from typing import TYPE_CHECKING

from tasks.data import labeled
from tasks.finetune.spec import FinetuneSpec
from tasks.tracking import StageRun

if TYPE_CHECKING:
    from transformers import Trainer

__all__ = ["FinetuneSpec", "body", "trainer"]


def body(data: str) -> ModuleType:
    """The module that fine-tunes for the dataset's task (`classify` or `sft`); its `run` registers the best checkpoint."""
    # Imported here: they pull in torch and transformers, which importing this package for its spec must not wait for.
    from tasks.finetune import classify, sft

    return classify if labeled.card(data)["task"] == "classification" else sft


def trainer(spec: FinetuneSpec, init: str, data: str, ctx: StageRun) -> "Trainer":
    """What each torchrun rank trains: the classification or SFT Trainer of the single-process path."""
    return body(data).trainer(spec, init, data, ctx)
