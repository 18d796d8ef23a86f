"""The fork server: a flow run's command gets a forked child with its own environment, cwd, fds and exit status; signals
reach the child; a killed command takes the child with it; without a usable server the engine runs the stock way."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What the server's children run instead of prefect.engine: says where it runs, then does what $FORKEE_DO says.
FORKEE = """
import json, os, signal, sys, time
if __name__ == "__main__":
    do = os.environ.get("FORKEE_DO", "exit 3").split()
    if do[0] == "wait":  # answers SIGTERM with exit status 7; set before it says it runs, or a test's signal can beat it
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    print(json.dumps({"ppid": os.getppid(), "cwd": os.getcwd(), "argv": sys.argv[1:], "colour": os.environ.get("COLOUR"),
                      "pgid": os.getpgid(0), "pid": os.getpid()}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if do[0] == "exit":
        sys.exit(int(do[1]))
    if do[0] == "wait":  # until SIGTERM
        while True:
            time.sleep(0.05)
"""

SERVE = """
import sys
import flows.forkserver as f
f.PRELOAD, f.ENGINE, f.SOURCE_ROOTS = ("forkee",), "forkee", (sys.argv[2],)
f.serve(sys.argv[1])
"""


@pytest.fixture
def server(tmp_path):
    """A fork server whose children run `forkee` (preloaded from tmp_path/lib); yields (socket, server process, lib)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "forkee.py").write_text(FORKEE)
    sock = tmp_path / "fs.sock"
    env = {**os.environ, "PYTHONPATH": f"{lib}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(sock), str(lib)], env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert "serving on" in proc.stdout.readline()  # it listens once it has imported what it preloads
    yield sock, proc, lib
    proc.kill()
    proc.wait()


def command(sock: Path, cwd: Path, *args: str, **env: str) -> subprocess.Popen:
    """The flow run's command as a process worker starts it."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "MULTISTEP_FORKSERVER": str(sock), "COLOUR": "teal", **env}
    return subprocess.Popen(
        [sys.executable, "-m", "flows.forkserver", *args], cwd=cwd, env=full, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def said(proc: subprocess.Popen) -> dict:
    return json.loads(proc.stdout.readline())


def gone(pid: int, within_s: float = 20) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def delivered(pid: int, sig: int, within_s: float = 20) -> bool:
    """Whether process `pid` has taken signal `sig` (no longer pending for it, /proc/<pid>/status), or is gone."""
    bit = 1 << (sig - 1)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True
        pending = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
        if not any(mask & bit for mask in pending):
            return True
        time.sleep(0.01)
    return False


def test_the_child_is_forked_from_the_server_with_the_commands_env_cwd_args_fds_and_exit_status(server, tmp_path):
    sock, proc, _ = server
    run = command(sock, tmp_path, "some-flow-run-id")
    out, err = run.communicate(timeout=60)
    child = json.loads(out.splitlines()[0])
    assert child["ppid"] == proc.pid  # forked by the server, not started by the command
    assert (child["cwd"], child["argv"], child["colour"]) == (str(tmp_path), ["some-flow-run-id"], "teal")
    assert child["pgid"] == child["pid"]  # a process group of its own, which the server can kill as a whole
    assert "to stderr" in err
    assert run.returncode == 3


def test_a_signal_to_the_command_reaches_the_child_and_its_exit_status_comes_back(server, tmp_path):
    sock, _, _ = server
    run = command(sock, tmp_path, FORKEE_DO="wait")
    said(run)
    run.send_signal(signal.SIGTERM)  # a worker cancelling the flow run
    assert run.wait(timeout=60) == 7


def test_a_signal_that_comes_before_the_server_names_the_child_is_relayed_once_it_does(tmp_path):
    """The child may run, and the worker cancel it, before the server's reply with its pid reaches the command: the
    command holds the signal until then (CI saw it die of SIGTERM instead, exit -15). A hand-made server replies only
    after the signal was sent."""
    import socket

    from flows.forkserver import HEADER

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "slow.sock"))
    listener.listen(1)
    run = command(tmp_path / "slow.sock", tmp_path)
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands for the forked child
    try:
        conn, _ = listener.accept()
        header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
        for fd in fds:
            os.close(fd)
        payload = b""
        while len(payload) < HEADER.unpack(header)[0]:
            payload += conn.recv(65536)
        run.send_signal(signal.SIGTERM)  # the command has asked; the server has not answered
        assert delivered(run.pid, signal.SIGTERM), "the command never took the SIGTERM"
        conn.sendall(json.dumps({"pid": engine.pid}).encode() + b"\n")
        assert engine.wait(timeout=30) == -signal.SIGTERM  # relayed once the pid was known
        conn.sendall(json.dumps({"status": 7}).encode() + b"\n")
        assert run.wait(timeout=30) == 7
    finally:
        engine.kill()
        run.kill()
        listener.close()


def test_a_killed_command_takes_its_child_with_it(server, tmp_path):
    sock, _, _ = server
    run = command(sock, tmp_path, FORKEE_DO="wait")
    child = said(run)["pid"]
    run.kill()  # SIGKILL: nothing can be relayed; the server sees the connection close
    run.wait(timeout=60)
    assert gone(child)


def test_without_a_server_the_command_runs_the_engine_itself(tmp_path):
    run = command(tmp_path / "nobody-listens.sock", tmp_path, PREFECT__FLOW_RUN_ID="not-a-uuid")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1
    assert "Invalid flow run id" in err  # prefect.engine's own message: the stock command ran


def test_edited_code_is_not_forked_stale_and_the_server_reloads_it(server, tmp_path):
    sock, proc, lib = server
    forkee = lib / "forkee.py"
    forkee.write_text(FORKEE.replace('"colour": os.environ.get("COLOUR")', '"colour": "edited"'))
    os.utime(forkee, (time.time() + 5, time.time() + 5))
    stale = command(sock, tmp_path, PREFECT__FLOW_RUN_ID="not-a-uuid")
    _, err = stale.communicate(timeout=120)
    assert "Invalid flow run id" in err  # refused as stale: the command ran prefect.engine the stock way
    assert "serving on" in proc.stdout.readline()  # the server re-executed itself and imported the new code
    fresh = command(sock, tmp_path)
    assert said(fresh)["colour"] == "edited"
    assert fresh.wait(timeout=60) == 3
