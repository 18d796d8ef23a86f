"""One torchrun rank: `python -m tasks.rank PAYLOAD.json`, which tasks/distributed.py launches on every device.

The rank builds the stage's Trainer with the stage module's own `trainer` (the single-process path's code), fits it, and
rank 0 writes the trained weights where the stage process loads them.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import mlflow
import torch
from safetensors.torch import save_file

from tasks.distributed import WEIGHTS
from tasks.finetune import stage as finetune
from tasks.finetune.spec import FinetuneSpec
from tasks.pretrain import stage as pretrain
from tasks.pretrain.spec import PretrainSpec
from tasks.tracking import StageRun
from tasks.train import fit

MODULES = {"pretrain": (pretrain, PretrainSpec), "finetune": (finetune, FinetuneSpec)}


def _trainer(stage: str, spec: dict, inputs: dict[str, str], ctx: StageRun):
    """The stage's spec and Trainer, from the same function the single-process path uses."""
    if stage not in MODULES:
        raise ValueError(f"no distributed training for stage {stage!r}")
    module, Spec = MODULES[stage]
    spec = Spec.model_validate(spec)
    return spec, module.trainer(spec, **inputs, ctx=ctx)


def main(path: str) -> None:
    """One torchrun rank: build the Trainer, fit it, and on rank 0 write the trained weights for the stage process."""
    payload = json.loads(Path(path).read_text())
    mlflow.set_tracking_uri(payload["tracking_uri"])
    ctx = StageRun(**payload["ctx"])
    spec, trainer = _trainer(payload["stage"], payload["spec"], payload["inputs"], ctx)
    fit(trainer, ctx, max(spec.train.keep_checkpoints, getattr(spec, "average_last", None) or 0))  # k to average
    # Every rank takes part (FSDP gathers the shards); rank 0 gets the whole state dict, keyed as the unwrapped model's.
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.is_world_process_zero():
        result = Path(payload["result"])
        tmp = result.with_name(result.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_unshared(state), tmp / WEIGHTS)
        os.replace(tmp, result)  # whole or absent
    trainer.accelerator.wait_for_everyone()


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with tied weights (one tensor under two names) copied apart: safetensors refuses shared memory."""
    seen, out = set(), {}
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous()
        if tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor.cpu()
    return out


if __name__ == "__main__":
    main(sys.argv[1])
    # Exit without running destructors: freeing DDP's reducer tears down the gloo process group while gloo's worker
    # thread waits for the GIL to drop a tensor, and a rank hung there for good (seen on torch 2.13, CPU).
    # Everything a rank leaves behind is written by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
