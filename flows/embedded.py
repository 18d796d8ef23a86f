"""The Prefect API server of the embedded stack: a process the CLI starts first thing, so that it boots while the CLI
imports, and that is gone when the CLI is. A server `make ui` serves on the same home is used instead (flows/ui.py
records it in <MULTISTEP_HOME>/ui.json).

This module imports nothing heavy: the CLI calls `launch` before it has imported Prefect. The CLI then finds its server
through PREFECT_API_URL, as it would a team's server, and MULTISTEP_LOCAL_PREFECT says that the server is a local one
(no workers, no crash detection).

`python -m flows.embedded PORT` is that server's process: uvicorn on Prefect's app, created under a file lock (two first
runs on one home migrated its database at once and broke each other), plus a thread that stops it once its parent is
gone (kill -9 of the CLI runs no clean-up, and the server would otherwise live on under PID 1).

A fresh home's Prefect database is a copy of a template (`seed_database`, tasks/dbtemplate.py): Prefect's migrations
take ~12 s of CPU on a new SQLite file, which the first server on a machine and Prefect version spends once.
"""

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tasks import dbtemplate

PARENT_ENV = "MULTISTEP_SERVER_PARENT"
LOCAL_ENV = "MULTISTEP_LOCAL_PREFECT"  # "embedded" or "ui": the CLI chose the server, it is not a team's
UI_RECORD = "ui.json"  # what `make ui` serves on a home, while it serves it
LOCAL_PREFECT_UI = "http://127.0.0.1:4200"  # where `make ui` serves Prefect's UI (tasks/links.py says the same)
WATCH_S = 0.5  # how often the server looks for its parent; also how long it may outlive it
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

_started: list[dict] = []  # the server process this CLI started: {"process": Popen, "port": int}


def launch(home: Path) -> str | None:
    """Before the heavy imports: use the server `make ui` serves on `home`, or start one; None when the environment names a
    server already. Returns what serves Prefect: "ui" or "embedded"."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    reused = ui_prefect(home)
    if reused:
        os.environ["PREFECT_API_URL"] = reused
        os.environ[LOCAL_ENV] = "ui"
        return "ui"
    # The links Prefect prints ("View at ...") go to the UI that shows this home afterwards, not to this short-lived server.
    os.environ.setdefault("PREFECT_UI_URL", LOCAL_PREFECT_UI)
    _start()
    atexit.register(stop_prefect_server)  # registered first, so it runs last: after Prefect has sent its last logs
    os.environ["PREFECT_API_URL"] = api_url(_started[-1]["port"])
    os.environ[LOCAL_ENV] = "embedded"
    return "embedded"


def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


@contextmanager
def recorded_ui(home: Path, prefect_api: str) -> Iterator[None]:
    """While `make ui` serves `home`: say so in <home>/ui.json, so that a CLI on this home uses its Prefect server
    instead of starting one (and writes to its database beside it)."""
    path = home / UI_RECORD
    record = {"pid": os.getpid(), "prefect_api": prefect_api, "prefect_home": str((home / "prefect").resolve())}
    path.write_text(json.dumps(record))
    try:
        yield
    finally:
        with suppress(FileNotFoundError, ValueError):
            if json.loads(path.read_text())["pid"] == os.getpid():  # not a later `make ui`'s
                path.unlink()


def ui_prefect(home: Path) -> str | None:
    """The Prefect API that `make ui` serves on `home`, if it runs and reads this CLI's Prefect database."""
    try:
        record = json.loads((home / UI_RECORD).read_text())
        os.kill(record["pid"], 0)  # a record left behind by a `make ui` that was killed -9
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if Path(record["prefect_home"]) != Path(os.environ.get("PREFECT_HOME", "")).resolve():
        return None  # PREFECT_HOME points elsewhere: that server's database is not the one this run should write to
    return record["prefect_api"] if _healthy(record["prefect_api"]) else None


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _start() -> None:
    # The CLI binds the port and hands the listening socket down: no other process can take it meanwhile, and requests
    # sent before the server is up wait in the socket's backlog.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        PARENT_ENV: str(os.getpid()),
        "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    # A session of its own: Ctrl-C in a terminal signals the whole foreground process group, and the server must
    # outlive the CLI's clean-up, which still reports to it.
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.embedded", str(sock.fileno())],
        env=env,
        pass_fds=[sock.fileno()],
        start_new_session=True,
    )
    _started.append({"process": process, "port": sock.getsockname()[1]})
    sock.close()


