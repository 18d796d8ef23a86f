"""`make stack` / `make stack-down`: the team topology of docker/compose.yaml on one machine, on 127.0.0.1, without Docker.

Prefect server, MLflow server (artifacts proxied to S3), SeaweedFS's S3 (`weed mini`), a cpu worker and a gpu worker.
Each runs in its own process group; `down` stops exactly the groups `up` recorded in <root>/pids.json.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flows import embedded, forkserver, s3server
from flows.ui import in_use, wait_http
from tasks import links
from tasks.errors import UserError, env_seconds
from tasks.tracking import PACKAGE_ROOT

BUCKET = "multistep"
BIN = Path(sys.executable).parent


def worker_poll_s() -> float:
    """Seconds between a worker's asks for runs, each ~25 ms of Prefect's CPU (0.5 s starved training, benchmarks/README)."""
    return env_seconds("MULTISTEP_WORKER_POLL_S", 1.0)


@dataclass
class Ports:
    prefect: int = 4200
    mlflow: int = 5000
    s3: int = 8333
    weed: dict[str, int] = field(default_factory=lambda: dict(s3server.PORTS))


def free_ports() -> Ports:
    """Ports free on 127.0.0.1 now (tests run a stack beside whatever else the machine runs)."""
    socks = []

    def pick(offset: int = 0) -> int:
        for _ in range(200):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if offset:
                if port + offset > 65535:
                    s.close()
                    continue
                try:
                    t = socket.socket()
                    t.bind(("127.0.0.1", port + offset))
                    socks.append(t)
                except OSError:
                    s.close()
                    continue
            socks.append(s)
            return port
        raise RuntimeError("no free port on 127.0.0.1")

    try:
        weed = {name: pick(offset=10000 if name == "admin" else 0) for name in s3server.PORTS}
        return Ports(prefect=pick(), mlflow=pick(), s3=pick(), weed=weed)
    finally:
        for s in socks:
            s.close()


@dataclass
class Stack:
    root: Path
    ports: Ports
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        """What a client or worker of this stack needs in its environment."""
        return {
            "PREFECT_API_URL": f"http://127.0.0.1:{self.ports.prefect}/api",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.ports.mlflow}",
            "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{BUCKET}/mlflow",
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{self.ports.s3}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.ports.s3}",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start one service in its own process group, log to <root>/logs/<name>.log, record its pid."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        full = {**_quiet_env(), **os.environ, **self.env, **(env or {})}
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=full, cwd=PACKAGE_ROOT, start_new_session=True
            )
        pids = _read_pids(self.root)
        pids[name] = proc.pid
        (self.root / "pids.json").write_text(json.dumps(pids))
        return proc

    def start_worker(
        self, pool: str, limit: int, name: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """A process worker for `pool`; its flow runs send heartbeats, so a run that dies with it is marked Crashed."""
        name = name or f"worker-{pool}"
        env = {
            **(env or {}),
            "MULTISTEP_HOME": str(self.root / name),  # scratch; checkpoints live in S3, not here
            "MULTISTEP_ROOT": str(PACKAGE_ROOT),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # Prefect's minimum
            "PREFECT_WORKER_QUERY_SECONDS": str(worker_poll_s()),
        }
        # Flow runs fork from a server beside it (flows/forkserver.py); the worker skips polls while full (flows/worker.py)
        cmd = [sys.executable, "-m", "flows.forkserver", "beside", sys.executable, "-m", "flows.worker",
               "--pool", pool, "--limit", str(limit), "--name", name, "--no-create-pool-if-not-found",
               "--install-policy", "never"]  # fmt: skip
        return self.start(name, cmd, env)

    def wait_forkservers(self, *workers: str, timeout_s: float = 300) -> None:
        """Until each worker's fork server listens (it imports torch and the stages first): then no stage starts slow."""
        deadline = time.monotonic() + timeout_s
        for name in workers:
            # `beside` names the socket after its pid, which became the worker's: an earlier worker's line won't do
            said = f"serving on {forkserver.socket_path(_read_pids(self.root)[name])}"
            while said not in (self.root / "logs" / f"{name}.log").read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the fork server beside {name} did not start:\n{_log_tail(self, name)}")
                time.sleep(0.2)


