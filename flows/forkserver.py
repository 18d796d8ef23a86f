"""A fork server for process workers: a stage's flow run starts in about a second, not after re-importing its world.

A Prefect process worker starts every flow run as `python -m prefect.engine`, which imports Prefect, then the stage
imports MLflow, torch, transformers, datasets and peft: 6–13 s of CPU before the first line of work, paid again by each
stage (issue 15). The server imports all of that once, then forks one child per flow run; the child becomes the
engine process with the flow run's own environment, working directory and stdout/stderr, so every run still has a
process of its own that can die alone (a GPU stage's crash-safety).

    python -m flows.forkserver beside python -m flows.worker --pool gpu ...   # how `make stack` and compose start workers
    python -m flows.forkserver                # the flow run's command (deployments/prefect.yaml, job_variables)

`beside` starts `serve` on a socket in the background, exports its path as $MULTISTEP_FORKSERVER and becomes the
worker: server and worker are one process tree, which dies (or is stopped) as one.

The command connects to $MULTISTEP_FORKSERVER; with no server there (unset, not yet up, stale, dead) it becomes
`python -m prefect.engine` itself, as a stock worker would run it. The worker sees the command's process: signals it
gets go to the child, the child's exit status is its own, and if the command is killed outright the server kills
the child's process group, as killing the engine process would have.

Why hand-written: multiprocessing's forkserver serves Python callables to a pool, not a process with its own
environment, fds and exit status that another program (the worker) supervises.
"""

import json
import os
import signal
import socket
import struct
import sys
import time
from contextlib import suppress
from pathlib import Path

ENV = "MULTISTEP_FORKSERVER"  # the server's socket path, in the worker's environment
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# What a stage's process imports; the server imports it all before it listens (a failure is printed and skipped).
PRELOAD = (
    "prefect.engine", "prefect.flow_engine", "flows.stages", "flows.pipeline", "flows.retrain", "flows.evaluation",
    "flows.sweep", "flows.supervise", "mlflow", "torch", "transformers", "datasets", "peft", "tasks.data.prepare",
    "tasks.pretrain.stage", "tasks.evaluate.stage", "tasks.finetune.stage", "tasks.data.labeled.stage",
    "tasks.augment.stage", "tasks.gate.stage", "tasks.transfer.surgery",
)  # fmt: skip
ENGINE = "prefect.engine"  # the module a child runs as __main__
SOURCE_ROOTS = (str(PACKAGE_ROOT),)  # code under these, once edited, makes the server's imports stale
RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
HEADER = struct.Struct("!I")


# --- the flow run's command -------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """Run the flow run in a child of the server; without a usable server, exec the engine like a stock worker."""
    # Cancellation reaches the engine as the worker sent it; one sent before the server said the child's pid is held.
    child, held = [], []
    for sig in RELAYED:
        signal.signal(sig, lambda signum, _frame: _kill(child[0], signum) if child else held.append(signum))
    path = os.environ.get(ENV)
    conn = _connect(path) if path else None
    reader = conn.makefile("r") if conn else None
    reply = _request(conn, reader, argv) if conn else None
    if not reply or "pid" not in reply:
        if held:  # stopped before any engine ran: end as that signal would have ended the engine
            sys.exit(128 + held[0])
        os.execv(sys.executable, [sys.executable, "-m", ENGINE, *argv])  # (exec resets the handlers)
    child.append(pid := reply["pid"])
    for sig in held:
        _kill(pid, sig)
    line = reader.readline()
    if not line:  # the server died; the child lives on without it: wait for it, its exit status is lost
        while _alive(pid):
            time.sleep(1.0)
        sys.exit(1)
    sys.exit(json.loads(line)["status"])


