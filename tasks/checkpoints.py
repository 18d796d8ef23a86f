"""Which checkpoint a training stage resumes from: the newest complete one whose files load safely; newer ones that do
not load are quarantined (moved aside under another name), never loaded less safely and never retried.

What Trainer reads when it resumes, and how: model weights from safetensors (`model.safetensors`, shards, LoRA's
`adapter_model.safetensors`; a checkpoint with pickled weights instead is refused here, although Trainer would load
them with weights_only=True); optimizer, scheduler, scaler and RNG states (`optimizer.pt`, `scheduler.pt`, `scaler.pt`,
`rng_state*.pth`, and under FSDP `pytorch_model_fsdp*.bin`) through `torch.load(weights_only=True)`, which refuses
anything but tensors and plain containers; `trainer_state.json` as JSON. `training_args.bin` is a full pickle that
Trainer writes but never reads back, so it is not read here either.
"""

import json
import os
import re
import time
import warnings
from pathlib import Path

from tasks import storage

QUARANTINE = "quarantined-"  # not `checkpoint-…`: Trainer's rotation and list_complete must both pass it by
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
FSDP_WEIGHTS = "pytorch_model_fsdp"  # accelerate's FULL_STATE_DICT file (`.bin`), or a folder of shards
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
PICKLED = (".pt", ".pth", ".bin")
NEVER_READ = {"training_args.bin"}


def resume_point(dest: str, local_dir: str, stage: str, run_id: str) -> str | None:
    """A local folder of the newest complete checkpoint under `dest` that loads safely, or None to start from scratch.

    Each newer one that does not load is quarantined in the store and in `local_dir` and said once, in one line.
    """
    complete = storage.list_complete(dest)
    bad = []
    while complete:
        uri = complete.pop()
        path = storage.fetch_dir(uri, local_dir)
        problem = why_unusable(path)
        if problem is None:
            break
        bad.append((uri, problem, quarantine(uri, local_dir)))
    else:
        path = None
    then = f"resuming from {path.name} instead" if path else "training from scratch"
    for uri, problem, moved in bad:
        print(
            f"{stage}: {uri.rsplit('/', 1)[-1]} of run {run_id} cannot be loaded ({problem}); moved aside as {moved}, {then}"
        )
    return str(path) if path else None


def why_unusable(path: Path) -> str | None:
    """Why Trainer could not, or must not, resume from this folder; None when every file it reads loads safely."""
    problem = _weights_problem(path)
    if problem:
        return problem
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            _load(file)
        except Exception as exc:  # noqa: BLE001 - whatever the loader says, the checkpoint is unusable
            return f"{file.relative_to(path).as_posix()}: {_reason(exc)}"
    return None


def _weights_problem(path: Path) -> str | None:
    """Model weights must be safetensors (Trainer would also take a pickle, through weights_only=True); FSDP's are its own."""
    if any((path / name).is_file() for name in WEIGHTS) or any(p.name.startswith(FSDP_WEIGHTS) for p in path.iterdir()):
        return None
    pickled = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
    return (
        f"its model weights are a pickle ({', '.join(pickled)}), not safetensors"
        if pickled
        else "it holds no model weights"
    )


def _load(file: Path) -> None:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:  # the header, and that the data it describes is all there
            f.keys()
    elif file.suffix == ".json":
        json.loads(file.read_text(encoding="utf-8"))
    elif file.suffix in PICKLED and file.name not in NEVER_READ:
        import torch
        from transformers.trainer_pt_utils import safe_globals  # the numpy types Trainer allows for RNG states

        with warnings.catch_warnings(), safe_globals():
            warnings.simplefilter("ignore")  # torch warns about odd pickle protocols before refusing them
            try:  # mmap: the tensors are mapped, not read, so checking a large optimizer state costs little
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap can only be used" not in str(exc):
                    raise
                # an old-format file: loaded whole, just as safely
                torch.load(file, map_location="cpu", weights_only=True)


def _reason(exc: Exception) -> str:
    """A short cause; never torch's advice to load with weights_only=False."""
    text = str(exc)
    called = re.search(r"GLOBAL ([\w.]+)", text)
    if called:
        return f"it would call {called.group(1)} when unpickled, which is refused"
    if type(exc).__name__ == "UnpicklingError":
        return "it is not a state file that torch.save wrote, or it is damaged"
    first = text.strip().splitlines()[0][:160] if text.strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def quarantine(uri: str, local_dir: str) -> str:
    """Move a checkpoint aside in the store and in the local scratch folder; returns its new name."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    moved = f"{QUARANTINE}{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    storage.move_dir(uri, uri.rstrip("/").rsplit("/", 1)[0] + "/" + moved)
    local = Path(local_dir) / name  # Trainer's own copy, or the download of an S3 checkpoint
    if local.is_dir():
        os.replace(local, local.with_name(moved))
    return moved
