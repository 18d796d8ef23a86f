"""How the pipeline runs a stage flow: in-process (`local`), or as a deployment on the stage's work pool (`pools`).

Either way a stage that failed for an unexpected reason, or whose process died, runs again a bounded number of times and
resumes from its checkpoint in the artifact store; an input error (UserError) is final.
"""

import json
import os
import time

from prefect import Flow
from pydantic import BaseModel

from flows import run_ends, shared, slots
from flows.embedded import LOCAL_ENV
from flows.stages import OUTPUT_KEY, STAGES
from tasks import interrupt
from tasks.errors import UserError
from tasks.s3 import SECRET_ENV, check_store

# run_deployment's own wait polls every 5 s, which would add 2.5 s to every stage on average. Each poll costs the Prefect
# server CPU, which on a one-machine stack is taken from training: interrupt.poll_s's pace, at most every 2 s.
POLL_MAX_S = 2.0


def call(stage: Flow, execution, parent_run_id: str | None, **params) -> str:
    """Run a stage flow where `execution` (the spec's ExecutionSpec) says, its MLflow run under the pipeline's `parent_run_id`;
    again after an unexpected failure, never after an input error. In a sweep, cells that dispatch the same stage with
    the same settings and inputs share one flow run (flows/shared.py)."""
    params |= {"experiment": execution.experiment, "parent_run_id": parent_run_id}
    name = run_name(stage.name, params.get("round"))
    if execution.mode == "local":
        return _again(stage.name, execution, lambda: stage.with_options(flow_run_name=lambda: name)(**params))
    dispatched = lambda: _again(stage.name, execution, lambda: _remote(stage, execution, params, name))  # noqa: E731
    sharing = shared.current()
    if sharing is None:
        uri, run = dispatched()
    else:
        (uri, run), mine = sharing.once(_identity(stage.name, execution, params), dispatched)
        if not mine and not _reused(stage.name, uri, run, params):
            uri, run = dispatched()
    return _linked(uri, run)


def _again(stage: str, execution, attempt):
    """`attempt()`, and again (execution.stage_retries times) after an unexpected failure; an input error is final."""
    for tried in range(execution.stage_retries + 1):
        try:
            return attempt()
        except UserError:
            raise
        except Exception as exc:
            if tried == execution.stage_retries:
                raise
            print(f"{stage}: attempt {tried + 1} failed ({type(exc).__name__}: {exc}); running it again")
    raise AssertionError("unreachable")


def _identity(stage: str, execution, params: dict) -> str:
    """What makes two dispatches the same stage run: the deployment and every parameter but the pipeline run's id."""
    pool = getattr(execution.pools, pool_of(stage, params))
    same = {k: v for k, v in _parameters(params).items() if k != "parent_run_id"}
    return json.dumps([deployment_name(stage, pool), same], sort_keys=True, default=str)


def _reused(stage: str, uri: str, run, params: dict) -> bool:
    """Record the stage run that made `uri` (the flow run `run` of another cell) as a cache hit of this pipeline run;
    False when it is gone from MLflow (deleted meanwhile), and this cell must dispatch the stage itself."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from tasks.tracking import OUTPUT, reused_tag

    if "'" in uri:  # not a URI a stage writes; the search could not quote it
        return False
    experiment = mlflow.get_experiment_by_name(params["experiment"])
    found = experiment and MlflowClient().search_runs(
        [experiment.experiment_id], f"tags.`{OUTPUT}` = '{uri}' and attributes.status = 'FINISHED'", max_results=1
    )
    if not found:
        return False
    print(
        f"{stage}: cache hit, reusing run {found[0].info.run_id} of flow run {run.name}, dispatched by another cell → {uri}"
    )
    if params["parent_run_id"]:
        MlflowClient().set_tag(params["parent_run_id"], reused_tag(stage, params.get("round")), found[0].info.run_id)
    return True


def run_name(stage: str, round: int | None) -> str:
    """`<pipeline run> · <stage>`: in Prefect's list of runs a stage run says which pipeline run it belongs to."""
    from prefect.runtime import flow_run

    return f"{flow_run.name or 'pipeline'} · {stage}" + (f"-round{round}" if round is not None else "")


class StageCrashed(RuntimeError):
    """A dispatched stage run ended Crashed, Failed or timed out: worth dispatching again."""


def pool_of(stage: str, params: dict) -> str:
    """`cpu` or `gpu`: the hardware a stage flow call needs (the stage table's, or its spec's when the table says `spec`)."""
    hardware = STAGES[stage].hardware
    return params["spec"].hardware if hardware == "spec" else hardware


def deployment_name(stage: str, pool: str) -> str:
    """`<flow>/<deployment>` of a stage's deployment on a pool: `pretrain/pretrain-on-gpu`, `augment/augment-on-cpu`, ...

    (Prefect's list of deployments shows the deployment's own name first: it says which stage runs where.)"""
    return f"{stage}/{stage}-on-{pool}"


def _parameters(params: dict) -> dict:
    """The flow run's parameters, as JSON: specs as their dumps."""
    return {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in params.items()}


