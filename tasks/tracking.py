"""MLflow runs, stage keys and lineage: the tracking contract of DESIGN.md §3."""

import functools
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, SecretStr

from tasks import interrupt, lease, links
from tasks.backend import configure
from tasks.errors import UserError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
STAGE = "multistep.stage"
STAGE_KEY = "multistep.stage_key"
OUTPUT = "multistep.output"
DIGEST = "multistep.digest"
PIPELINE = "multistep.pipeline"
PREFECT_FLOW_RUN = "prefect.flow_run_id"
ROUND = "multistep.round"
REUSED = "multistep.reused."  # + stage[-round<n>]: on a pipeline run, the run id of a stage it took from the cache


def reused_tag(stage: str, round: int | None = None) -> str:
    """The pipeline run's tag naming the run a stage took from the cache: one per round, as the rounds' runs are named
    (a rounds loop can reuse every round's fine-tune, and each counts in a sweep's cost of a cell alone)."""
    return REUSED + (stage if round is None else f"{stage}-round{round}")


def reused_stage(tag: str) -> tuple[str, int] | None:
    """The stage and round (0 outside rounds) a `reused_tag` names; None for any other tag."""
    if not tag.startswith(REUSED):
        return None
    stage, _, round = tag.removeprefix(REUSED).partition("-round")
    return stage, int(round or 0)


