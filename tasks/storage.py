"""Local paths, `file://` and `s3://` URIs (tasks/s3.py), atomic checkpoint publishing, path safety, and where the
artifact store of a run is read and written."""

import functools
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import mlflow

from tasks import s3
from tasks.errors import UserError

COMPLETE_MARKER = "_COMPLETE"


def direct(uri: str) -> str:
    """A URI this process reads and writes itself: a proxying MLflow server's `mlflow-artifacts:` URI becomes its S3 destination."""
    if not uri.startswith("mlflow-artifacts:"):
        return uri
    # The server stores `mlflow-artifacts:/<path>` at `<--artifacts-destination>/<path>`; MLflow's CLI reads the
    # same variable, so one setting serves the server and the workers.
    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION")
    if not destination:
        raise UserError(
            f"{uri} is proxied by the MLflow server, and checkpoints go straight to its store: set MLFLOW_ARTIFACTS_DESTINATION "
            "to the server's --artifacts-destination (e.g. s3://multistep/mlflow)"
        )
    return destination.rstrip("/") + "/" + urlparse(uri).path.lstrip("/")


def serve_artifacts_directly() -> None:
    """From now on this process reads and writes a proxying MLflow server's artifacts (`mlflow-artifacts:` URIs) in the
    server's S3 store itself, where the server would put them, whenever MLFLOW_ARTIFACTS_DESTINATION names that store,
    as its checkpoints are written; without the variable MLflow's own client goes through the server's proxy.

    Through the proxy every byte of a model crosses the MLflow server's Python on its way to S3 and back: ~14 ms of the
    server's CPU per MB, which a one-machine stack takes from training (issue 10: ~10 CPU s of a four-cell sweep). Runs,
    models and their URIs stay the same; the UI and users with MLflow access only still read through the proxy."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register("mlflow-artifacts", _artifact_repository)


def _artifact_repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """MLflow's repository for an `mlflow-artifacts:` URI: the S3 store itself, or the server's proxy (see above)."""
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    # `mlflow-artifacts://host:port/...` names a server of its own, whose store may be another: through it, then
    if urlparse(artifact_uri).netloc or not s3.is_s3(os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")):
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    return _direct_class()(direct(artifact_uri), tracking_uri=tracking_uri, registry_uri=registry_uri)


@functools.cache
def _direct_class() -> type:
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    class DirectArtifactRepository(S3ArtifactRepository):
        """MLflow's S3 repository with the project's client: a Secret block's credentials, fast failure, a pool."""

        def _get_s3_client(self):
            return s3.s3_client()

    return DirectArtifactRepository


def check_artifact_store(experiment_id: str) -> None:
    """An S3 artifact store that cannot be reached, or refuses the credentials, stops the stage before it opens a run."""
    location = mlflow.get_experiment(experiment_id).artifact_location
    if location.startswith("mlflow-artifacts:") and not os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"):
        return  # the server alone reaches its store; checkpoints will say what they need when they are written
    s3.check_store(direct(location))


def dataset_source(artifact_path: str) -> str:
    """Where a dataset artifact of the active run can be read, in a form `mlflow.data` knows (file, s3 or http)."""
    uri = mlflow.get_artifact_uri(artifact_path)
    if not uri.startswith("mlflow-artifacts:"):
        return uri
    if os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"):
        return direct(uri)
    # The server's artifact proxy serves the same object over plain HTTP.
    path = uri.split(":", 1)[1].lstrip("/")
    return f"{mlflow.get_tracking_uri().rstrip('/')}/api/2.0/mlflow-artifacts/artifacts/{path}"


def file_uri_to_path(uri: str) -> Path:
    """`file:///abs/path` (MLflow artifact URIs) -> Path; a plain path passes through."""
    if not uri.startswith("file:"):
        return Path(uri)
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise UserError(f"{uri} names another host; use file:///absolute/path or a plain path")
    return Path(url2pathname(unquote(parsed.path)))


def read_bytes(uri: str) -> bytes:
    """The whole content of a local file, `file://` URI or S3 object."""
    if s3.is_s3(uri):
        bucket, key = s3.split_s3(uri)
        with s3.errors(uri):
            return s3.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    path = file_uri_to_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{uri} not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{uri} is a folder, not a file; point at a file inside it") from None


