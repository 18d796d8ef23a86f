"""S3 through boto3: the client (endpoint and credentials from the environment or a Prefect Secret block), a store
check that fails fast, listing, ETags, folders' files moved in parallel, and boto3's failures turned into one sentence
that names the URI and the fix."""

import functools
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

# boto3 and botocore are imported where S3 is used: ~0.2 s of every stage process's start that never touches S3, and a
# GPU machine without boto3 (benchmarks/gpu.sh carries only what training needs) still trains.
from tasks.errors import UserError

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "InvalidToken",
    "ExpiredToken",
}
_NOT_FOUND_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}

MB = 1 << 20
# boto3's defaults (8 MB parts, and the project's loop sent files one after another) moved a checkpoint at 0.04× (up)
# and 0.14× (down) a local copy (issue 15). Several files in flight let the small files, the weights and the optimizer
# state overlap, and keep enough requests open for a server with many cores. 16 MB parts halve the requests per byte
# (SeaweedFS spends the same CPU per MB for 8-64 MB parts, so the size is chosen for remote S3) and reach 160 GB per
# file under S3's 10,000-part limit. (boto3's TransferConfig arguments.)
TRANSFER = {"multipart_threshold": 16 * MB, "multipart_chunksize": 16 * MB, "max_concurrency": 8, "use_threads": True}
FILE_WORKERS = 4  # files of one folder in flight at once; each moves up to max_concurrency parts at a time


def _transfer():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(**TRANSFER)


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
    # One pooled connection per request that upload_files/download_files can have in flight; a smaller pool makes
    # urllib3 drop and reopen connections.
    import boto3
    from botocore.config import Config

    pool = FILE_WORKERS * TRANSFER.get("max_concurrency", 10)  # boto3's default
    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}, max_pool_connections=pool)
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
    if (
        not isinstance(value, dict)
        or not {"aws_access_key_id", "aws_secret_access_key"} <= set(value)
        or set(value) - keys
    ):
        raise UserError(
            f"Prefect Secret block {name!r} must hold JSON with aws_access_key_id and aws_secret_access_key "
            "(and optionally aws_session_token, endpoint_url): save it again in that form"
        )
    return value


def check_store(uri: str) -> None:
    """Fail with one sentence, before any work, when an S3 store cannot be reached or refuses these credentials."""
    if is_s3(uri):
        bucket, _ = split_s3(uri)
        with errors(uri):
            s3_client().head_bucket(Bucket=bucket)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    if not is_s3(uri) or not uri[5:].split("/", 1)[0]:
        raise UserError(f"{uri!r} is not an S3 URI; write it as s3://bucket/key")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


@contextmanager
def errors(uri: str):
    """Turn boto3 failures into one sentence naming the URI and the fix (never the secrets)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    try:
        yield
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as e:
        endpoint = e.kwargs.get("endpoint_url") or s3_endpoint() or "AWS"
        where = (
            f"endpoint_url in Prefect Secret block {os.environ[SECRET_ENV]!r}"
            if _secret().get("endpoint_url")
            else "AWS_ENDPOINT_URL_S3"
        )
        raise UserError(
            f"cannot reach the S3 endpoint {endpoint} for {uri}; start the server or set {where} to its address"
        ) from e
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


def s3_etags(uri_prefix: str) -> dict[str, str]:
    """{object URI: ETag} for the object at the URI itself and everything below it as a folder."""
    bucket, key = split_s3(uri_prefix)
    folder = key if key.endswith("/") or not key else key + "/"
    found = {}
    with errors(uri_prefix):
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
    with errors(uri):
        return s3_client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def upload_files(files: Iterable[tuple[Path, str]]) -> None:
    """Upload (local file, s3 URI) pairs, several files at once and each in parts; the first failure is raised."""
    client = s3_client()
    # The biggest first, so the longest transfer starts at once and the small ones fill in beside it.
    ordered = sorted(files, key=lambda pair: -pair[0].stat().st_size)
    _each_in_parallel(lambda pair: client.upload_file(str(pair[0]), *split_s3(pair[1]), Config=_transfer()), ordered)


def download_files(objects: Iterable[tuple[str, Path]]) -> None:
    """Download (s3 URI, local file) pairs, several files at once and each in ranges; the first failure is raised."""
    client = s3_client()
    _each_in_parallel(lambda pair: client.download_file(*split_s3(pair[0]), str(pair[1]), Config=_transfer()), objects)


def _each_in_parallel(transfer: Callable, items: Iterable) -> None:
    """transfer(item) on FILE_WORKERS threads (boto3 clients are thread-safe); the first failure is raised here."""
    failed = threading.Event()

    def guarded(item) -> None:
        if failed.is_set():  # once one file failed the folder has failed: start no more
            return
        try:
            transfer(item)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=FILE_WORKERS, thread_name_prefix="s3-files") as pool:
        futures = [pool.submit(guarded, item) for item in items]
    for future in futures:
        future.result()  # re-raises in the caller's thread, inside its errors(uri)
