"""Local paths, `file://` and `s3://` URIs through boto3, atomic checkpoint publishing, path safety."""

import functools
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from tasks.errors import UserError

COMPLETE_MARKER = "_COMPLETE"
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken"}
_NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


def s3_endpoint() -> str | None:
    """The S3 endpoint from the Secret block or the environment, or None for AWS itself."""
    secret = _secret()
    if secret.get("endpoint_url"):
        return secret["endpoint_url"]
    # boto3 reads the first two on its own; MLflow's variable it does not, so pass all explicitly.
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def s3_client():
    """A boto3 S3 client for the current environment that fails fast when the endpoint is unreachable."""
    # boto3's default session resolves credentials once per process and then ignores the environment;
    # a fresh session per call costs ~80 ms, so keep one client per distinct setting instead.
    secret = _secret()
    keys = (secret.get("aws_access_key_id"), secret.get("aws_secret_access_key"), secret.get("aws_session_token"))
    return _client(s3_endpoint(), keys, tuple(os.environ.get(name) for name in _CLIENT_ENV))


_CLIENT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
               "AWS_DEFAULT_REGION", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")  # fmt: skip
SECRET_ENV = "MULTISTEP_S3_SECRET"


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, keys: tuple, _environment: tuple):
    # botocore's defaults (60 s connect timeout, several retries) make a typo in the endpoint look like a hang.
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2})
    access, secret, token = keys
    given = {"aws_access_key_id": access, "aws_secret_access_key": secret, "aws_session_token": token} if access else {}
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config, **given)


def _secret() -> dict:
    """S3 settings from the Prefect Secret block that $MULTISTEP_S3_SECRET names, or {} to use the environment."""
    name = os.environ.get(SECRET_ENV)
    return _load_secret(name) if name else {}


@functools.lru_cache(maxsize=4)
def _load_secret(name: str) -> dict:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name, _sync=True).get()
    except ValueError:
        raise UserError(
            f"Prefect Secret block {name!r} (execution.s3_secret) does not exist: create it with "
            "Secret(value={'aws_access_key_id': ..., 'aws_secret_access_key': ..., 'endpoint_url': ...}).save(name), or unset execution.s3_secret"
        ) from None
    keys = {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "endpoint_url"}
    if not isinstance(value, dict) or not {"aws_access_key_id", "aws_secret_access_key"} <= set(value) or set(value) - keys:
        raise UserError(
            f"Prefect Secret block {name!r} must hold JSON with aws_access_key_id and aws_secret_access_key "
            "(and optionally aws_session_token, endpoint_url): save it again in that form"
        )
    return value


