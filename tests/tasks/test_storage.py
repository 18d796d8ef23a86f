"""Local and S3 storage: atomic checkpoint publishing, listing, fetching, path safety, clear S3 errors."""

import os
import socket
import time
from pathlib import Path

import pytest

from tasks import s3, storage
from tasks.errors import UserError


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _contents(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


CKPT = {"model.safetensors": "weights", "optimizer.pt": "adam", "sub/rng_state.pth": "rng"}


# ---- local -------------------------------------------------------------------------------------


def test_publish_and_list_complete_locally(tmp_path):
    src = _tree(tmp_path / "src", CKPT)
    parent = tmp_path / "store" / "checkpoints"
    for step in (10, 2, 1):
        storage.publish_dir(src, str(parent / f"checkpoint-{step}"))
    # Leftovers of a crashed publish and unrelated names are never listed.
    (parent / ".tmp-checkpoint-30-deadbeef").mkdir()
    (parent / "checkpoint-x").mkdir()
    (parent / "checkpoint-40").write_text("a file, not a folder")

    assert storage.list_complete(str(parent)) == [str(parent / f"checkpoint-{s}") for s in (1, 2, 10)]
    assert _contents(parent / "checkpoint-10") == CKPT
    assert storage.list_complete(str(tmp_path / "nothing-here")) == []


def test_publish_overwrites_whole_and_leaves_no_temporaries(tmp_path):
    dest = tmp_path / "store" / "checkpoint-5"
    storage.publish_dir(_tree(tmp_path / "a", CKPT), str(dest))
    storage.publish_dir(_tree(tmp_path / "b", {"model.safetensors": "new weights"}), str(dest))

    assert _contents(dest) == {"model.safetensors": "new weights"}
    assert [p.name for p in dest.parent.iterdir()] == ["checkpoint-5"]


def test_publish_is_a_copy_the_source_can_be_deleted(tmp_path):
    src = _tree(tmp_path / "src", CKPT)
    storage.publish_dir(src, str(tmp_path / "store" / "checkpoint-1"))
    for p in sorted(src.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    assert _contents(tmp_path / "store" / "checkpoint-1") == CKPT


def test_file_uris_round_trip(tmp_path):
    parent = f"file://{tmp_path}/store"
    storage.publish_dir(_tree(tmp_path / "src", CKPT), f"{parent}/checkpoint-3")

    assert storage.list_complete(parent) == [f"{parent}/checkpoint-3"]
    # Local checkpoints are used in place: no copy into local_dir.
    assert storage.fetch_dir(f"{parent}/checkpoint-3", tmp_path / "scratch") == tmp_path / "store" / "checkpoint-3"
    assert not (tmp_path / "scratch").exists()
    assert storage.file_uri_to_path("file:///a%20b/c") == Path("/a b/c")
    assert storage.read_bytes(f"file://{tmp_path}/src/optimizer.pt") == b"adam"

    storage.remove_dir(f"{parent}/checkpoint-3")
    assert storage.list_complete(parent) == []
    storage.remove_dir(f"{parent}/checkpoint-3")  # removing twice is fine


def test_missing_local_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        storage.read_bytes(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="not found or not a folder"):
        storage.fetch_dir(str(tmp_path / "checkpoint-1"), tmp_path)
    with pytest.raises(UserError, match="not a folder; nothing to publish"):
        storage.publish_dir(tmp_path / "missing", str(tmp_path / "out"))


@pytest.mark.parametrize("bad", ["../x", "a/../../b", "a/..", "/etc/passwd", "C:/Windows", "..\\x"])
def test_safe_join_refuses_escapes(tmp_path, bad):
    with pytest.raises(UserError, match="refusing path"):
        storage.safe_join(tmp_path, bad)


def test_safe_join_allows_relative_and_refuses_symlink_escape(tmp_path):
    assert storage.safe_join(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    os.symlink("/", tmp_path / "out")
    with pytest.raises(UserError, match="resolves outside"):
        storage.safe_join(tmp_path, "out/etc")


def test_endpoint_from_mlflow_variable(monkeypatch):
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert s3.s3_client().meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert s3.s3_client().meta.endpoint_url == "http://127.0.0.1:10"


def test_split_s3():
    assert s3.split_s3("s3://bucket/a/b.txt") == ("bucket", "a/b.txt")
    assert s3.split_s3("s3://bucket") == ("bucket", "")
    with pytest.raises(UserError, match="not an S3 URI"):
        s3.split_s3("s3:///key")


# ---- S3 ----------------------------------------------------------------------------------------


def test_s3_read_list_and_etag(s3_bucket):
    client = s3.s3_client()
    bucket = s3.split_s3(s3_bucket)[0]
    for key in ("data/a.txt", "data/sub/b.txt", "data2/c.txt", "data/"):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())

    assert storage.read_bytes(f"{s3_bucket}/data/a.txt") == b"data/a.txt"
    # A folder is what lies below `data/`: not `data2/`, not the folder marker object itself.
    assert s3.list_s3(f"{s3_bucket}/data") == [f"{s3_bucket}/data/a.txt", f"{s3_bucket}/data/sub/b.txt"]
    assert s3.list_s3(f"{s3_bucket}/data/a.txt") == [f"{s3_bucket}/data/a.txt"]

    before = s3.s3_etag(f"{s3_bucket}/data/a.txt")
    client.put_object(Bucket=bucket, Key="data/a.txt", Body=b"changed")
    assert s3.s3_etag(f"{s3_bucket}/data/a.txt") != before


def test_s3_publish_list_fetch_remove(s3_bucket, tmp_path):
    parent = f"{s3_bucket}/run/checkpoints"
    storage.publish_dir(_tree(tmp_path / "src", CKPT), f"{parent}/checkpoint-10")
    storage.publish_dir(_tree(tmp_path / "src2", {"model.safetensors": "w2"}), f"{parent}/checkpoint-2")
    # An upload that died before its marker: files present, never listed.
    bucket = s3.split_s3(s3_bucket)[0]
    s3.s3_client().put_object(Bucket=bucket, Key="run/checkpoints/checkpoint-30/model.safetensors", Body=b"torn")

    assert storage.list_complete(parent) == [f"{parent}/checkpoint-2", f"{parent}/checkpoint-10"]
    local = storage.fetch_dir(f"{parent}/checkpoint-10", tmp_path / "scratch")
    assert local == tmp_path / "scratch" / "checkpoint-10"
    assert _contents(local) == CKPT  # no _COMPLETE marker in the download

    storage.publish_dir(_tree(tmp_path / "src3", {"model.safetensors": "w3"}), f"{parent}/checkpoint-10")
    assert _contents(storage.fetch_dir(f"{parent}/checkpoint-10", tmp_path / "scratch")) == {"model.safetensors": "w3"}
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["checkpoint-10"]

    storage.remove_dir(f"{parent}/checkpoint-10")
    assert storage.list_complete(parent) == [f"{parent}/checkpoint-2"]
    assert s3.list_s3(f"{parent}/checkpoint-10") == []


def test_a_proxied_artifact_is_written_and_read_in_the_servers_store_without_the_server(
    s3_bucket, monkeypatch, tmp_path
):
    """With MLFLOW_ARTIFACTS_DESTINATION, `mlflow-artifacts:` URIs go to S3 where the server would store them (no MLflow
    server runs here: through the proxy this would fail); without it, MLflow's proxy client is used."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    storage.serve_artifacts_directly()
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", f"{s3_bucket}/mlflow")
    repo = get_artifact_repository("mlflow-artifacts:/7/models/m-1/artifacts", tracking_uri="http://127.0.0.1:9")
    repo.log_artifacts(str(_tree(tmp_path / "model", {"model.safetensors": "weights", "config.json": "{}"})))
    assert storage.read_bytes(f"{s3_bucket}/mlflow/7/models/m-1/artifacts/model.safetensors") == b"weights"
    assert sorted(f.path for f in repo.list_artifacts()) == ["config.json", "model.safetensors"]
    (tmp_path / "back").mkdir()
    assert _contents(Path(repo.download_artifacts("", str(tmp_path / "back")))) == {
        "model.safetensors": "weights",
        "config.json": "{}",
    }

    elsewhere = get_artifact_repository("mlflow-artifacts://other:5000/7/a", tracking_uri="http://127.0.0.1:9")
    assert isinstance(elsewhere, MlflowArtifactsRepository)  # another server's artifacts: its store may be another
    monkeypatch.delenv("MLFLOW_ARTIFACTS_DESTINATION")
    proxied = get_artifact_repository("mlflow-artifacts:/7/models/m-1/artifacts", tracking_uri="http://127.0.0.1:9")
    assert isinstance(proxied, MlflowArtifactsRepository)


def test_s3_not_found(s3_bucket):
    with pytest.raises(UserError, match=f"{s3_bucket}/nope.txt not found"):
        storage.read_bytes(f"{s3_bucket}/nope.txt")
    with pytest.raises(UserError, match="s3://no-such-bucket-here/x.txt not found"):
        storage.read_bytes("s3://no-such-bucket-here/x.txt")
    with pytest.raises(UserError, match="not found"):
        s3.s3_etag(f"{s3_bucket}/nope.txt")


def test_unreachable_endpoint_fails_fast_and_says_which(s3_bucket, monkeypatch):
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        start = time.monotonic()
        with pytest.raises(UserError) as err:
            storage.read_bytes(f"{s3_bucket}/a.txt")
    assert time.monotonic() - start < 10
    assert f"cannot reach the S3 endpoint {endpoint}" in str(err.value)
    assert "AWS_ENDPOINT_URL_S3" in str(err.value)


def test_wrong_credentials_say_which_variables_without_the_secret(s3_bucket, monkeypatch):
    s3.s3_client().put_object(Bucket=s3.split_s3(s3_bucket)[0], Key="a.txt", Body=b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(UserError) as err:
        storage.read_bytes(f"{s3_bucket}/a.txt")
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
    with pytest.raises(UserError, match="refused the credentials.*InvalidAccessKeyId"):
        s3.list_s3(s3_bucket)


def test_missing_credentials(s3_bucket, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    # No profile files and no instance metadata lookup: nothing else may supply credentials.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(UserError, match="no S3 credentials .*set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        storage.read_bytes(f"{s3_bucket}/a.txt")
