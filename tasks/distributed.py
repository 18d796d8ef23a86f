"""Training on several devices of one worker: the stage process launches torchrun, and every rank (tasks/rank.py) builds
the stage's Trainer with the same code as a single-process run, fits it (DDP, or FSDP), and rank 0 leaves the trained
weights behind.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import mlflow
import torch
from safetensors.torch import load_file

from tasks.errors import UserError
from tasks.spec import TrainSpec
from tasks.tracking import PACKAGE_ROOT, StageRun
from tasks.train import work_dir

WEIGHTS = "model.safetensors"


def check(spec: TrainSpec, stage: str) -> None:
    """Refuse, before anything loads, more devices than this worker has, or FSDP where there is no CUDA."""
    if spec.devices == 1:
        return
    if torch.cuda.is_available():
        found = torch.cuda.device_count()
        if spec.devices > found:
            raise UserError(
                f"{stage}.train.devices is {spec.devices} but this worker has {found} CUDA device(s): "
                f"set {stage}.train.devices to at most {found}, or run the stage on a worker with more GPUs."
            )
    # on CPU processes Trainer would quietly train DDP instead (accelerate has no CPU FSDP)
    elif spec.sharding == "fsdp":
        raise UserError(
            f"{stage}.train.sharding fsdp needs CUDA devices and this worker has none: "
            f"set {stage}.train.sharding to ddp (CPU processes with the gloo backend), or run the stage on a GPU worker."
        )


def launch(spec, inputs: dict[str, str], ctx: StageRun, model: torch.nn.Module) -> None:
    """Train on `spec.train.devices` processes with torchrun, then load the trained weights into `model`.

    `inputs` are the keyword arguments of the stage module's `trainer(spec, ..., ctx)`, which every rank calls.
    """
    devices = spec.train.devices
    work = Path(work_dir(ctx))
    result = work / "distributed"
    shutil.rmtree(result, ignore_errors=True)  # a result left by an earlier attempt must never be taken for this one's
    payload = work / "distributed.json"
    payload.write_text(json.dumps({
        "stage": ctx.stage, "spec": spec.model_dump(mode="json"), "inputs": inputs, "ctx": asdict(ctx),
        "tracking_uri": mlflow.get_tracking_uri(), "result": str(result),
    }))  # fmt: skip
    if not torch.cuda.is_available():
        print(f"{ctx.stage}: no CUDA device on this worker: {devices} processes train on the CPU (gloo backend)")
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",  # each rank's lines arrive as they are printed
        "TQDM_DISABLE": "1",  # progress bars redraw with \r, which a line-by-line log turns into one endless line
        "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    # torchrun would set 1 thread per rank and warn; on CPU the ranks share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    # The interpreter running this stage, so torchrun and the ranks are the ones of this environment.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
        "-m", "tasks.rank", str(payload),
    ]  # fmt: skip
    print(f"{ctx.stage}: launching python {' '.join(command[1:])}")
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env
    )
    try:
        for line in proc.stdout:  # to the stage's stdout, where Prefect's log_prints picks it up
            print(line.rstrip("\n"))
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the stage was interrupted: torchrun passes the signal on to the ranks
            proc.terminate()
            proc.wait()
    if code != 0 or not (result / WEIGHTS).is_file():
        # Not a UserError: a crashed rank is worth a re-dispatch, which resumes from the newest checkpoint.
        raise RuntimeError(
            f"{ctx.stage}: training on {devices} devices failed (torchrun exit {code}); "
            f"see the log above, or set {ctx.stage}.train.devices=1"
        )
    model.load_state_dict(load_file(result / WEIGHTS))
