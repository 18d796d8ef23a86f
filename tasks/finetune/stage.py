"""The finetune stage's body: the dataset's task picks the module that fine-tunes (`classify`, `sft` or `reasoning`)."""

from types import ModuleType

from transformers import Trainer

from tasks.data import labeled
from tasks.finetune import classify, qa, reasoning, sft
from tasks.finetune.spec import FinetuneSpec
from tasks.tracking import StageRun


def body(data: str) -> ModuleType:
    """The module that fine-tunes for the dataset's task (`classify`, `sft`, `qa` or `reasoning`); its `run` registers the best checkpoint."""
    task = labeled.card(data)["task"]
    return {"classification": classify, "extractive-qa": qa, "math": reasoning}.get(task, sft)


def trainer(spec: FinetuneSpec, init: str, data: str, ctx: StageRun) -> Trainer:
    """What each torchrun rank trains: the classification or SFT Trainer of the single-process path."""
    return body(data).trainer(spec, init, data, ctx)
