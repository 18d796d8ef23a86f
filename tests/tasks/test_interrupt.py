"""After Ctrl-C (the CLI's handler sets the flag) nothing new starts, and a stage stopped by it ends KILLED and resumes."""

import threading

import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from tasks import backend, interrupt, tracking
from tasks.evaluate import scoring


class Spec(BaseModel):
    steps: int = 3


@pytest.fixture
def ctrl_c(monkeypatch):
    """Set the interrupt flag as the CLI's signal handler would; `ctrl_c()` sets it later."""
    flag = threading.Event()
    monkeypatch.setattr(interrupt, "_requested", flag)
    return flag.set


def run_stage(body):
    """A stage run of `pretrain` the way the stage flows open one, with `body` as its body."""
    with tracking.stage_run("pretrain", Spec(), {}, code="tasks.interrupt", experiment="t") as ctx:
        if not ctx.cached:
            ctx.output = body(ctx)
    return ctx.output


def test_no_stage_starts_after_an_interrupt(home, ctrl_c):
    ctrl_c()
    with pytest.raises(interrupt.Interrupted, match="before pretrain"):
        run_stage(lambda ctx: pytest.fail("the stage ran"))
    assert not (home / "mlflow.db").exists()  # not even a run was opened


def test_no_further_model_is_scored_after_an_interrupt(ctrl_c):
    ctrl_c()
    with pytest.raises(interrupt.Interrupted, match="before scoring models:/m/1"):
        scoring.compare(["models:/m/1", "models:/m/2"], "runs:/0/labeled")


def test_a_stage_stopped_by_an_interrupt_ends_killed_and_the_next_call_resumes_it(home, ctrl_c):
    def stopped(ctx):
        ctrl_c()
        raise interrupt.Interrupted("pretrain at checkpoint-2")

    with pytest.raises(interrupt.Interrupted):
        run_stage(stopped)
    (run,) = MlflowClient().search_runs([backend.configure("t")])
    assert run.info.status == "KILLED"

    interrupt._requested.clear()
    resumed = []
    assert run_stage(lambda ctx: resumed.append(ctx) or "done") == "done"
    assert [(ctx.run_id, ctx.resumed) for ctx in resumed] == [(run.info.run_id, True)]
