"""The CLI's Prefect server: `make ui`'s when it serves the same home, else one the CLI starts and always stops."""

import json
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

import pytest

from flows import embedded, stack, ui


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_api():
    """A stand-in for a Prefect API that answers its health check: `http://127.0.0.1:<port>/api`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api", server
    server.shutdown()
    server.server_close()


def test_the_ui_record_names_the_server_only_while_it_answers_for_this_prefect_home(tmp_path, monkeypatch, health_api):
    api, server = health_api
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    assert embedded.ui_prefect(home) is None  # no `make ui` on this home
    with embedded.recorded_ui(home, api):
        assert json.loads((home / "ui.json").read_text())["prefect_api"] == api
        assert embedded.ui_prefect(home) == api
        monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "elsewhere"))
        assert embedded.ui_prefect(home) is None  # that server writes another database than this run would
        monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
        record = json.loads((home / "ui.json").read_text())
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (home / "ui.json").write_text(json.dumps(record | {"pid": int(gone.stdout)}))
        assert embedded.ui_prefect(home) is None  # left behind by a `make ui` that was killed
        (home / "ui.json").write_text(json.dumps(record))
        server.shutdown()
        server.server_close()
        assert embedded.ui_prefect(home) is None  # recorded, but no longer answering
    assert not (home / "ui.json").exists()  # `make ui` removes its record as it stops


def test_a_run_uses_the_prefect_server_make_ui_serves_and_starts_none(
    tmp_path, corpus, tiny_overrides, run_cli, processes_of
):
    # The `make ui` server reads the database under `served`; the record claims it for `home`: runs that reach that
    # database went through the server, and `home` gets no database of its own.
    served, home = tmp_path / "served", tmp_path / "home"
    home.mkdir()
    prefect = ui.start(served, "prefect", stack.free_ports().prefect)
    try:
        ui.wait_ready(prefect)
        with embedded.recorded_ui(home, f"{prefect.url}/api"):
            sets = sum((["--set", o] for o in tiny_overrides(corpus, steps=2)), [])
            # PREFECT_HOME as a user's CLI has it: under the home (the suite's own would not match the record)
            done = run_cli(["run", "configs/default.yaml", *sets, "--set", "evaluate=null"], home, PREFECT_HOME=None)
            assert done.returncode == 0, done.stderr[-3000:]
            assert processes_of(home) == []
        names = _flow_run_names(f"{prefect.url}/api")
    finally:
        ui.stop(prefect)
    assert sorted(n.split(" · ")[-1] for n in names if " · " in n) == ["gate", "prepare", "pretrain"]
    assert not (home / "prefect" / "prefect.db").exists()


def _flow_run_names(api: str) -> list[str]:
    import httpx

    response = httpx.post(f"{api}/flow_runs/filter", json={"limit": 50}, timeout=30)
    response.raise_for_status()
    return [run["name"] for run in response.json()]


def test_the_cli_stops_its_server_when_a_run_fails_inside_the_flow(
    tmp_path, corpus, tiny_overrides, run_cli, processes_of
):
    home, cache = tmp_path / "home", tmp_path / "cache"
    sets = sum((["--set", o] for o in [*tiny_overrides(corpus), "execution.mode=pools"]), [])
    # A user's home (its own Prefect database) and no templates yet: this server migrates and keeps one.
    done = run_cli(["run", "configs/default.yaml", *sets], home, PREFECT_HOME=None, MULTISTEP_CACHE=str(cache))
    # Said by the flow, so on the CLI's server, which names itself in PREFECT_API_URL yet has no workers.
    assert done.returncode == 2, done.stderr[-3000:]
    assert "set PREFECT_API_URL" in done.stderr.strip().splitlines()[-1]
    assert processes_of(home) == []  # stopped by the CLI itself: its orphan watch would take WATCH_S and more

    # The template was kept before the server wrote anything: this run's flow run is in the home's database only.
    template = cache / f"prefect-{version('prefect')}.db"
    count = "SELECT count(*) FROM flow_run"
    assert _rows(home / "prefect" / "prefect.db", count) == [(1,)] and _rows(template, count) == [(0,)]
    assert _rows(template, "SELECT count(*) FROM alembic_version") == [(1,)]


def _rows(db, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(sql).fetchall()


def test_the_cli_stops_its_server_on_an_input_error_before_the_flow(tmp_path, run_cli, processes_of):
    home = tmp_path / "home"
    done = run_cli(["run", "configs/default.yaml", "--set", "pretrain.train.max_stepz=3"], home)
    assert done.returncode == 2 and "max_steps" in done.stderr, done.stderr[-3000:]
    assert processes_of(home) == []


@pytest.mark.parametrize("asked, code", [(False, -9), (True, 0)])
def test_a_server_the_cli_never_waited_for_is_killed_at_once_and_one_it_used_stops_gracefully(monkeypatch, asked, code):
    # A stand-in server that takes SIGTERM as uvicorn does: it finishes what it does, then exits 0.
    graceful = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); print(flush=True); "
        "time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", graceful], stdout=subprocess.PIPE, text=True)
    process.stdout.readline()  # its handler is in place
    monkeypatch.setattr(embedded, "_started", [{"process": process, "port": 0, **({"asked": True} if asked else {})}])
    embedded.stop_prefect_server()
    assert process.returncode == code
