"""Prefect's ephemeral API server for the embedded stack: started under a file lock, in a session of its own, and gone
when the process that started it is.

`python -m flows.embedded UVICORN_ARGS...` is that server's process: uvicorn, plus a thread that stops it once its
parent is gone (kill -9 of the CLI runs no clean-up, and the server would otherwise live on under PID 1).
"""

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PARENT_ENV = "MULTISTEP_SERVER_PARENT"
WATCH_S = 0.5  # how often the server looks for its parent; also how long it may outlive it
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

_server = []  # the SubprocessASGIServer this process started


def start_prefect_server() -> threading.Thread | None:
    """Start the server in the background, so that its few seconds of start-up overlap the heavy imports."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    # Imported here, not in the thread: two threads importing at once raced (MLflow's SQLAlchemy mappers met Prefect's
    # half-defined models; a half-initialised importlib_metadata). Only the server's start-up runs beside the imports.
    from filelock import FileLock
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings

    server = SubprocessASGIServer()  # the singleton the Prefect client would start later: it finds this one running
    server._run_uvicorn_command = functools.partial(_launch, server)
    _server.append(server)
    # Each server migrates the database under PREFECT_HOME as it starts; two first runs at once broke each other's migration.
    prefect_home = Path(get_current_settings().home)
    prefect_home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(prefect_home / "multistep-server-start.lock")

    # Prefect's 20 s default is short on a busy machine, and a server that missed it is started a second time.
    timeout = max(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value(), 120)

    def start() -> None:
        with lock:
            server.start(timeout=timeout)

    thread = threading.Thread(target=start, name="prefect-ephemeral-server", daemon=True)
    thread.start()
    return thread


def stop_prefect_server() -> None:
    """Stop the server this process started (Prefect would at exit; the CLI does it last, after its clean-up)."""
    for server in _server:
        server.stop()


def _launch(server) -> subprocess.Popen:
    """Prefect's own command for the server (SubprocessASGIServer._run_uvicorn_command), run through this module."""
    import prefect
    from prefect.settings import get_current_settings

    args = [
        "--app-dir", str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(server.port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
        PARENT_ENV: str(os.getpid()),
        "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    # A session of its own: Ctrl-C in a terminal signals the whole foreground process group, and the server must
    # outlive the CLI's clean-up, which still reports to it.
    return subprocess.Popen([sys.executable, "-m", "flows.embedded", *args], env=env, start_new_session=True)


def _stop_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful shutdown
    time.sleep(10)
    os._exit(1)  # it did not finish: nobody is left to wait for it


if __name__ == "__main__":
    threading.Thread(target=_stop_when_orphaned, args=(int(os.environ.pop(PARENT_ENV)),), daemon=True).start()
    from uvicorn.main import main

    sys.argv = ["uvicorn", *sys.argv[1:]]
    main()
