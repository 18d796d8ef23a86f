"""The end-of-run summary, read back from MLflow runs whose times are set by the test."""

from mlflow.tracking import MlflowClient

from tasks.backend import configure
from tasks.report import pipeline_summary
from tasks.tracking import PIPELINE, STAGE

T0 = 1_700_000_000_000  # ms


def test_a_resumed_stage_shows_the_time_of_this_attempt_and_says_it_resumed(home):
    experiment = configure("report")
    client = MlflowClient()
    parent = client.create_run(
        experiment, start_time=T0 + 100_000, tags={PIPELINE: "p"}, run_name="p-pipeline"
    ).info.run_id

    def stage(name: str, start_s: float, end_s: float) -> None:
        tags = {STAGE: name, "mlflow.parentRunId": parent}
        run = client.create_run(experiment, start_time=T0 + int(start_s * 1000), tags=tags, run_name=name).info.run_id
        client.set_terminated(run, end_time=T0 + int(end_s * 1000))

    stage("pretrain", 0, 130)  # opened by an earlier attempt (100 s before this pipeline run), finished 30 s into it
    stage("evaluate", 131, 133.5)
    lines = pipeline_summary(
        {"pipeline_run": parent, "model": "models:/p-base/1"}, 40.0, ["prepare", "pretrain", "evaluate"]
    ).splitlines()
    assert [line[:34] for line in lines[2:4]] == [
        "  pretrain        resumed   30.0 s",
        "  evaluate        ran        2.5 s",
    ]