def safe_join(root, relative: str) -> Path:
    """root/relative, refusing absolute paths and `..` that would land outside root."""
    rel = PurePosixPath(str(relative).replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", str(rel)):
        raise UserError(f"refusing path {relative!r}: it escapes {root}; use a relative path without '..'")
    joined = Path(root) / rel
    # A symlink already inside root could still point outside it.
    if not joined.resolve().is_relative_to(Path(root).resolve()):
        raise UserError(
            f"refusing path {relative!r}: it resolves outside {root}; remove the symlink or use another path"
        )
    return joined


def _temp_sibling(final: Path) -> Path:
    # Starts with '.', so it never matches `checkpoint-<int>` and list_complete never picks it.
    return final.with_name(f".tmp-{final.name}-{secrets.token_hex(4)}")


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished tree to its final name, replacing what was there."""
    old = None
    if final.exists():
        # rename() cannot replace a non-empty folder: move the old one aside first, delete it after.
        old = _temp_sibling(final)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_dir(local_dir, dest_uri: str) -> str:
    """Copy a folder to a local path or S3 so that readers see it whole or not at all; returns dest_uri."""
    src = Path(local_dir)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder; nothing to publish")
    if s3.is_s3(dest_uri):
        _publish_s3(src, dest_uri)
        return dest_uri
    final = file_uri_to_path(dest_uri)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    try:
        # Hard links make a local publish nearly free. The published files share inodes with the
        # source, which is safe because Trainer writes each checkpoint into a fresh folder.
        shutil.copytree(src, tmp, copy_function=os.link)
    except OSError:  # another filesystem, or links not allowed
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, copy_function=shutil.copy2)
    try:
        _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_uri


def _publish_s3(src: Path, dest_uri: str) -> None:
    bucket, key = s3.split_s3(dest_uri)
    prefix = key.rstrip("/") + "/"
    files = sorted(p for p in src.rglob("*") if p.is_file())
    new_keys = {prefix + p.relative_to(src).as_posix() for p in files}
    client = s3.s3_client()
    with s3.errors(dest_uri):
        # Drop the marker first: while files are being overwritten the old version must not look complete.
        client.delete_object(Bucket=bucket, Key=prefix + COMPLETE_MARKER)
        s3.upload_files((path, f"s3://{bucket}/{prefix}{path.relative_to(src).as_posix()}") for path in files)
        stale = [u for u in s3.list_s3(f"s3://{bucket}/{prefix}") if s3.split_s3(u)[1] not in new_keys]
        _delete_keys(client, bucket, [s3.split_s3(u)[1] for u in stale])
        client.put_object(Bucket=bucket, Key=prefix + COMPLETE_MARKER, Body=b"")


def _delete_keys(client, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # delete_objects takes at most 1000 keys
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})


def list_complete(parent_uri: str, prefix: str = "checkpoint-") -> list[str]:
    """URIs of complete `<prefix><int>` folders under a parent, by their number, oldest first."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)")
    base = parent_uri.rstrip("/")
    steps = []
    if s3.is_s3(parent_uri):
        _, parent_key = s3.split_s3(base + "/")
        for uri in s3.list_s3(base + "/"):
            rel = s3.split_s3(uri)[1][len(parent_key) :].split("/")
            if len(rel) == 2 and rel[1] == COMPLETE_MARKER and pattern.fullmatch(rel[0]):
                steps.append(rel[0])
    else:
        parent = file_uri_to_path(parent_uri)
        if parent.is_dir():
            steps = [p.name for p in parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]
    steps.sort(key=lambda name: int(pattern.fullmatch(name).group(1)))
    return [f"{base}/{name}" for name in steps]


def fetch_dir(uri: str, local_dir) -> Path:
    """A local path holding the folder: the path itself when local, else a download into local_dir/<name>."""
    if not s3.is_s3(uri):
        path = file_uri_to_path(uri)
        if not path.is_dir():
            raise UserError(f"{uri} not found or not a folder; check the path")
        return path
    objects = [u for u in s3.list_s3(uri) if not u.endswith("/" + COMPLETE_MARKER)]
    if not objects:
        raise UserError(f"{uri} not found (no objects under it); check the bucket and prefix")
    folder = uri.rstrip("/") + "/"
    bucket, key = s3.split_s3(folder)
    final = Path(local_dir) / (PurePosixPath(key).name or bucket)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    try:
        targets = [safe_join(tmp, obj[len(folder) :]) for obj in objects]  # keys are remote input: keep them inside tmp
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        with s3.errors(uri):
            s3.download_files(zip(objects, targets))
        _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def move_dir(uri: str, dest_uri: str) -> None:
    """Rename a local folder, or move everything under an S3 prefix (copies, then the old prefix goes marker first)."""
    if not s3.is_s3(uri):
        os.replace(file_uri_to_path(uri), file_uri_to_path(dest_uri))
        return
    src_bucket, src_key = s3.split_s3(uri.rstrip("/") + "/")
    dest_bucket, dest_key = s3.split_s3(dest_uri.rstrip("/") + "/")
    client = s3.s3_client()
    with s3.errors(uri):
        for obj in s3.list_s3(uri):
            key = s3.split_s3(obj)[1]
            if key != src_key + COMPLETE_MARKER:  # a moved-aside folder never looks complete
                client.copy_object(
                    Bucket=dest_bucket,
                    Key=dest_key + key[len(src_key) :],
                    CopySource={"Bucket": src_bucket, "Key": key},
                )
    remove_dir(uri)


def remove_dir(uri: str) -> None:
    """Delete a local folder or everything under an S3 prefix; a missing one is not an error."""
    if not s3.is_s3(uri):
        shutil.rmtree(file_uri_to_path(uri), ignore_errors=True)
        return
    bucket, key = s3.split_s3(uri.rstrip("/") + "/")
    keys = [s3.split_s3(u)[1] for u in s3.list_s3(uri)]
    client = s3.s3_client()
    with s3.errors(uri):
        # The marker goes first and alone (a batch has no order), so a half-deleted folder never looks complete.
        client.delete_object(Bucket=bucket, Key=key + COMPLETE_MARKER)
        _delete_keys(client, bucket, [k for k in keys if k != key + COMPLETE_MARKER])
