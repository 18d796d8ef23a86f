"""`make ui`: Prefect's and MLflow's UIs on 127.0.0.1, reading the embedded stores under MULTISTEP_HOME (default
`.multistep`) to browse what ran. The browser test starts the same two servers, one at a time; `make stack` waits for its servers with the same `wait_http`."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from flows import embedded
from tasks import links
from tasks.errors import UserError


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    """Where its UI answers, e.g. http://127.0.0.1:5000."""
    health: str
    process: subprocess.Popen
    log: Path


def command(home: Path, name: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The command line of `prefect` or `mlflow` on the stores under `home`, and what it adds to the environment."""
    if name == "prefect":
        # The UI asks its API at PREFECT_UI_API_URL, which follows the port setting, not the --port flag.
        env = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
        return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env
    # One worker, not MLflow's four: one person browses, and each worker imports MLflow (~10 s of CPU) as it starts.
    return [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--default-artifact-root", str(home / "artifacts")], {}  # fmt: skip


def start(home: Path, name: str, port: int) -> Server:
    """Start one of the two (`prefect` or `mlflow`) on `port`, in a process group of its own, without waiting for it."""
    home = Path(home).resolve()
    if in_use(port):
        raise UserError(f"port {port} on 127.0.0.1 is taken: stop what listens there (another `make ui`?)")
    (home / "artifacts").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    cmd, extra = command(home, name, port)
    if name == "prefect":
        embedded.seed_database(home / "prefect")  # a fresh home's database, migrated already
    # The servers read the stores under `home`, not whatever servers this shell points at.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", **extra)
    log = home / "logs" / f"ui-{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    return Server(name, url, f"{url}/api/health" if name == "prefect" else f"{url}/health", proc, log)


def wait_http(url: str, name: str, alive, log_tail, timeout_s: float) -> None:
    """Return once `url` answers; fail with `log_tail()` when `alive()` turns false or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if not alive():
                raise RuntimeError(f"{name} exited while starting:\n{log_tail()}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s:\n{log_tail()}") from None
            time.sleep(0.3)  # poll interval, bounded by the deadline


def in_use(port: int) -> bool:
    """Whether something listens on `port` on 127.0.0.1."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(server: Server, timeout_s: float = 180) -> None:
    """Return once the server answers its health check; fail with its log if it exits or the deadline passes."""
    wait_http(
        server.health,
        server.name,
        lambda: server.process.poll() is None,
        lambda: server.log.read_text()[-2000:],
        timeout_s,
    )


def stop(*servers: Server, grace_s: float = 3) -> None:
    """SIGTERM each server's process group (uvicorn's workers, Prefect's services), then SIGKILL what lingers: MLflow's
    UI can take 10 s to answer SIGTERM, and neither holds anything that a kill would lose (SQLite commits are atomic)."""
    for server in servers:
        with suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for server in servers:
        with suppress(subprocess.TimeoutExpired):
            server.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        with suppress(ProcessLookupError):  # what the leader left behind in its group, or the leader itself
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


@contextmanager
def serve(home: Path, prefect_port: int = 4200, mlflow_port: int = 5000) -> Iterator[dict[str, Server]]:
    """Both servers, started side by side and ready; both stopped on exit."""
    started: dict[str, Server] = {}
    try:
        for name, port in (("prefect", prefect_port), ("mlflow", mlflow_port)):
            started[name] = start(home, name, port)
        for server in started.values():
            wait_ready(server)
        with embedded.recorded_ui(Path(home).resolve(), f"{started['prefect'].url}/api"):
            yield started
    finally:
        stop(*started.values())


def main() -> int:
    from tasks.backend import home

    print(
        f"Prefect UI: {links.LOCAL_PREFECT_UI}   MLflow UI (training view, runs and registry): "
        f"{links.LOCAL_MLFLOW_UI}/#/models?{links.TRAINING_MODE}   (Ctrl-C stops both)",
        flush=True,
    )
    # The servers run in sessions of their own, out of reach of the terminal's signals: whatever ends this process
    # (Ctrl-C, a closed terminal, kill) stops them on the way out. Set, not inherited: a shell's `&` ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    try:
        with serve(home()) as served:
            while all(s.process.poll() is None for s in served.values()):
                time.sleep(1)  # until Ctrl-C, or until one server exits on its own
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