def _remote(stage: Flow, execution, params: dict, run_name: str):
    """Dispatch the stage to its pool and wait for it: `(its output URI, its final flow run)`."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    interrupt.check(f"before {stage.name}")  # locally stage_run checks; here no new stage is dispatched after Ctrl-C
    pool = getattr(execution.pools, pool_of(stage.name, params))
    name = deployment_name(stage.name, pool)
    timeout = execution.stage_timeouts.get(stage.name, execution.stage_timeout_s)
    # The Secret block's name travels as the flow run's environment, never its value and never a flow parameter.
    env = {SECRET_ENV: execution.s3_secret} if execution.s3_secret else {}
    parameters = _parameters(params)
    with get_client(sync_client=True) as client:
        with slots.slot(pool):  # held until the run is final
            run = run_deployment(
                name,
                parameters=parameters,
                timeout=0,
                flow_run_name=run_name,
                job_variables={"env": env} if env else None,
            )
            print(f"{stage.name}: dispatched flow run {run.name} ({run.id}) to work pool {pool}")
            run = _wait(client, run, pool, execution.start_timeout_s, timeout, run_ends.watcher())
        state = run.state
        if state.is_completed():
            return _output(client, run.id, stage.name), run
        message = state.message or state.name
        if state.is_failed() and "UserError" in message:  # an input error on the worker: the same one would recur
            raise UserError(f"{stage.name} (flow run {run.name}): {message.split('UserError:', 1)[-1].strip()}")
        raise StageCrashed(f"flow run {run.name} ended {state.name}: {message}")


def _wait(client, run, pool: str, start_timeout_s: float, timeout_s: float, ends: run_ends.Ends | None = None):
    """Read the flow run until it is final (when `ends` hears it ended, else at the poll's pace); cancel it when no
    worker took it or it ran past its timeout."""
    created = time.monotonic()
    started = None
    while True:
        run = client.read_flow_run(run.id)
        state = run.state
        if state.is_final():
            return run
        if interrupt.requested():  # the worker stops the stage's process; a rerun resumes from its newest checkpoint
            _cancel(client, run.id, f"interrupted by {interrupt.signal_name()}")
            raise interrupt.Interrupted(f"flow run {run.name} cancelled")
        now = time.monotonic()
        if started is None and (state.is_running() or state.name == "Cancelling"):
            started = now
        if started is None and now - created > start_timeout_s:
            _cancel(client, run.id, "timed out")
            raise UserError(
                f"no worker of work pool {pool!r} took flow run {run.name} within {start_timeout_s:.0f} s: start one "
                f"(`make stack`, or `python -m flows.forkserver beside python -m flows.worker --pool {pool}`), or raise "
                f"execution.start_timeout_s"
            )
        if started is not None and now - started > timeout_s:
            _cancel(client, run.id, "timed out")
            raise StageCrashed(
                f"flow run {run.name} ran past its {timeout_s:.0f} s timeout (execution.stage_timeouts) and was cancelled"
            )
        pause = interrupt.poll_s(now - created, POLL_MAX_S)
        if ends is not None and ends.live():  # woken by the run's end; read anyway now and then, in case it was missed
            ends.wait(run.id, max(pause, run_ends.CONFIRM_S), interrupt.requested)
        else:
            time.sleep(pause)


def _cancel(client, flow_run_id, why: str) -> None:
    from prefect.states import Cancelling

    client.set_flow_run_state(flow_run_id, Cancelling(message=f"multistep: {why}"), force=True)


def _linked(uri: str, run) -> str:
    """`uri`, known to Prefect as the result of the flow run `run`: a later stage that takes it then records that run as
    its input, and the run graph draws the arrow (an in-process subflow's return value is linked so by Prefect itself;
    one read from an artifact is a new string that Prefect cannot trace)."""
    from prefect.utilities.engine import link_state_to_flow_run_result

    state = run.state.model_copy(
        update={"state_details": run.state.state_details.model_copy(update={"flow_run_id": run.id})}
    )
    link_state_to_flow_run_result(state, uri)
    return uri


def _output(client, flow_run_id, stage: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[OUTPUT_KEY])
        )
    )
    if not found:
        raise StageCrashed(
            f"{stage} flow run {flow_run_id} completed without recording its output (artifact {OUTPUT_KEY})"
        )
    return found[0].data.strip().strip("`")


def pool_limit(pool: str) -> int | None:
    """The work pool's concurrency limit (flow runs at once; the gpu pool's is its number of cards), None when unlimited."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_work_pool(pool).concurrency_limit


def prepare(stages: list[tuple[str, str]], execution) -> None:
    """Before anything runs: S3 credentials for this process, and in pools mode every (stage, hardware)'s pool and deployment."""
    if execution.s3_secret:  # local stages read it here; dispatched ones get it in their flow run's environment
        os.environ[SECRET_ENV] = execution.s3_secret
    if os.environ.get("MLFLOW_ARTIFACTS_DESTINATION"):  # a store that refuses us fails now, not after a dispatch
        check_store(os.environ["MLFLOW_ARTIFACTS_DESTINATION"])
    if execution.mode != "pools":
        return
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    # The CLI's own server (flows/embedded.py) names itself in PREFECT_API_URL too, but has no workers.
    if not os.environ.get("PREFECT_API_URL") or os.environ.get(LOCAL_ENV):
        raise UserError(
            "execution.mode pools dispatches to workers through a Prefect server: set PREFECT_API_URL (`make stack` prints it)"
        )
    with get_client(sync_client=True) as client:
        for stage, hardware in stages:
            pool = getattr(execution.pools, hardware)
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                raise UserError(
                    f"work pool {pool!r} (execution.pools.{hardware}) does not exist on {os.environ['PREFECT_API_URL']}: "
                    f"create it and its deployments with `make deploy`, or set execution.pools.{hardware} to an existing pool"
                ) from None
            try:
                client.read_deployment_by_name(deployment_name(stage, pool))
            except ObjectNotFound:
                raise UserError(
                    f"deployment {deployment_name(stage, pool)} is not registered: run `make deploy` (deployments/prefect.yaml)"
                ) from None
