"""Checkpoint transfer to S3 against a local copy: boto3's defaults with files one after another (the old way) and
the tuned TransferConfig with files in parallel (tasks/s3.py), on SeaweedFS's `weed mini` as `make stack` runs it.

    .venv/bin/python benchmarks/s3_transfer.py [--mb 90] [--repeat 3]

A checkpoint-shaped folder (`--mb` MB of weights in model.safetensors, twice that in optimizer.pt, and the small
files Trainer writes) is published with `storage.publish_dir` (files, then the `_COMPLETE` marker) and fetched back
with `storage.fetch_dir`, once with each setting per round (the order alternates). The baseline is shutil.copytree
of the same folder on local disk, timed in the same round. Every copy and download goes to a fresh folder that stays
until the end, so all three write as much new data to disk as the server does. Prints the ratios per round and their
median:  upload/local-copy: X  and  download/local-copy: Y  (higher is better; the goal of issue 15 is ≥ 0.3).
"""

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows import s3server, stack  # noqa: E402
from tasks import s3, storage  # noqa: E402

BUCKET = "bench"
SETTINGS = {"old": ({}, 1), "new": (s3.TRANSFER, s3.FILE_WORKERS)}  # (TransferConfig arguments, files at once)


def checkpoint_folder(path: Path, mb: int) -> int:
    """A folder shaped like a Trainer checkpoint of a model with `mb` MB of weights; returns its size in bytes."""
    path.mkdir(parents=True)
    sizes = {
        "model.safetensors": mb << 20, "optimizer.pt": 2 * mb << 20, "scheduler.pt": 1 << 10,
        "rng_state.pth": 16 << 10, "trainer_state.json": 4 << 10, "config.json": 1 << 10,
        "tokenizer.json": 700 << 10, "tokenizer_config.json": 1 << 10, "training_args.bin": 5 << 10,
    }  # fmt: skip
    for name, size in sizes.items():
        (path / name).write_bytes(os.urandom(size))
    return sum(sizes.values())


@contextmanager
def weed(root: Path):
    """`weed mini` on 127.0.0.1 and free ports, as tests/conftest.py starts it; yields (AWS_* variables, its pid)."""
    access_key, secret_key = "bench", secrets.token_hex(16)
    s3server.s3_identity(root / "s3.json", access_key, secret_key)
    ports = stack.free_ports()
    (root / "data").mkdir()
    cmd = s3server.weed_command(root / "data", root / "s3.json", ports.s3, ports.weed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{ports.s3}"
        client = s3server.client(endpoint, access_key, secret_key)
        s3server.wait_ready(client, lambda: proc.poll() is None, lambda: log.read_text()[-3000:], 60)
        s3server.ensure_bucket(client, BUCKET)
        yield {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
               "AWS_DEFAULT_REGION": "us-east-1"}, proc.pid  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for port in [ports.s3, *ports.weed.values()]:  # weed's gRPC sockets at fixed /tmp paths
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


@contextmanager
def settings(name: str):
    """tasks/s3.py with one of SETTINGS in place."""
    saved = s3.TRANSFER, s3.FILE_WORKERS
    s3.TRANSFER, s3.FILE_WORKERS = SETTINGS[name]
    try:
        yield
    finally:
        s3.TRANSFER, s3.FILE_WORKERS = saved


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(action, pid: int) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of action()."""
    cpu, t0 = cpu_seconds(pid), time.perf_counter()
    action()
    return time.perf_counter() - t0, cpu_seconds(pid) - cpu


def same_sizes(a: Path, b: Path) -> bool:
    return {p.name: p.stat().st_size for p in a.iterdir()} == {p.name: p.stat().st_size for p in b.iterdir()}


def one_round(i: int, src: Path, work: Path, pid: int, mb: float) -> dict[str, float]:
    """A local copy, then each setting's upload and download; returns the times in seconds."""
    t0 = time.perf_counter()
    shutil.copytree(src, work / f"copy{i}")
    out = {"local": time.perf_counter() - t0}
    parts = [f"round {i + 1}: local copy {mb / out['local']:5.0f} MB/s"]
    for name in sorted(SETTINGS, reverse=i % 2 == 1):  # alternate which goes first
        uri = f"s3://{BUCKET}/round{i}/{name}/checkpoint-100"
        with settings(name):
            up, up_cpu = timed(lambda: storage.publish_dir(src, uri), pid)
            fetched = work / f"fetched{i}-{name}"
            down, down_cpu = timed(lambda: storage.fetch_dir(uri, fetched), pid)
        if not same_sizes(src, fetched / "checkpoint-100"):
            sys.exit(f"{uri} came back different from {src}")
        out |= {f"{name} up": up, f"{name} down": down}
        parts.append(f"{name}: up {mb / up:4.0f} MB/s ({out['local'] / up:.2f}×, weed CPU {up_cpu:4.1f} s), "
                     f"down {mb / down:4.0f} MB/s ({out['local'] / down:.2f}×, weed CPU {down_cpu:4.1f} s)")  # fmt: skip
    print("   ".join(parts), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=90, help="MB of weights; optimizer.pt is twice that (default 270 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the ratios printed last are their medians")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3-transfer-bench-"))
    try:
        src = work / "checkpoint-100"
        mb = checkpoint_folder(src, args.mb) / (1 << 20)
        config = s3.TRANSFER
        print(f"checkpoint {mb:.0f} MB in {len(list(src.iterdir()))} files; new: {config['multipart_chunksize'] >> 20} MB "
              f"parts, {config['max_concurrency']} per file, {s3.FILE_WORKERS} files at once; old: boto3's defaults "
              f"(8 MB parts, 10 per file), one file at a time; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs", flush=True)  # fmt: skip
        (work / "weed").mkdir()
        with weed(work / "weed") as (env, pid), mock.patch.dict(os.environ, env):
            rounds = [one_round(i, src, work, pid, mb) for i in range(args.repeat)]
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        for name in ("old", "new"):
            for way, label in (("up", "upload"), ("down", "download")):
                ratio = statistics.median(r["local"] / r[f"{name} {way}"] for r in rounds)
                speed = statistics.median(mb / r[f"{name} {way}"] for r in rounds)
                suffix = "" if name == "new" else " (old settings)"
                print(f"{label}/local-copy: {ratio:.2f}{suffix}   [{speed:.0f} MB/s]")
        print(f"local copy: {statistics.median(mb / r['local'] for r in rounds):.0f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
