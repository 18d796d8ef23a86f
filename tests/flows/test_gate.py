"""Every pipeline ends in a gate decision: recorded on the version, the gate run and the Prefect flow run."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import tracking
from tasks.evaluate import scoring
from tests.flows.test_pipeline import stage_runs

pytestmark = pytest.mark.usefixtures("prefect_api")


def pipeline(corpus, tiny_overrides, *extra):
    return llm_pipeline(load("configs/default.yaml", tiny_overrides(corpus) + list(extra)))


def test_a_smoke_model_worse_than_unigram_is_not_promoted_then_new_data_is_gated_against_the_champion(
    home, corpus, tiny_overrides
):
    # Six steps leave the model far worse than the unigram of the training characters (perplexity ~69 against ~21):
    # with no champion, the trivial baseline stops it. Both score the first 16 test blocks, as evaluate does.
    first = pipeline(corpus, tiny_overrides, "gate.max_rows=16")
    client = MlflowClient()
    stages = stage_runs(first["pipeline_run"])
    evaluation, decided = stages["evaluate"].data.metrics, stages["gate"].data.metrics
    unigram = evaluation["test_unigram_perplexity"]
    assert decided["baseline_perplexity"] == pytest.approx(unigram, rel=1e-9)
    assert decided["challenger_perplexity"] == pytest.approx(evaluation["test_perplexity"], rel=1e-4)
    tags = client.get_model_version("tiny-base", "1").tags
    reason = (
        f"no champion; the challenger's perplexity {decided['challenger_perplexity']:.4g} is worse than the unigram "
        f"baseline's {unigram:.4g}"
    )
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"] == reason and decided["promoted"] == 0
    assert str(client.get_model_version_by_alias("tiny-base", "challenger").version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("tiny-base", "champion")
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as prefect:  # the decision is a line of the gate flow run's logs
        flow_run = stages["gate"].data.tags[tracking.PREFECT_FLOW_RUN]
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])))
    assert f"gate: rejected — {reason}" in [log.message for log in logs]

    # gate.baseline=false opts out: the same version (every other stage reused) is promoted as the first challenger.
    pipeline(corpus, tiny_overrides, "gate.max_rows=16", "gate.baseline=false")
    tags = client.get_model_version("tiny-base", "1").tags
    assert (
        tags["gate.decision"] == "promoted"
        and "gate.champion" not in tags  # no empty tags: there was no champion
        and "gate.baseline" not in tags
        and tags["gate.reason"] == "no champion, no baseline and no threshold: the first challenger is promoted"
    )
    assert str(client.get_model_version_by_alias("tiny-base", "champion").version) == "1"

    # Twice the steps on the same text: the challenger's perplexity is clearly lower, and the default policy (any gain,
    # no significance required) promotes it; the trivial baseline bars only a challenger without a champion.
    corpus.write_text(corpus.read_text() + "\n\nA retraining run sees this new paragraph about the data model.\n")
    second = pipeline(corpus, tiny_overrides, "pretrain.train.max_steps=12")
    tags = client.get_model_version("tiny-base", "2").tags
    assert tags["gate.champion"] == "models:/tiny-base/1" and tags["gate.metric"] == "perplexity"
    assert float(tags["gate.challenger_value"]) < float(tags["gate.champion_value"]) and float(tags["gate.delta"]) > 0
    assert float(tags["gate.low"]) <= float(tags["gate.delta"]) <= float(tags["gate.high"])
    assert tags["gate.decision"] == "promoted" and tags["gate.reason"].startswith("perplexity ")
    assert str(client.get_model_version_by_alias("tiny-base", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("tiny-base", "challenger").version) == "2"

    run = stage_runs(second["pipeline_run"])["gate"]
    assert {"challenger_perplexity", "champion_perplexity", "delta", "ci_low", "ci_high", "promoted"} <= set(
        run.data.metrics
    )
    files = {f.path for f in client.list_artifacts(run.info.run_id, "gate")}
    assert {
        "gate/decision.json",
        "gate/decision.md",
        "gate/decision.png",
        "gate/challenger_predictions.json",
        "gate/champion_predictions.json",
    } <= files
    from prefect import get_client

    with get_client(sync_client=True) as prefect:
        artifact = prefect.read_latest_artifacts(limit=20)
        assert any(a.key == "gate-tiny-base" and "Gate:" in a.data for a in artifact)


def test_a_deleted_champion_is_reported_and_the_threshold_decides(home, corpus, tiny_overrides, caplog):
    # Without the trivial baseline (gate.baseline=false), the six-step model is promoted, and the threshold decides alone.
    pipeline(corpus, tiny_overrides, "gate.baseline=false")
    MlflowClient().delete_model_version("tiny-base", "1")
    corpus.write_text(corpus.read_text() + "\n\nAnother paragraph.\n")
    pipeline(corpus, tiny_overrides, "gate.baseline=false", "gate.threshold=1.0")  # perplexity 1.0 is out of reach
    assert "no version of tiny-base holds @champion (never promoted, or its version was deleted)" in caplog.text
    tags = MlflowClient().get_model_version("tiny-base", "2").tags
    assert tags["gate.decision"] == "rejected" and "misses the threshold 1" in tags["gate.reason"]
    with pytest.raises(mlflow.exceptions.MlflowException):
        MlflowClient().get_model_version_by_alias("tiny-base", "champion")


def test_a_failed_evaluation_is_retried_without_retraining(home, corpus, tiny_overrides, monkeypatch):
    real, calls = scoring.score, []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            raise ConnectionError("the scoring worker went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "score", flaky)
    result = pipeline(corpus, tiny_overrides, "execution.stage_retries=1")
    # the retried gate decided: six steps do not beat the unigram baseline
    assert len(calls) == 2 and MlflowClient().get_model_version("tiny-base", "1").tags["gate.decision"] == "rejected"
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{result['pipeline_run']}'",
        output_format="list",
    )
    # trained once; the gate run resumed
    assert sorted(r.info.run_name for r in runs) == ["tiny/evaluate", "tiny/gate", "tiny/prepare", "tiny/pretrain"]
    assert len(MlflowClient().search_model_versions("name = 'tiny-base'")) == 1


def test_evaluate_scores_any_versions_side_by_side_from_the_cli(home, corpus, tiny_overrides, run_cli):
    result = pipeline(corpus, tiny_overrides)
    done = run_cli(
        ["evaluate", "models:/tiny-base/1", "models:/tiny-base@challenger", result["dataset"], "--json"],
        home,
        MLFLOW_TRACKING_URI="",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    first, second = found["models:/tiny-base/1"], found["models:/tiny-base@challenger"]
    assert first["task"] == "lm" and first["metrics"]["perplexity"] == pytest.approx(second["metrics"]["perplexity"])
    assert second["vs_first"]["perplexity"]["delta"] == 0  # the same version twice
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string="tags.`multistep.stage` = 'evaluate' and attributes.run_name = 'evaluate'",
        output_format="list",
    )
    assert sum("test_perplexity" in r.data.metrics for r in runs) >= 2

    missing = run_cli(["evaluate", "models:/nope/1", result["dataset"]], home, MLFLOW_TRACKING_URI="")
    assert (
        missing.returncode == 2
        and "error: Cannot fetch model models:/nope/1" in missing.stderr
        and "Traceback" not in missing.stderr
    )
