"""rounds.search's loop with the fine-tuning stubbed: what the sampler proposes, and when the pruner stops it.

The end-to-end run with real fine-tuning stages is in tests/flows/test_augment.py.
"""

import math
from types import SimpleNamespace

import pytest

from flows.spec import load
from tasks import rounds, search
from tasks.errors import UserError

BASE = [
    "labeled={train: [x.tsv]}",
    "finetune={init: package:minilm, method: full, train: {lr: 0.001, max_steps: 40}}",
    "pretrain=null",
    "evaluate=null",
    "data=null",
    "gate=null",
]


FINETUNES = []


def spec_with(*extra: str):
    return load("configs/default.yaml", [*BASE, *extra])


def run(spec, curves, monkeypatch) -> tuple[str, list]:
    """The loop on `spec`, where round r's model logged `curves(r, its finetune spec)` as its validation curve (its
    score is the curve's best point, as for the best checkpoint); returns the best model and each round's (lr, log),
    and each round's finetune spec in FINETUNES."""
    trained, logged = {}, []
    FINETUNES.clear()
    monkeypatch.setattr(search, "curve", lambda model, task: trained[model])
    monkeypatch.setattr(search.registry, "metric", lambda model, metric: max(v for _, v in trained[model]))
    monkeypatch.setattr(search.tracking, "log_round", lambda run, r, metric, score, said, model: logged.append(said))

    def tune(adjusted, teacher, r):
        model = f"models:/m/{r}"
        FINETUNES.append(adjusted.finetune)
        trained[model] = curves(r, adjusted.finetune)
        return model

    best = rounds.adjust_and_retry(spec, tune, "pipeline-run")
    lrs = [float(said.split(",")[0].removeprefix("lr ")) for said in logged]
    return best, list(zip(lrs, logged, strict=True))


def learns_near(lr_best: float):
    """Validation accuracy that falls off with the distance of log10(lr) from `lr_best`, rising over two evaluations."""

    def curve(r, finetune):
        final = 0.9 - 0.2 * abs(math.log10(finetune.train.lr / lr_best))
        return [(20, final - 0.1), (40, final)]

    return curve


def test_proposals_are_the_same_for_the_same_seed_and_differ_for_another(monkeypatch):
    space = ("rounds={max_rounds: 4, patience: 9, search: {lr: [1e-5, 1e-1], startup_rounds: 2, pruner: none}}",)
    first = [lr for lr, _ in run(spec_with(*space), learns_near(1e-3), monkeypatch)[1]]
    again = [lr for lr, _ in run(spec_with(*space), learns_near(1e-3), monkeypatch)[1]]
    other = [lr for lr, _ in run(spec_with(*space, "finetune.train.seed=7"), learns_near(1e-3), monkeypatch)[1]]
    assert len(first) == 4 and first == again and other != first
    assert all(1e-5 <= lr <= 1e-1 for lr in first + other)


def test_after_a_bad_round_the_sampler_moves_the_learning_rate_towards_the_good_ones(monkeypatch):
    # Two random rounds, then TPE: it proposes from the scores so far, and the best of six rounds lands within a
    # factor of 10 of the best rate (a score of 0.7 or more), far from the bad rounds.
    spec = spec_with("rounds={max_rounds: 6, patience: 9, search: {lr: [1e-6, 1e-1], startup_rounds: 2, pruner: none}}")
    best, tried = run(spec, learns_near(1e-3), monkeypatch)
    lrs = [lr for lr, _ in tried]
    assert len(set(lrs)) == len(lrs)  # never the same rate twice
    best_lr = lrs[int(best.rpartition("/")[2]) - 1]
    assert abs(math.log10(best_lr / 1e-3)) < 1


def test_the_pruner_stops_the_search_on_a_round_that_falls_behind(monkeypatch):
    # Round 2 starts far below round 1 (pruned at the first evaluation) and ends above it: its model is the best and
    # goes on, but the pruned round counts against patience 1, so the search stops after it; without a pruner it goes on.
    def curves(r, finetune):
        return {1: [(20, 0.5), (40, 0.6)], 2: [(20, 0.1), (40, 0.7)]}.get(r, [(20, 0.55), (40, 0.65)])

    space = "rounds={max_rounds: 5, patience: 1, search: {lr: [1e-5, 1e-2], startup_rounds: 1, pruner: %s}}"
    best, tried = run(spec_with(space % "median"), curves, monkeypatch)
    assert best == "models:/m/2" and len(tried) == 2
    assert tried[1][1].endswith("pruned at step 20") and "pruned" not in tried[0][1]
    # Round 2's stage was told the pruner's bar, round 1's score at each step, so a real stage stops at step 20.
    assert [f.stop_behind for f in FINETUNES] == [{}, {20: 0.5, 40: 0.6}]
    best, tried = run(spec_with(space % "none"), curves, monkeypatch)
    assert best == "models:/m/2" and len(tried) == 3  # round 3 is not better: patience 1 stops there


