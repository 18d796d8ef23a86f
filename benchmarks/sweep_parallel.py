"""A 4-cell sweep in pools mode on two gpu workers against the same sweep in local mode: the wall time ratio pools/local.

    .venv/bin/python benchmarks/sweep_parallel.py [--steps 100] [--rows 500] [--threads N] [--repeat K]

The sweep: configs/sst2-minilm.yaml (package:minilm, full fine-tune) on `--rows` SST-2 training rows, `--steps` steps,
validation and test capped at 300 rows, two conditions (lr 5e-5 and 1e-4) × two fine-tune seeds = four cells, each
prepare-labeled → finetune → gate (report only). Local: `multistep sweep` with the embedded stack in a fresh home, the
cells one after another. Pools: the same command with execution.mode pools against the `make stack` topology on free
ports with two gpu process workers (pool limit 2, one flow run each) and a cpu worker, so two cells fine-tune at once.
Each run uses a fresh MLflow experiment: no stage is a cache hit from an earlier run. The whole command is timed.
Goal: pools/local ≤ 0.6. `--threads N` pins torch's threads (OMP_NUM_THREADS) in every process, workers included,
e.g. to half the cores so that two fine-tunes do not fight over them.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OFFLINE = {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
CLEARED = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "MULTISTEP_HOME", "MLFLOW_ARTIFACTS_DESTINATION")


def sweep_file(work: Path, steps: int, rows: int) -> Path:
    spec = {
        "name": "bench-sweep",
        "base": "configs/sst2-minilm.yaml",
        "overrides": {
            "labeled.max_train_rows": rows, "labeled.max_eval_rows": 300, "finetune.patience": None,
            "finetune.train.max_steps": steps, "finetune.train.checkpoint_every": max(1, steps // 2),
            "finetune.train.warmup_steps": steps // 10, "finetune.train.log_every": max(1, steps // 4),
        },
        "conditions": {"lr5e-5": {}, "lr1e-4": {"finetune.train.lr": 1.0e-4}},
        "seeds": [0, 1],
        "seed_fields": ["finetune.train.seed"],
    }  # fmt: skip
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def timed(path: Path, sets: list[str], env: dict) -> float:
    cmd = [sys.executable, "-m", "flows.cli", "sweep", str(path), *sum((["--set", s] for s in sets), [])]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"sweep failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="fine-tuning steps per cell")
    parser.add_argument("--rows", type=int, default=500, help="SST-2 training rows per cell")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS for every process (default: torch's own, one per core)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="pairs of runs, local then pools; the median ratio is reported"
    )
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else {}
    os.environ.update(threads)  # the stack's workers inherit this process's environment
    from flows import deploy, stack

    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    path = sweep_file(work, args.steps, args.rows)
    team = stack.up(work / "stack", stack.free_ports(), workers=False)
    try:
        with stack.environ(team.env):
            deploy.register()
            deploy.ensure_pools(gpus=2)
        team.start_worker("cpu", limit=4)
        team.start_worker("gpu", limit=1, name="worker-gpu-0")
        team.start_worker("gpu", limit=1, name="worker-gpu-1")
        team.wait_forkservers("worker-cpu", "worker-gpu-0", "worker-gpu-1")
        base = {k: v for k, v in os.environ.items() if k not in CLEARED} | OFFLINE | threads
        pairs = []
        for i in range(args.repeat):
            local = timed(
                path, [f"base.execution.experiment=bench-local-{i}"], base | {"MULTISTEP_HOME": str(work / f"local{i}")}
            )
            pools = timed(path, [f"base.execution.experiment=bench-pools-{i}", "base.execution.mode=pools"],
                          base | team.env | {"MULTISTEP_HOME": str(work / f"pools{i}")})  # fmt: skip
            pairs.append((local, pools))
            print(f"run {i + 1}: local {local:7.1f} s   pools {pools:7.1f} s   ratio {pools / local:.2f}", flush=True)
        ratio = statistics.median(p / loc for loc, p in pairs)
        local, pools = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        verdict = "meets" if ratio <= 0.6 else "misses"
        print(f"sweep_parallel: 4 cells, local {local:.1f} s, pools with two gpu workers {pools:.1f} s: ratio pools/local {ratio:.2f} "
              f"({verdict} the goal of <= 0.6)")  # fmt: skip
    finally:
        stack.down(work / "stack")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
