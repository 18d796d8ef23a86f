"""Checkpoint folders to and from S3: big files go in parts of the configured size, the files of a folder move side by
side, they come back byte for byte, and one failed file fails the folder in one sentence."""

import random
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tasks import s3, storage
from tasks.errors import UserError

MB = 1 << 20
SMALL = ("config.json", "scheduler.pt", "sub/rng_state.pth", "trainer_state.json")


@pytest.fixture
def five_mb_parts(monkeypatch):
    """5 MB parts (S3's smallest) instead of boto3's 8 MB default, so an 11 MB file is 3 parts only if the setting is used."""
    monkeypatch.setattr(s3, "TRANSFER", {"multipart_threshold": 5 * MB, "multipart_chunksize": 5 * MB})


@pytest.fixture
def on_call(s3_bucket):
    """on_call(operation, handler): handler(params) runs in the client's own thread before each such S3 call."""
    events = s3.s3_client().meta.events
    registered = []

    def register(operation: str, handler) -> None:
        name = f"before-parameter-build.s3.{operation}"
        events.register(name, lambda params, **_: handler(params), unique_id=f"test-{operation}")
        registered.append((name, f"test-{operation}"))

    yield register
    for name, unique_id in registered:  # the client is cached for the whole session
        events.unregister(name, unique_id=unique_id)


def _checkpoint(root: Path) -> dict[str, bytes]:
    rng = random.Random(0)
    files = {"model.safetensors": rng.randbytes(11 * MB), "optimizer.pt": rng.randbytes(6 * MB)}
    files |= {name: rng.randbytes(1000 + i) for i, name in enumerate(SMALL)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _meet(calls: int = 2):
    """A handler that holds the first `calls` small-file requests until all have started: it passes only when they
    run at the same time (one after another, the first waits out the timeout and the transfer fails)."""
    barrier, lock, arrived = threading.Barrier(calls, timeout=30), threading.Lock(), []

    def handler(params) -> None:
        if not params["Key"].endswith(tuple(SMALL)):
            return
        with lock:
            arrived.append(params["Key"])
            wait = len(arrived) <= calls
        if wait:
            barrier.wait()

    return handler


def test_big_files_go_up_and_down_in_parts_of_the_configured_size(s3_bucket, tmp_path, five_mb_parts, on_call):
    _checkpoint(tmp_path / "src")
    ranges = []
    on_call("GetObject", lambda params: ranges.append(params.get("Range")) if "model" in params["Key"] else None)

    uri = storage.publish_dir(tmp_path / "src", f"{s3_bucket}/run/checkpoint-3")
    etags = s3.s3_etags(uri)
    # A multipart object's ETag ends in -<parts>: 11 MB in 5 MB parts is 3 (boto3's default 8 MB would make 2).
    assert etags[f"{uri}/model.safetensors"].endswith("-3")
    assert etags[f"{uri}/optimizer.pt"].endswith("-2")
    assert "-" not in etags[f"{uri}/config.json"]

    storage.fetch_dir(uri, tmp_path / "scratch")
    assert sorted(ranges) == ["bytes=0-5242879", "bytes=10485760-", "bytes=5242880-10485759"]


def test_a_folder_moves_files_side_by_side_and_comes_back_byte_for_byte(s3_bucket, tmp_path, five_mb_parts, on_call):
    files = _checkpoint(tmp_path / "src")
    on_call("PutObject", _meet())
    on_call("GetObject", _meet())

    uri = storage.publish_dir(tmp_path / "src", f"{s3_bucket}/run/checkpoint-3")
    assert storage.list_complete(f"{s3_bucket}/run") == [uri]
    local = storage.fetch_dir(uri, tmp_path / "scratch")

    assert {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()} == files


def test_one_failed_file_fails_the_folder_in_one_sentence_and_leaves_nothing(s3_bucket, tmp_path, on_call):
    _checkpoint(tmp_path / "src")
    uri = storage.publish_dir(tmp_path / "src", f"{s3_bucket}/run/checkpoint-3")

    def gone(params) -> None:
        if params["Key"].endswith("trainer_state.json"):
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")

    on_call("GetObject", gone)
    with pytest.raises(UserError) as err:
        storage.fetch_dir(uri, tmp_path / "scratch")
    assert str(err.value) == f"{uri} not found (NoSuchKey); check the bucket and key"
    assert list((tmp_path / "scratch").iterdir()) == []  # no half-downloaded folder, no temporary one


def test_after_a_failure_no_further_file_starts(monkeypatch):
    monkeypatch.setattr(s3, "FILE_WORKERS", 1)
    started = []

    def transfer(item: str) -> None:
        started.append(item)
        if item == "b":
            raise OSError(f"disk full while writing {item}")

    with pytest.raises(OSError, match="disk full while writing b"):
        s3._each_in_parallel(transfer, ["a", "b", "c", "d"])
    assert started == ["a", "b"]
