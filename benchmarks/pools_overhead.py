"""Pools mode vs local mode, and checkpoint throughput to S3, on the stack `make stack` starts (here on free ports).

    .venv/bin/python benchmarks/pools_overhead.py [--repeat K] [--mb 64]

1. Dispatch overhead. The tiny preset of the tests (a 6-step char GPT-2 on 40 kB of CPython's docs: prepare,
   pretrain, evaluate, gate) runs `--repeat` times in each mode, alternating local and pools. Local: the embedded
   stack (ephemeral Prefect, SQLite MLflow) in a fresh home. Pools: every stage a deployment flow run on the stack's
   cpu/gpu process workers. Each run is a fresh MLflow experiment, so no stage is a cache hit. The whole command is
   timed; per-stage overhead = (pools - local) / stages, and the ratio pools/local is printed per pair. For the last
   pools run it prints where each stage's time went (Prefect's state history): dispatch → a worker takes it → its
   engine runs → it completes → the next stage is dispatched.
2. Checkpoint throughput. A checkpoint-shaped folder (one `--mb` MB safetensors-sized file of random bytes, plus the
   small files Trainer writes) is published to the stack's SeaweedFS with `storage.publish_dir` (upload, then the
   completion marker) and fetched back with `storage.fetch_dir`; the baseline is the same folder copied on local disk
   (shutil.copytree), measured in the same run. Prints MB/s and the ratio S3/local.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OFFLINE = {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
CLEARED = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "MULTISTEP_HOME", "MLFLOW_ARTIFACTS_DESTINATION")
STAGES = 4  # prepare, pretrain, evaluate, gate


def tiny(corpus: Path, experiment: str) -> list[str]:
    overrides = [
        "name=bench", f"data.sources=[{corpus}]", "data.tokenizer.kind=char", "data.block_size=32",
        "pretrain.model.n_layer=2", "pretrain.model.n_head=2", "pretrain.model.n_embd=32", "pretrain.model.n_positions=32",
        "pretrain.train.max_steps=6", "pretrain.train.batch_size=8", "pretrain.train.warmup_steps=2",
        "pretrain.train.checkpoint_every=3", "evaluate.max_blocks=16", f"execution.experiment={experiment}",
    ]  # fmt: skip
    return [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "configs/default.yaml",
        *sum((["--set", o] for o in overrides), []),
    ]


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"run failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def where_it_goes(team, since: float) -> None:
    """Per dispatched stage of the last pools run, from Prefect's state history: created → taken by a worker → engine
    running → completed, and completed → the next stage's flow run created (the dispatcher noticing, then dispatching)."""
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    from flows import stack

    with stack.environ(team.env), get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(sort=FlowRunSort.START_TIME_ASC) if r.created.timestamp() >= since]
        stages = [r for r in runs if " · " in r.name]
        stages.sort(key=lambda r: r.created)
        done_before = None
        for run in stages:
            at = {s.name: s.timestamp.timestamp() for s in client.read_flow_run_states(run.id)}
            created = run.created.timestamp()
            notice = f"{created - done_before:5.2f}" if done_before else "    -"
            print(f"  {run.name.split(' · ')[1]:9s} previous done → created {notice} s   created → taken "
                  f"{at['Pending'] - created:5.2f} s   taken → running {at['Running'] - at['Pending']:5.2f} s   "
                  f"running → completed {at['Completed'] - at['Running']:6.2f} s")  # fmt: skip
            done_before = at["Completed"]


def dispatch_overhead(team, corpus: Path, work: Path, repeat: int) -> None:
    base = {k: v for k, v in os.environ.items() if k not in CLEARED} | OFFLINE
    pairs = []
    for i in range(repeat):
        local_env = base | {"MULTISTEP_HOME": str(work / f"local{i}")}
        local = timed(tiny(corpus, f"bench-local-{i}"), local_env)
        pools_env = base | team.env | {"MULTISTEP_HOME": str(work / f"pools{i}")}
        since = time.time()
        pools = timed(tiny(corpus, f"bench-pools-{i}") + ["--set", "execution.mode=pools"], pools_env)
        pairs.append((local, pools))
        print(f"run {i + 1}: local {local:6.1f} s   pools {pools:6.1f} s   ratio {pools / local:.2f}   "
              f"per-stage overhead {(pools - local) / STAGES:5.1f} s")  # fmt: skip
    print("where the last pools run's time went, per stage:")
    where_it_goes(team, since)
    local, pools = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"dispatch: median local {local:.1f} s, pools {pools:.1f} s for {STAGES} stages: "
          f"ratio pools/local {statistics.median(p / loc for loc, p in pairs):.2f}, "
          f"per-stage overhead {(pools - local) / STAGES:.1f} s")  # fmt: skip


def checkpoint_folder(path: Path, mb: int) -> int:
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(os.urandom(mb << 20))
    for name, size in (
        ("optimizer.pt", 2 * mb << 20),
        ("scheduler.pt", 1 << 10),
        ("rng_state.pth", 16 << 10),
        ("trainer_state.json", 4 << 10),
    ):
        (path / name).write_bytes(os.urandom(size))
    return sum(p.stat().st_size for p in path.iterdir())


def throughput(team, work: Path, mb: int, repeat: int) -> None:
    from flows.stack import environ
    from tasks import storage

    src = work / "ckpt" / "checkpoint-100"
    size = checkpoint_folder(src, mb) / (1 << 20)
    rows = []
    with environ(team.env):
        for i in range(repeat):
            t0 = time.perf_counter()
            shutil.copytree(src, work / f"copy{i}")
            local = time.perf_counter() - t0
            uri = f"s3://multistep/bench/run{i}/checkpoints/checkpoint-100"
            t0 = time.perf_counter()
            storage.publish_dir(src, uri)
            up = time.perf_counter() - t0
            assert storage.list_complete(uri.rsplit("/", 1)[0]) == [uri]
            t0 = time.perf_counter()
            storage.fetch_dir(uri, work / f"fetched{i}")
            down = time.perf_counter() - t0
            rows.append((local, up, down))
            print(f"checkpoint {size:.0f} MB, round {i + 1}: local copy {size / local:7.0f} MB/s   "
                  f"S3 upload {size / up:6.0f} MB/s ({local / up:.2f}× local)   S3 download {size / down:6.0f} MB/s ({local / down:.2f}× local)")  # fmt: skip
    local, up, down = (statistics.median(r[k] for r in rows) for k in range(3))
    print(f"checkpoint: median upload {size / up:.0f} MB/s, download {size / down:.0f} MB/s to SeaweedFS on 127.0.0.1; "
          f"local disk copy {size / local:.0f} MB/s (ratios {local / up:.2f}, {local / down:.2f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--mb", type=int, default=64, help="size of the checkpoint's weights file; the optimizer state is twice that"
    )
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    from flows import deploy, stack

    work = Path(tempfile.mkdtemp(prefix="pools-bench-"))
    corpus = work / "corpus.txt"
    from pydoc_data.topics import topics

    corpus.write_text("\n\n".join(topics[n] for n in sorted(topics)[:12])[:40_000])
    team = stack.up(work / "stack", stack.free_ports(), workers=False)
    try:
        with stack.environ(team.env):
            deploy.register()
        team.start_worker("cpu", limit=4)
        team.start_worker("gpu", limit=1)
        team.wait_forkservers("worker-cpu", "worker-gpu")
        dispatch_overhead(team, corpus, work, args.repeat)
        throughput(team, work, args.mb, max(3, args.repeat))
    finally:
        stack.down(work / "stack")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