def ready() -> bool:
    """Whether the server this CLI uses answers now (one request, no waiting)."""
    return not _started or _healthy(api_url(_started[-1]["port"]))


def wait_ready(timeout_s: float = 120) -> None:
    """Return once the server this CLI started answers (Prefect's own 20 s is short on a busy machine)."""
    if not _started:
        return  # a server the environment named, or `make ui`'s
    server, deadline = _started[-1], time.monotonic() + timeout_s
    server["asked"] = True  # from here on this CLI may send it work: stop it gracefully
    while not _healthy(api_url(server["port"])):
        code = server["process"].poll()
        if code is not None:
            raise RuntimeError(
                f"the embedded Prefect server exited with code {code} while starting (its error is above)"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the embedded Prefect server did not answer within {timeout_s:.0f} s")
        time.sleep(0.05)  # poll interval, bounded by the deadline


def stop_prefect_server() -> None:
    """Stop the server this process started: SIGTERM (uvicorn's graceful shutdown), SIGKILL after 5 s; at once when this
    CLI never waited for it (an input error): it holds nothing of the run's, and uvicorn would end its start first."""
    for server in _started:
        process = server["process"]
        if process.poll() is None:
            if server.get("asked"):
                process.terminate()
            else:
                process.kill()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def seed_database(prefect_home: Path) -> bool:
    """Give a Prefect home without a database a copy of the migrated template (tasks/dbtemplate.py); False when there is
    no template yet, or the database is set elsewhere (PREFECT_API_DATABASE_CONNECTION_URL)."""
    if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        return False
    return dbtemplate.seed(Path(prefect_home) / "prefect.db", "prefect")


def _seed_or_migrate(prefect_home: Path) -> None:
    """The server's database, before the server starts: the template's copy, else migrated here (what the server's start
    would do) and kept as the template before the server has written anything of its own to it."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    db = prefect_home / "prefect.db"
    if PREFECT_API_DATABASE_CONNECTION_URL.value() != f"sqlite+aiosqlite:///{db}" or db.exists():
        return  # a database set elsewhere (a team's PostgreSQL, a profile), or the one this home has
    if seed_database(prefect_home):
        return
    import asyncio

    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())
    dbtemplate.keep(db, "prefect")


def _watch(parent: int, server, lock, done: threading.Event) -> None:
    while not (server.started or done.is_set()):
        time.sleep(0.05)
    lock.release()  # the database is migrated: another CLI's server may start
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful shutdown
    time.sleep(10)
    os._exit(1)  # it did not finish: nobody is left to wait for it


def _serve(fd: int) -> int:
    """The server's process: uvicorn on Prefect's app, on the socket the CLI bound."""
    import uvicorn
    from filelock import FileLock

    parent = int(os.environ.pop(PARENT_ENV))
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    prefect_home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(prefect_home / "multistep-server-start.lock", thread_local=False)
    lock.acquire()
    _seed_or_migrate(prefect_home)
    config = uvicorn.Config("prefect.server.api.server:create_app", factory=True, log_level="error", lifespan="on")
    server, done = uvicorn.Server(config), threading.Event()
    threading.Thread(target=_watch, args=(parent, server, lock, done), daemon=True).start()
    try:
        server.run(sockets=[socket.socket(fileno=fd)])
    finally:
        done.set()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1])))