def _connect(path: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        return conn
    except OSError:  # not up yet, or gone: the engine runs the slow way
        conn.close()
        return None


def _request(conn: socket.socket, reader, argv: list[str]) -> dict | None:
    payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    try:
        socket.send_fds(conn, [HEADER.pack(len(payload))], [0, 1, 2])
        conn.sendall(payload)
        line = reader.readline()
    except OSError:
        return None
    return json.loads(line) if line else None


def _kill(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def beside(command: list[str]) -> None:
    """Start a server in the background, then exec `command` (the worker) with its socket in the environment."""
    import subprocess

    path = socket_path(os.getpid())
    subprocess.Popen([sys.executable, "-m", "flows.forkserver", "serve", path], stdin=subprocess.DEVNULL)
    os.environ[ENV] = path
    # The flow runs' command says `python`: let it be this interpreter, with the project, whatever PATH said
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    os.execvp(command[0], command)


def socket_path(pid: int) -> str:
    """The socket of the server `beside` starts in process `pid` (short: a Unix socket's path has 107 bytes at most)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"multistep-forkserver-{pid}.sock")


# --- the server ---------------------------------------------------------------------------------------------------------


def serve(path: str) -> None:
    """Import what stages import, then fork a child per request until killed; re-exec itself when the code changed."""
    import importlib
    import selectors
    import traceback

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an optional extra missing: that stage imports it itself, the slow way
            print(f"forkserver: not preloaded: {name}\n{traceback.format_exc(limit=1)}", flush=True)
    sources = _sources()
    with suppress(FileNotFoundError, ProcessLookupError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    signal.signal(signal.SIGTERM, lambda *_: (os.unlink(path), os._exit(0)))  # stopped with its worker: leave no socket
    listener.listen(16)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake select; children are reaped below
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    children: dict[int, socket.socket] = {}
    print(f"forkserver: {len(sys.modules)} modules imported, serving on {path}", flush=True)
    while True:
        for key, _ in selector.select():
            if key.data == "wake":
                with suppress(BlockingIOError):
                    wake_r.recv(4096)
            elif key.data == "accept":
                conn, _ = listener.accept()
                if _sources() != sources:  # edited code: fork nothing stale; reload once no child needs us
                    _send(conn, {"stale": True})
                    conn.close()
                    if not children:
                        listener.close()
                        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # as it was started
                    continue
                inherited = [listener, wake_r, wake_w, selector, *children.values()]
                pid = _fork(conn, inherited)
                if pid:
                    children[pid] = conn
                    selector.register(conn, selectors.EVENT_READ, pid)
            else:  # the command's connection closed early: it was killed, so the engine dies as it would have
                with suppress(FileNotFoundError, ProcessLookupError):
                    os.killpg(key.data, signal.SIGKILL)
                selector.unregister(key.fileobj)
        _reap(children, selector)


def _fork(conn: socket.socket, inherited: list) -> int:
    """Fork the child for one request; returns its pid (0 when the request was unreadable)."""
    try:
        header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
        (size,) = HEADER.unpack(header)
        payload = b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                raise EOFError
            payload += chunk
        request = json.loads(payload)
    except (OSError, EOFError, ValueError, struct.error):
        conn.close()
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:  # out of memory or processes: this command falls back to the stock start, the server lives
        print(f"forkserver: cannot fork ({exc}); the flow run starts without the server", flush=True)
        for fd in fds:
            os.close(fd)
        conn.close()
        return 0
    if pid == 0:  # the child keeps none of the server's sockets: a dead server must look dead to its other commands
        signal.set_wakeup_fd(-1)
        for thing in (*inherited, conn):
            thing.close()
        _child(request, fds)
    for fd in fds:
        os.close(fd)
    print(f"forkserver: flow run {request['env'].get('PREFECT__FLOW_RUN_ID')} runs in process {pid}", flush=True)
    _send(conn, {"pid": pid})
    return pid


def _child(request: dict, fds: list[int]) -> None:
    """Become `python -m prefect.engine` for the request's flow run; never returns."""
    import runpy
    import traceback

    os.setsid()  # its own process group: the server can kill all it started, as the worker would have
    for sig in (signal.SIGCHLD, *RELAYED):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "prefect.context" in sys.modules:  # Prefect read its settings from the server's environment at import
        sys.modules["prefect.context"].refresh_global_settings_context()
    sys.argv = [ENGINE, *request["argv"]]
    code = 0
    try:
        runpy.run_module(ENGINE, run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if not isinstance(exit.code, int | None):
            print(exit.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    # Exit as Python would, minus tearing down the thousands of modules the server imported (seconds)
    from flows.supervise import exit_now

    exit_now(code)


def _reap(children: dict, selector) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        with suppress(KeyError, ValueError):
            selector.unregister(conn)
        _send(conn, {"status": code if code >= 0 else 128 - code})  # killed by signal N: 128 + N, like a shell
        conn.close()


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:  # the command is gone; the child is still reaped
        pass


def _sources() -> dict[str, float]:
    """The project's imported modules and their mtimes: what a fork would run as of now."""
    found = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and file.startswith(SOURCE_ROOTS) and "site-packages" not in file:
            with suppress(FileNotFoundError, ProcessLookupError):
                found[file] = os.stat(file).st_mtime
    return found


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    elif sys.argv[1:2] == ["beside"]:
        beside(sys.argv[2:])
    else:
        main(sys.argv[1:])