def _quiet_env() -> dict[str, str]:
    return {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def up(
    root: Path, ports: Ports | None = None, workers: bool = True, crash_after_s: int = 90, timeout_s: float = 180
) -> Stack:
    """Start S3, MLflow and Prefect servers, make the pools and the crash automation, then the workers; returns the stack."""
    root = Path(root).resolve()
    worker_poll_s()  # a setting that is no number is said before anything starts
    if any(_alive(pid) for pid in _read_pids(root).values()):
        raise UserError(f"a stack is already running from {root}: stop it with `make stack-down` first")
    ports = ports or Ports()
    busy = [p for p in (ports.prefect, ports.mlflow, ports.s3) if in_use(p)]
    if busy:
        raise UserError(
            f"ports {busy} on 127.0.0.1 are taken: stop what listens there (another stack? `make stack-down`)"
        )
    (root / "s3").mkdir(parents=True, exist_ok=True)
    (root / "pids.json").write_text("{}")
    stack = Stack(root, ports, "multistep", secrets.token_hex(16))
    s3server.s3_identity(root / "s3.json", stack.access_key, stack.secret_key)
    try:
        stack.start("s3", s3server.weed_command(root / "s3", root / "s3.json", ports.s3, ports.weed))
        embedded.seed_database(root / "prefect")  # a fresh stack's database, migrated already
        stack.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports.prefect)],
                    {"PREFECT_HOME": str(root / "prefect")})  # fmt: skip
        s3 = s3server.client(stack.env["AWS_ENDPOINT_URL_S3"], stack.access_key, stack.secret_key)
        s3server.wait_ready(s3, lambda: _alive(_read_pids(root)["s3"]), lambda: _log_tail(stack, "s3"), timeout_s)
        s3server.ensure_bucket(s3, BUCKET)
        stack.start("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports.mlflow), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", stack.env["MLFLOW_ARTIFACTS_DESTINATION"]])  # fmt: skip
        for name, path in (("prefect-server", f"{ports.prefect}/api/health"), ("mlflow", f"{ports.mlflow}/health")):
            alive, tail = (lambda n=name: _alive(_read_pids(stack.root)[n])), (lambda n=name: _log_tail(stack, n))
            wait_http(f"http://127.0.0.1:{path}", name, alive, tail, timeout_s)
        _write_env(stack)
        with environ(stack.env):
            from flows import deploy

            deploy.ensure_pools()
            deploy.ensure_crash_detection(crash_after_s)
        if workers:
            stack.start_worker("cpu", limit=4)
            stack.start_worker("gpu", limit=1)
    except BaseException:
        down(root)
        raise
    return stack


def down(root: Path) -> list[str]:
    """SIGTERM every process group `up` started (SIGKILL what lingers); returns the names stopped."""
    import psutil

    root = Path(root).resolve()
    pids = _read_pids(root)
    # Flow runs a worker started live in sessions of their own: stop them with their worker.
    children = []
    for pid in pids.values():
        with suppress(psutil.NoSuchProcess):
            children += psutil.Process(pid).children(recursive=True)
    for pid in pids.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + 8  # a server mid-request may take a moment; past that, SIGKILL
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids.values():
        _signal(pid, signal.SIGKILL)
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.kill()
    if (root / "pids.json").exists():
        (root / "pids.json").write_text("{}")
    return sorted(pids)


def kill(stack: Stack, name: str) -> None:
    """SIGKILL one service and every process it started, as a machine dying would (tests use it on a worker)."""
    import psutil

    pid = _read_pids(stack.root)[name]
    # A process worker starts each flow run in a session of its own, so the process group alone would miss it.
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(tree, timeout=10)


def _signal(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _read_pids(root: Path) -> dict[str, int]:
    path = Path(root) / "pids.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _log_tail(stack: Stack, name: str) -> str:
    path = stack.root / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


def _write_env(stack: Stack) -> None:
    """<root>/env: `set -a; . .multistep/stack/env` points a shell at the stack (it holds the S3 key: mode 0600)."""
    path = stack.root / "env"
    path.write_text("".join(f"{k}={v}\n" for k, v in stack.env.items()))
    path.chmod(0o600)
    (stack.root / "stack.json").write_text(json.dumps({"ports": asdict(stack.ports)}))


@contextmanager
def environ(env: dict[str, str]):
    """This process pointed at a stack: its variables set, and Prefect's client too (Prefect reads its settings once,
    so a changed PREFECT_API_URL alone would not reach a client in a process that already used Prefect)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str]) -> int:
    from tasks.backend import home

    root = home() / "stack"
    if argv[:1] == ["down"]:
        stopped = down(root)
        print(f"stack: stopped {', '.join(stopped) or 'nothing (no stack recorded in ' + str(root) + ')'}")
        return 0
    stack = up(root)
    print(
        f"stack: up from {root} (logs in {root / 'logs'})\n"
        f"  Prefect UI  http://127.0.0.1:{stack.ports.prefect}\n"
        f"  MLflow UI   http://127.0.0.1:{stack.ports.mlflow}/#/models?{links.TRAINING_MODE} (training view: runs, registry)\n"
        f"  S3          http://127.0.0.1:{stack.ports.s3} (bucket {BUCKET}; key in {root / 'env'})\n"
        f"  workers     cpu (4 at once), gpu (1 at once)\n"
        f"next: make deploy, then `set -a; . {root / 'env'}; set +a` and\n"
        f"      multistep run configs/default.yaml --set execution.mode=pools   (or trigger llm-pipeline/default in the Prefect UI)"
    )
    return 0
