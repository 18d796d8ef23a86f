"""Every pipeline ends in a gate decision: recorded on the version, the gate run and the Prefect flow run."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks.evaluate import scoring
from tests.flows.test_pipeline import stage_runs

pytestmark = pytest.mark.usefixtures("prefect_api")


def pipeline(corpus, tiny_overrides, *extra):
    return llm_pipeline(load("configs/default.yaml", tiny_overrides(corpus) + list(extra)))


def test_first_model_is_promoted_then_new_data_is_gated_against_it(home, corpus, tiny_overrides, caplog):
    pipeline(corpus, tiny_overrides)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias("tiny-base", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("tiny-base", "challenger").version) == "1"
    tags = client.get_model_version("tiny-base", "1").tags
    assert (
        tags["gate.decision"] == "promoted"
        and "gate.champion" not in tags  # no empty tags: there was no champion
        and "first challenger" in tags["gate.reason"]
    )

    # Twice the steps on the same text: the challenger's perplexity is clearly lower, and the default policy (any gain,
    # no significance required) promotes it.
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
    pipeline(corpus, tiny_overrides)
    MlflowClient().delete_model_version("tiny-base", "1")
    corpus.write_text(corpus.read_text() + "\n\nAnother paragraph.\n")
    pipeline(corpus, tiny_overrides, "gate.threshold=1.0")  # perplexity 1.0 is out of reach: not promoted
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
    assert len(calls) == 2 and MlflowClient().get_model_version("tiny-base", "1").tags["gate.decision"] == "promoted"
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
        ["evaluate", "models:/tiny-base/1", "models:/tiny-base@champion", result["dataset"], "--json"],
        home,
        MLFLOW_TRACKING_URI="",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    first, second = found["models:/tiny-base/1"], found["models:/tiny-base@champion"]
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
