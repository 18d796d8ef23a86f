"""docker/compose.yaml is a valid Compose file with the team stack's topology, and it holds no secret.

Run: .venv/bin/pytest -q tests/test_docker.py
Validation only: `docker compose config` (or Debian's docker-compose, which reads the same file format) needs no
engine, so nothing is built or started.
"""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / ".env.example"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-test-password",
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
}
SERVICES = {"postgres", "prefect-server", "mlflow", "s3", "deploy", "cpu-worker", "gpu-worker"}
WORKERS = ("deploy", "cpu-worker", "gpu-worker")
# What the flows read (DESIGN.md §4): the names and values the rest of the system relies on.
WORKER_ENV = {
    "PREFECT_API_URL": "http://prefect-server:4200/api",
    "MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "MLFLOW_ARTIFACTS_DESTINATION": "s3://multistep/mlflow",
    "AWS_ENDPOINT_URL_S3": "http://s3:8333",
    "AWS_ACCESS_KEY_ID": SECRETS["AWS_ACCESS_KEY_ID"],
    "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
    "AWS_DEFAULT_REGION": "us-east-1",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    "MULTISTEP_HOME": "/var/lib/multistep",
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", re.IGNORECASE)


def _validator() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    if legacy := shutil.which("docker-compose"):
        return [legacy]
    pytest.fail(
        "no Compose validator: neither the docker compose plugin nor docker-compose is installed. "
        "Run `make install` (it installs Debian's docker-compose)."
    )


def _compose_config(secrets: dict[str, str]) -> subprocess.CompletedProcess:
    """`config` with docker/.env.example and `secrets` as the environment, none of the caller's own settings."""
    referenced = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    env = {k: v for k, v in os.environ.items() if k not in referenced and not k.startswith("COMPOSE_")}
    cmd = [*_validator(), "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config"]
    return subprocess.run(cmd, capture_output=True, text=True, env={**env, **secrets}, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def services() -> dict:
    result = _compose_config(SECRETS)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}{result.stdout}"
    return yaml.safe_load(result.stdout)["services"]


def _argv(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_config_passes_with_the_stack_services(services):
    assert set(services) == SERVICES


def test_workers_poll_the_cpu_and_gpu_process_pools(services):
    beside = ["python", "-m", "flows.forkserver", "beside"]  # the worker's flow runs fork from a server beside it
    for name, pool, limit in (("cpu-worker", "cpu", "4"), ("gpu-worker", "gpu", "1")):
        argv = _argv(services[name])
        assert argv[:4] == beside, f"{name}: {argv}"
        argv = argv[4:]
        assert argv[:3] == ["python", "-m", "flows.worker"], f"{name}: {argv}"  # a process worker (flows/worker.py)
        assert argv[argv.index("--pool") + 1] == pool
        assert argv[argv.index("--limit") + 1] == limit, f"{name} takes {limit} flow run(s) at a time"
    assert _argv(services["deploy"]) == ["multistep", "deploy"]
    assert services["deploy"].get("restart") in ("no", None)


def test_gpu_worker_reserves_an_nvidia_card(services):
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and d.get("capabilities") == ["gpu"] for d in devices), devices
    assert "Dockerfile.cuda" in services["gpu-worker"]["build"]["dockerfile"]
    assert services["cpu-worker"]["build"]["dockerfile"].endswith("docker/Dockerfile")
    assert "deploy" not in services["cpu-worker"], "the CPU worker reserves no device"


def test_workers_and_deploy_get_the_contract_environment(services):
    for name in WORKERS:
        env = _env(services[name])
        assert {k: env.get(k) for k in WORKER_ENV} == WORKER_ENV, name


def test_servers_use_postgres_and_mlflow_stores_artifacts_in_s3(services):
    prefect = _env(services["prefect-server"])
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    assert _argv(services["prefect-server"])[:3] == ["prefect", "server", "start"]

    mlflow = services["mlflow"]
    argv = _argv(mlflow)
    assert argv[:2] == ["mlflow", "server"]
    destination = argv[argv.index("--artifacts-destination") + 1]
    assert destination == WORKER_ENV["MLFLOW_ARTIFACTS_DESTINATION"] and destination.startswith("s3://")
    env = _env(mlflow)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert env["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow"), "MLflow has its own database"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:8333"
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRETS["AWS_SECRET_ACCESS_KEY"]
    assert "mlflow:5000" in argv[argv.index("--allowed-hosts") + 1], "workers reach MLflow as mlflow:5000"


def test_s3_is_seaweedfs_with_the_same_credentials(services):
    s3 = services["s3"]
    assert s3["image"].startswith("chrislusf/seaweedfs")
    script = " ".join(_argv(s3))
    assert "weed mini" in script or ("weed server" in script and "-s3" in script)
    for flag in ("-master.telemetry=false", "-s3.port=8333", "-s3.config="):
        assert flag in script
    assert {k: _env(s3).get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} == {
        k: SECRETS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }


def test_services_start_when_what_they_need_is_healthy(services):
    for name in ("postgres", "prefect-server", "mlflow", "s3"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"

    def conditions(name):
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("prefect-server") == {"postgres": "service_healthy"}
    assert conditions("mlflow")["postgres"] == "service_healthy"
    servers = {"prefect-server": "service_healthy", "mlflow": "service_healthy", "s3": "service_healthy"}
    assert conditions("deploy") == servers
    for name in ("cpu-worker", "gpu-worker"):
        assert conditions(name) == {**servers, "deploy": "service_completed_successfully"}


def test_no_secret_is_written_in_compose_yaml():
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, service in raw["services"].items():
        for key, value in _env(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{%s:\?[^}]+\}" % key, value), f"{name}.{key} must be ${{{key}:?...}}"
    # Passwords inside connection URLs are variables too.
    userinfos = re.findall(r"://([^@\n]+)@[\w.-]+:\d+/", COMPOSE.read_text())
    assert userinfos, "the database URLs carry credentials"
    for userinfo in userinfos:
        assert re.fullmatch(r"(\$\{[^}]+\}|[\w.-]+):\$\{\w+:\?[^}]+\}", userinfo), f"password in a URL: {userinfo}"
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert all(example[k] == "" for k in SECRETS), "docker/.env.example leaves the secrets to be filled in"


def test_a_missing_secret_stops_compose_with_its_name():
    result = _compose_config({})
    assert result.returncode != 0
    assert "in docker/.env" in result.stderr + result.stdout