@functools.cache
def git_commit() -> str:
    """The checkout's commit for lineage tags, or `unknown` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def public(spec: BaseModel) -> dict:
    """The spec as JSON data without its secrets (SecretStr fields), as it enters a stage key."""
    out = {}
    for name, value in spec:
        if isinstance(value, SecretStr):
            continue
        out[name] = public(value) if isinstance(value, BaseModel) else value
    return json.loads(json.dumps(out, default=str))


def digest(uri: str) -> str:
    """Content digest of a stage input given by URI (runs and versions are immutable once written)."""
    if uri.startswith("models:/"):
        mv = resolve_version(uri)
        return f"{mv.name}/{mv.version}:{mv.tags.get(DIGEST) or mv.run_id}"
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
        return MlflowClient().get_run(run_id).data.tags.get(DIGEST) or uri
    if uri.startswith("package:"):
        from tasks import model  # local import: model pulls in transformers

        return model.package_digest(uri)
    path = Path(uri.removeprefix("file://"))
    if path.exists():
        return content_digest(path)
    return uri  # hf: ids and the like: the id itself (revision pinning is the user's)


def content_digest(path: Path) -> str:
    """sha256 over a file's bytes, or a folder's relative paths and bytes: content, never mtimes."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def stage_key(
    stage: str, spec: BaseModel, inputs: dict[str, dict], params: dict[str, str] | None, code_version: str
) -> str:
    """sha256 of the stage name, its spec minus secrets, its inputs' URIs and digests, other parameters, and its code's version."""
    payload = {"stage": stage, "spec": public(spec), "inputs": inputs, "params": params or {}, "code": code_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def resolve_version(uri: str):
    """The ModelVersion behind `models:/name/version` or `models:/name@alias`, or a clear error."""
    client = MlflowClient()
    ref = uri.removeprefix("models:/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, version = ref.partition("/")
        return client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(
            f"Model {uri} is not in the registry ({exc.message.splitlines()[0]}): check the name and version with `mlflow ui`."
        ) from None


@dataclass
class StageRun:
    """The MLflow run of one stage execution: handed to the stage's body, which sets `output`; a cache hit has it already."""

    stage: str
    run_id: str
    key: str
    code_version: str
    inputs: dict[str, str]
    digests: dict[str, str]
    parent_run_id: str | None
    resumed: bool
    tags: dict[str, str] = field(default_factory=dict)
    output: str | None = None
    cached: bool = False

    @property
    def artifact_uri(self) -> str:
        return mlflow.get_run(self.run_id).info.artifact_uri

    def lineage(self) -> dict[str, str]:
        """Tags that every model version registered by this stage carries."""
        tags = {
            STAGE: self.stage,
            STAGE_KEY: self.key,
            "multistep.stage_run": self.run_id,
            "multistep.pipeline_run": self.parent_run_id or "",
            "multistep.code_version": self.code_version,
            "git.commit": git_commit(),
            PREFECT_FLOW_RUN: self.tags.get(PREFECT_FLOW_RUN, ""),
        }
        for name, uri in self.inputs.items():
            tags[f"multistep.input.{name}"] = uri
        return tags


def _find(experiment_id: str, key: str, finished: bool) -> list:
    status = "attributes.status = 'FINISHED'" if finished else "attributes.status != 'FINISHED'"
    return MlflowClient().search_runs(
        [experiment_id], f"tags.`{STAGE_KEY}` = '{key}' and {status}", order_by=["attributes.start_time DESC"]
    )


@contextmanager
def stage_run(
    stage: str,
    spec: BaseModel,
    inputs: dict[str, str],
    *,
    code: str,
    experiment: str,
    parent_run_id: str | None = None,
    digests: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    round: int | None = None,
) -> Iterator[StageRun]:
    """This stage's MLflow run: a finished run with the same key is reused (`cached`, `output` set), an unfinished one
    resumed, one that another live process is running waited for (tasks/lease.py).

    The body runs inside the `with` when `ctx.cached` is false and sets `ctx.output`, the URI the stage returns. `code` is
    the module the stage runs: its import closure's digest enters the key. `round` (self-training, rounds) names the run
    `<stage>-round<n>` and tags it; it is not part of the key, the inputs differ anyway.
    """
    from tasks import code as source
    from tasks import storage  # here: boto3 adds a quarter second to every import of this module

    interrupt.check(f"before {stage}")  # after Ctrl-C no new stage starts
    experiment_id = configure(experiment)
    storage.check_artifact_store(experiment_id)
    digests = digests or {name: digest(uri) for name, uri in inputs.items()}
    version = source.version(code)
    key = stage_key(stage, spec, {n: {"uri": inputs[n], "digest": digests[n]} for n in sorted(inputs)}, params, version)
    tags = {STAGE: stage, STAGE_KEY: key, **links.prefect_tags(), **({ROUND: str(round)} if round is not None else {})}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    # `<pipeline>/<stage>`: in the experiment's flat list of runs, the name says which pipeline a stage run belongs to
    pipeline = MlflowClient().get_run(parent_run_id).data.tags.get(PIPELINE) if parent_run_id else None
    run_name = (f"{pipeline}/" if pipeline else "") + (stage if round is None else f"{stage}-round{round}")
    taken = lease.take(
        stage,
        result=lambda: next((r for r in _find(experiment_id, key, finished=True) if r.data.tags.get(OUTPUT)), None),
        unfinished=lambda: _find(experiment_id, key, finished=False),
        create=lambda claim: (
            MlflowClient().create_run(experiment_id, run_name=run_name, tags={**tags, **claim}).info.run_id
        ),
    )
    if not isinstance(taken, lease.Lease):  # a finished run with this key: a cache hit
        output = taken.data.tags[OUTPUT]
        print(f"{stage}: cache hit, reusing run {taken.info.run_id} (stage key {key[:12]}) → {output}")
        if parent_run_id:
            MlflowClient().set_tag(parent_run_id, reused_tag(stage, round), taken.info.run_id)
        yield StageRun(
            stage,
            taken.info.run_id,
            key,
            version,
            dict(inputs),
            digests,
            parent_run_id,
            False,
            output=output,
            cached=True,
        )
        return
    held, run_id, resumed = taken, taken.run_id, not taken.created
    if resumed:
        print(f"{stage}: resuming unfinished run {run_id} (stage key {key[:12]})")
        for k, v in tags.items():
            MlflowClient().set_tag(run_id, k, v)
    ctx = StageRun(stage, run_id, key, version, dict(inputs), digests, parent_run_id, resumed=resumed, tags=tags)
    try:
        links.tag_flow_run(run_id)
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None), _killed_on_interrupt():
            for name, uri in inputs.items():
                mlflow.set_tag(f"multistep.input.{name}", uri)
            mlflow.log_params(flatten(public(spec)))
            yield ctx
            if not ctx.output:
                raise RuntimeError(f"{stage}: the stage body set no output URI")
            mlflow.set_tag(OUTPUT, ctx.output)
    finally:
        held.release()


@contextmanager
def _killed_on_interrupt() -> Iterator[None]:
    """Inside `mlflow.start_run`: an interrupted run ends KILLED, not FAILED (what the run's exit would record for any exception)."""
    try:
        yield
    except interrupt.Interrupted:
        # the innermost active run is the one this guards; a rerun resumes it as any unfinished run
        mlflow.end_run("KILLED")
        raise


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": str(v)[:500]})
    return out


@contextmanager
def pipeline_run(name: str, spec: BaseModel | None, experiment: str, parent_run_id: str | None = None) -> Iterator[str]:
    """The pipeline's own MLflow run, the parent of every stage run (nested under `parent_run_id` when given); yields its id."""
    experiment_id = configure(experiment)
    prefect = links.prefect_tags()
    tags = {PIPELINE: name, "git.commit": git_commit(), **prefect}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    # The Prefect run's name (one typed in the form, or `<name>-<time>`) names the MLflow run: the two lists match.
    run_name = prefect.get("prefect.flow_run_name") or f"{name}-pipeline"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run, _killed_on_interrupt():
        if spec is not None:
            mlflow.log_dict(public(spec), "spec.json")
        links.tag_flow_run(run.info.run_id)
        yield run.info.run_id


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log metrics to a run by id, so callbacks need no active-run state."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(
        run_id, metrics=[mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]
    )


def log_round(parent_run_id: str, round: int, metric: str, value: float, strategy: str, model: str) -> None:
    """One point of the loop's progression on the pipeline run: the round's validation score and what it tried."""
    log_metrics(parent_run_id, {f"round_{metric}": value}, step=round)
    MlflowClient().set_tag(parent_run_id, f"multistep.round.{round}", f"{strategy} → {model}")