def test_no_round_is_pruned_inside_the_grace(monkeypatch):
    # The same rounds as above, but nothing is pruned before 60% of the 40 steps: round 2's slow start at step 20 is
    # not judged, at step 40 it is ahead, so it is the best round and not pruned, and the search goes on past it.
    def curves(r, finetune):
        return {1: [(20, 0.5), (40, 0.6)], 2: [(20, 0.1), (40, 0.7)]}.get(r, [(20, 0.55), (40, 0.65)])

    space = "rounds={max_rounds: 5, patience: 1, search: {lr: [1e-5, 1e-2], startup_rounds: 1, grace: 0.6}}"
    best, tried = run(spec_with(space), curves, monkeypatch)
    assert best == "models:/m/2" and len(tried) == 3 and not any("pruned" in said for _, said in tried)
    assert [f.stop_behind for f in FINETUNES] == [{}, {40: 0.6}, {40: pytest.approx(0.65)}]  # no bar inside the grace


def test_a_round_gets_every_searched_setting(monkeypatch):
    spec = spec_with(
        "rounds={max_rounds: 1, search: {lr: [1e-4, 1e-3], max_steps: [10, 30], batch_size: [8], "
        "warmup_ratio: [0.5, 0.5], weight_decay: [0.2, 0.3], layer_lr_decay: [0.8, 0.9], reinit_layers: [1, 2]}}"
    )
    seen = []
    monkeypatch.setattr(search, "curve", lambda model, task: [(1, 0.5)])
    monkeypatch.setattr(search.registry, "metric", lambda model, metric: 0.5)
    monkeypatch.setattr(search.tracking, "log_round", lambda *args: None)
    rounds.adjust_and_retry(spec, lambda adjusted, teacher, r: seen.append(adjusted.finetune) or "models:/m/1", "run")
    (ft,) = seen
    assert 1e-4 <= ft.train.lr <= 1e-3 and 10 <= ft.train.max_steps <= 30 and ft.train.batch_size == 8
    assert ft.train.warmup_steps == round(0.5 * ft.train.max_steps)
    assert 0.2 <= ft.train.weight_decay <= 0.3 and 0.8 <= ft.layer_lr_decay <= 0.9 and ft.reinit_layers in (1, 2)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("rounds.search.lr=[]", r"`rounds\.search\.lr` is not a range: write \[low, high\]"),
        ("rounds.search.warmup_ratio=[0.3, 0.1]", r"`rounds\.search\.warmup_ratio` is not a range"),
        ("rounds.search.batch_size=[]", r"`rounds\.search\.batch_size` has no value to choose from"),
        ("rounds={search: {pruner: median}}", r"rounds\.search searches nothing: give a range for one of lr"),
        ("rounds.match_first_steps=true", r"rounds\.match_first_steps caps the strategies' rounds, but rounds\.search"),
        (
            "finetune.method=head",
            r"rounds\.search gives a round lr 0\.1, reinit_layers 2, which finetune does not accept "
            r"\(finetune\.reinit_layers re-initialises blocks that method head keeps frozen",
        ),
    ],
)
def test_a_search_space_that_cannot_be_searched_names_the_key(setting, message):
    with pytest.raises(UserError, match=message) as caught:
        spec_with("rounds={search: {lr: [0.01, 0.1], reinit_layers: [0, 2]}}", setting)
    assert str(caught.value).count(". ") == 0  # one sentence


def test_a_stage_stops_at_the_first_evaluation_its_best_score_is_behind_the_bar():
    from transformers import TrainerControl

    from tasks.finetune.trainer import StopBehind

    def stops(bars, greater, *evaluations) -> list[bool]:
        callback, said = StopBehind(bars, "accuracy" if greater else "eval_loss", greater), []
        for step, value in evaluations:
            control = TrainerControl()
            key = "eval_accuracy" if greater else "eval_loss"
            callback.on_evaluate(None, SimpleNamespace(global_step=step), control, metrics={key: value})
            said.append(control.should_training_stop)
        return said

    assert stops({2: 0.6, 4: 0.7}, True, (2, 0.65), (4, 0.68)) == [False, True]
    assert stops({4: 0.6}, True, (2, 0.7), (4, 0.5)) == [False, False]  # the best so far (0.7) clears the bar
    assert stops({2: 0.4}, False, (2, 0.5)) == [True]  # a loss above the bar is behind
    assert stops({2: 0.4}, False, (2, 0.3)) == [False]