def check_store(uri: str) -> None:
    """Fail with one sentence, before any work, when an S3 store cannot be reached or refuses these credentials."""
    if is_s3(uri):
        bucket, _ = split_s3(uri)
        with _s3_errors(uri):
            s3_client().head_bucket(Bucket=bucket)


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


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    if not is_s3(uri) or not uri[5:].split("/", 1)[0]:
        raise UserError(f"{uri!r} is not an S3 URI; write it as s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


@contextmanager
def _s3_errors(uri: str):
    """Turn boto3 failures into one sentence naming the URI and the fix (never the secrets)."""
    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as e:
        endpoint = e.kwargs.get("endpoint_url") or s3_endpoint() or "AWS"
        where = f"endpoint_url in Prefect Secret block {os.environ[SECRET_ENV]!r}" if _secret().get("endpoint_url") else "AWS_ENDPOINT_URL_S3"
        raise UserError(f"cannot reach the S3 endpoint {endpoint} for {uri}; start the server or set {where} to its address") from e
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise UserError(f"no S3 credentials for {uri}; set {_credentials_source()}") from e
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in _CREDENTIAL_CODES:
            raise UserError(
                f"S3 refused the credentials for {uri} ({code}); set {_credentials_source()} to a key with access"
            ) from e
        if code in _NOT_FOUND_CODES:
            raise UserError(f"{uri} not found ({code}); check the bucket and key") from e
        raise UserError(f"S3 request for {uri} failed ({code}); check the URI and the server") from e


def _credentials_source() -> str:
    if os.environ.get(SECRET_ENV):
        return f"the keys in Prefect Secret block {os.environ[SECRET_ENV]!r} (execution.s3_secret)"
    return "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


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
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    path = file_uri_to_path(uri)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{uri} not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{uri} is a folder, not a file; point at a file inside it") from None


def s3_etags(uri_prefix: str) -> dict[str, str]:
    """{object URI: ETag} for the object at the URI itself and everything below it as a folder."""
    bucket, key = split_s3(uri_prefix)
    folder = key if key.endswith("/") or not key else key + "/"
    found = {}
    with _s3_errors(uri_prefix):
        # A raw prefix `data` would also match `data2/...`; keep only the exact key and the folder below it.
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if (name == key or name.startswith(folder)) and not name.endswith("/"):
                    found[f"s3://{bucket}/{name}"] = obj["ETag"].strip('"')
    return dict(sorted(found.items()))


def list_s3(uri_prefix: str) -> list[str]:
    """Sorted URIs of all objects under an S3 "folder" (or the one object the URI names)."""
    return list(s3_etags(uri_prefix))


def s3_etag(uri: str) -> str:
    """The object's ETag: a cheap content digest that changes when the object is rewritten."""
    bucket, key = split_s3(uri)
    with _s3_errors(uri):
        return s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def safe_join(root, relative: str) -> Path:
    """root/relative, refusing absolute paths and `..` that would land outside root."""
    rel = PurePosixPath(str(relative).replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or re.match(r"^[A-Za-z]:", str(rel)):
        raise UserError(f"refusing path {relative!r}: it escapes {root}; use a relative path without '..'")
    joined = Path(root) / rel
    # A symlink already inside root could still point outside it.
    if not joined.resolve().is_relative_to(Path(root).resolve()):
        raise UserError(f"refusing path {relative!r}: it resolves outside {root}; remove the symlink or use another path")
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
    if is_s3(dest_uri):
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
    bucket, key = split_s3(dest_uri)
    prefix = key.rstrip("/") + "/"
    files = sorted(p for p in src.rglob("*") if p.is_file())
    new_keys = {prefix + p.relative_to(src).as_posix() for p in files}
    client = s3_client()
    with _s3_errors(dest_uri):
        # Drop the marker first: while files are being overwritten the old version must not look complete.
        client.delete_object(Bucket=bucket, Key=prefix + COMPLETE_MARKER)
        for path in files:
            client.upload_file(str(path), bucket, prefix + path.relative_to(src).as_posix())
        stale = [u for u in list_s3(f"s3://{bucket}/{prefix}") if split_s3(u)[1] not in new_keys]
        _delete_keys(client, bucket, [split_s3(u)[1] for u in stale])
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
    if is_s3(parent_uri):
        _, parent_key = split_s3(base + "/")
        for uri in list_s3(base + "/"):
            rel = split_s3(uri)[1][len(parent_key) :].split("/")
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
    if not is_s3(uri):
        path = file_uri_to_path(uri)
        if not path.is_dir():
            raise UserError(f"{uri} not found or not a folder; check the path")
        return path
    objects = [u for u in list_s3(uri) if not u.endswith("/" + COMPLETE_MARKER)]
    if not objects:
        raise UserError(f"{uri} not found (no objects under it); check the bucket and prefix")
    folder = uri.rstrip("/") + "/"
    bucket, key = split_s3(folder)
    final = Path(local_dir) / (PurePosixPath(key).name or bucket)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(final)
    client = s3_client()
    try:
        with _s3_errors(uri):
            for obj in objects:
                target = safe_join(tmp, obj[len(folder) :])  # keys are remote input: keep them inside tmp
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(*split_s3(obj), str(target))
        _swap_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def move_dir(uri: str, dest_uri: str) -> None:
    """Rename a local folder, or move everything under an S3 prefix (copies, then the old prefix goes marker first)."""
    if not is_s3(uri):
        os.replace(file_uri_to_path(uri), file_uri_to_path(dest_uri))
        return
    src_bucket, src_key = split_s3(uri.rstrip("/") + "/")
    dest_bucket, dest_key = split_s3(dest_uri.rstrip("/") + "/")
    client = s3_client()
    with _s3_errors(uri):
        for obj in list_s3(uri):
            key = split_s3(obj)[1]
            if key != src_key + COMPLETE_MARKER:  # a moved-aside folder never looks complete
                client.copy_object(Bucket=dest_bucket, Key=dest_key + key[len(src_key) :], CopySource={"Bucket": src_bucket, "Key": key})
    remove_dir(uri)


def remove_dir(uri: str) -> None:
    """Delete a local folder or everything under an S3 prefix; a missing one is not an error."""
    if not is_s3(uri):
        shutil.rmtree(file_uri_to_path(uri), ignore_errors=True)
        return
    bucket, key = split_s3(uri.rstrip("/") + "/")
    keys = [split_s3(u)[1] for u in list_s3(uri)]
    client = s3_client()
    with _s3_errors(uri):
        # The marker goes first and alone (a batch has no order), so a half-deleted folder never looks complete.
        client.delete_object(Bucket=bucket, Key=key + COMPLETE_MARKER)
        _delete_keys(client, bucket, [k for k in keys if k != key + COMPLETE_MARKER])
