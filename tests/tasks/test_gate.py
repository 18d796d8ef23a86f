"""The gate's policy on synthetic numbers, and compare-and-set promotion against a real MLflow registry."""

import tempfile
import threading

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tasks.gate import baseline, stage
from tasks.gate import promotion as gate
from tasks.gate.promotion import Decision, decide, decide_alone, promote
from tasks.gate.spec import GateSpec

CH, CP = "models:/m/2", "models:/m/1"


def interval(delta, low, high, p):
    return {"delta": delta, "low": low, "high": high, "p_value": p}


@pytest.mark.parametrize(
    "values, ci, spec, promoted, says",
    [
        ({"accuracy": 0.80}, interval(-0.05, -0.08, -0.02, 0.001), GateSpec(), False, "not above min_delta"),  # worse
        ({"accuracy": 0.85}, interval(0.0, -0.02, 0.02, 1.0), GateSpec(), False, "not above min_delta"),  # equal
        (
            {"accuracy": 0.86},
            interval(0.01, -0.01, 0.03, 0.3),
            GateSpec(require_significance=True),
            False,
            "not significant",
        ),
        # better, significance not asked
        ({"accuracy": 0.86}, interval(0.01, -0.01, 0.03, 0.3), GateSpec(), True, "gain +0.0100"),
        (
            {"accuracy": 0.86},
            interval(0.01, -0.01, 0.03, 0.3),
            GateSpec(min_delta=0.02),
            False,
            "not above min_delta 0.02",
        ),
        (
            {"accuracy": 0.90},
            interval(0.05, 0.02, 0.08, 0.001),
            GateSpec(require_significance=True),
            True,
            "CI +0.0200 to +0.0800",
        ),
    ],
)
def test_policy_on_synthetic_metrics(values, ci, spec, promoted, says):
    found = decide(spec, "accuracy", CH, CP, {CH: values, CP: {"accuracy": 0.85}}, ci)
    assert found.promote is promoted and says in found.reason
    tags = found.tags()
    assert tags["gate.decision"] == ("promoted" if promoted else "rejected") and tags["gate.champion"] == CP


def test_metrics_that_must_not_regress_and_lower_is_better():
    spec = GateSpec(must_not_regress=["macro_f1"], regress_tolerance=0.01)
    values = {CH: {"accuracy": 0.90, "macro_f1": 0.70}, CP: {"accuracy": 0.85, "macro_f1": 0.80}}
    found = decide(spec, "accuracy", CH, CP, values, interval(0.05, 0.02, 0.08, 0.001))
    assert not found.promote and "macro_f1 -0.1000 regress" in found.reason
    # Perplexity: lower wins; without an interval the sign is taken from the direction.
    assert decide(GateSpec(), "perplexity", CH, CP, {CH: {"perplexity": 40.0}, CP: {"perplexity": 50.0}}, None).promote
    assert not decide(
        GateSpec(), "perplexity", CH, CP, {CH: {"perplexity": 60.0}, CP: {"perplexity": 50.0}}, None
    ).promote


def test_without_a_champion_the_trivial_baseline_and_the_threshold_decide():
    def alone(spec, metric, mine, base):
        return decide_alone(spec, metric, CH, mine, base, "no champion")

    # The smoke run of issue 14: perplexity 1,733 against a unigram baseline of 570.
    smoke = alone(GateSpec(), "perplexity", 1733.0, ("unigram", 570.0))
    assert not smoke.promote
    assert smoke.reason == "no champion; the challenger's perplexity 1733 is worse than the unigram baseline's 570"
    tags = smoke.tags()
    assert (tags["gate.baseline"], tags["gate.baseline_value"], tags["gate.decision"]) == ("unigram", "570", "rejected")
    assert "gate.champion" not in tags
    better = alone(GateSpec(), "perplexity", 40.0, ("unigram", 570.0))
    assert (
        better.promote
        and better.reason == "no champion; the challenger's perplexity 40 beats the unigram baseline's 570"
    )
    # The threshold is a second bar, over the baseline.
    both = alone(GateSpec(threshold=0.8), "accuracy", 0.82, ("majority-class", 0.6))
    assert both.promote and both.reason.endswith(
        "beats the majority-class baseline's 0.6 and reaches the threshold 0.8"
    )
    low = alone(GateSpec(threshold=0.8), "accuracy", 0.79, ("majority-class", 0.6))
    assert not low.promote and low.reason.endswith(
        "beats the majority-class baseline's 0.6 but misses the threshold 0.8"
    )
    assert not alone(GateSpec(threshold=30), "perplexity", 31.0, ("unigram", 570.0)).promote
    # gate.baseline off (no baseline measured): the threshold alone, or the first challenger.
    alone_low = alone(GateSpec(baseline=False, threshold=0.8), "accuracy", 0.79, None)
    assert (
        not alone_low.promote
        and alone_low.reason == "no champion; the challenger's accuracy 0.79 misses the threshold 0.8"
    )
    first = alone(GateSpec(baseline=False), "accuracy", 0.1, None)
    assert (
        first.promote and first.reason == "no champion, no baseline and no threshold: the first challenger is promoted"
    )
    assert "gate.baseline" not in first.tags()


def test_the_alias_challenger_is_reserved():
    with pytest.raises(ValueError, match="cannot be `challenger`"):
        GateSpec(alias="challenger")


@pytest.fixture
def registry(home):
    """Model `m` with versions 1..3 (plain files), `@champion` on 1."""
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = MlflowClient()
    client.create_registered_model("m")
    with mlflow.start_run(), tempfile.TemporaryDirectory() as tmp:
        open(f"{tmp}/weights.txt", "w").write("w")
        mlflow.log_artifacts(tmp, "model")
        for _ in range(3):
            client.create_model_version("m", mlflow.get_artifact_uri("model"), mlflow.active_run().info.run_id)
    client.set_registered_model_alias("m", "champion", "1")
    return client


def test_two_concurrent_promotions_have_exactly_one_winner(registry):
    # Both challengers beat v1 and neither beats the other; both decide against v1 before either takes the lock.
    both_judged = threading.Barrier(2)
    results = {}

    def contender(uri, rival):
        def judge(holder):
            if holder == CP:
                both_judged.wait(timeout=30)
                return Decision(True, "beats v1", "accuracy", uri, holder, 0.9)
            return Decision(False, f"does not beat {holder}", "accuracy", uri, holder, 0.9)

        results[uri] = promote("m", "champion", uri, judge)

    threads = [
        threading.Thread(target=contender, args=(uri, rival))
        for uri, rival in (("models:/m/2", "models:/m/3"), ("models:/m/3", "models:/m/2"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [uri for uri, d in results.items() if d.promote]
    assert len(winners) == 1
    loser = next(uri for uri in results if uri not in winners)
    assert results[loser].reason == f"does not beat {winners[0]}"  # it decided again, against the new holder
    assert gate.holder("m", "champion") == winners[0]
    assert [m.name for m in registry.search_registered_models()] == ["m"]  # the lock is gone


def test_a_deleted_champion_version_means_no_champion(registry):
    registry.delete_model_version("m", "1")
    assert gate.holder("m", "champion") is None
    seen = []
    decision = promote(
        "m",
        "champion",
        "models:/m/2",
        lambda holder: seen.append(holder) or Decision(True, "first", "accuracy", "models:/m/2", holder, 0.9),
    )
    assert seen == [None] and decision.promote and gate.holder("m", "champion") == "models:/m/2"


def test_a_stale_lock_left_by_a_dead_process_is_broken(registry):
    registry.create_registered_model("m.promotion-lock", tags={"multistep.lock_time": "0"})
    with gate.promotion_lock("m"):
        assert registry.get_registered_model("m.promotion-lock").tags["multistep.lock_time"] != "0"


def test_a_champion_the_test_rows_cannot_score_is_reported_and_the_challenger_judged_alone(
    registry, monkeypatch, capsys
):
    import numpy as np

    from tasks.errors import UserError
    from tasks.evaluate import scoring

    def score(uri, dataset, **kw):
        if uri == "models:/m/1":
            raise UserError("models:/m/1 predicts the labels ['x', 'y'] but the data's labels are ['0', '1']")
        return scoring.Scored(
            "classification", {"accuracy": 0.9, "macro_f1": 0.9}, {"accuracy": np.ones(10)}, [{"text": "t"}]
        )

    monkeypatch.setattr(scoring, "score", score)
    measured = []
    majority = baseline.Baseline("majority-class", "always `0`", {"accuracy": 0.5, "macro_f1": 0.33})
    monkeypatch.setattr(baseline, "measure", lambda dataset, max_rows: measured.append(dataset) or majority)
    spec = GateSpec(threshold=0.8)
    gate_v2(spec)
    assert (
        "gate: the champion models:/m/1 cannot be scored on these test rows (models:/m/1 predicts the labels ['x', 'y'] "
        "but the data's labels are ['0', '1']); the challenger must beat the task's trivial baseline and reach "
        "gate.threshold 0.8" in capsys.readouterr().out
    )
    tags = registry.get_model_version("m", "2").tags
    assert measured == ["d"] and tags["gate.decision"] == "promoted"
    assert tags["gate.reason"] == (
        "the champion models:/m/1 cannot be scored on these test rows; the challenger's accuracy 0.9 beats the "
        "majority-class baseline's 0.5 and reaches the threshold 0.8"
    )
    assert gate.holder("m", "champion") == "models:/m/2" and gate.holder("m", "challenger") == "models:/m/2"


def test_the_gate_log_and_the_registry_say_the_same_word(registry, monkeypatch, capsys):
    import numpy as np

    from tasks.evaluate import scoring

    scored = scoring.Scored(
        "classification", {"accuracy": 0.5, "macro_f1": 0.5}, {"accuracy": np.ones(10)}, [{"text": "t"}]
    )
    monkeypatch.setattr(scoring, "score", lambda uri, dataset, **kw: scored)
    spec = GateSpec()  # v2 scores as v1, the champion: no gain, so no promotion
    gate_v2(spec)
    assert registry.get_model_version("m", "2").tags["gate.decision"] == "rejected"  # what the run summary prints
    assert "gate: rejected — accuracy 0.5 vs champion 0.5: gain +0.0000" in capsys.readouterr().out
    assert gate.holder("m", "champion") == "models:/m/1"


def gate_v2(spec: GateSpec) -> str:
    """The gate stage's body on models:/m/2 inside its stage run, as the gate flow runs it."""
    from tasks import tracking

    inputs = {"model": "models:/m/2", "dataset": "d"}
    with tracking.stage_run(
        "gate", spec, inputs, code="tasks.gate.stage", experiment="t", digests={"model": "m2", "dataset": "d"}
    ) as ctx:
        ctx.output = stage.run(spec, "models:/m/2", "d", ctx)
    return ctx.output
