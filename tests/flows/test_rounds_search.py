"""rounds.search inside llm_pipeline: every proposed round is a fine-tuning stage with its MLflow run, and the best
round's model goes to the gate. The loop's logic with stubbed stages is in tests/tasks/test_search.py."""

import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import llm_pipeline
from flows.spec import load
from tests.flows.test_augment import POOLER_AND_HEAD, overrides, stage_runs

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_search_rounds_each_run_a_stage_and_the_best_goes_to_the_gate(home, sentiment):
    # Seed 7 makes the sampler's first draw lr 2.4e-6, far too low to learn anything in 4 steps: round 1 scores near
    # chance; round 2 (the second random draw) lands on a rate that learns, and round 3, TPE's proposal from both, falls
    # below their median at the first evaluation: its stage stops there, the pruner prunes it and, with patience 1,
    # the search stops.
    spec = load(
        "configs/sst2-augment.yaml",
        overrides(
            sentiment,
            "augment=null",
            *POOLER_AND_HEAD,
            "finetune.train={max_steps: 4, batch_size: 16, lr: 0.001, warmup_steps: 0, checkpoint_every: 2, "
            "log_every: 2, seed: 7}",
            "rounds={max_rounds: 4, patience: 1, search: {lr: [1e-6, 1e-1], startup_rounds: 2, pruner: median}}",
        ),
    )
    result = llm_pipeline(spec)
    client = MlflowClient()
    runs = stage_runs(result["pipeline_run"])
    scores = {m.step: m.value for m in client.get_metric_history(result["pipeline_run"], "round_validation_accuracy")}
    tags = client.get_run(result["pipeline_run"]).data.tags
    n = len(scores)
    assert sorted(scores) == list(range(1, n + 1)) and {f"finetune-round{r}" for r in scores} <= set(runs)
    assert f"finetune-round{n + 1}" not in runs
    lrs = [float(runs[f"finetune-round{r}"].data.params["train.lr"]) for r in range(1, n + 1)]
    assert n == 3 and len(set(lrs)) == 3
    assert lrs[0] == pytest.approx(2.407e-6, rel=1e-3) and scores[1] < 0.6
    assert "pruned at step 2" in tags["multistep.round.3"] and "pruned" not in tags["multistep.round.2"]
    # Each stage run logged the validation curve that the pruner judged: two evaluations in 4 steps, but round 3's
    # stage was given the pruner's bar (the median of rounds 1 and 2 at each step) and stopped after its first.
    evaluated = {
        r: sorted(m.step for m in client.get_metric_history(runs[f"finetune-round{r}"].info.run_id, "eval_accuracy"))
        for r in (1, 2, 3)
    }
    assert evaluated == {1: [2, 4], 2: [2, 4], 3: [2]}
    assert (
        "stop_behind.2" in runs["finetune-round3"].data.params
        and "stop_behind.2" not in runs["finetune-round1"].data.params
    )
    best = max(scores, key=lambda r: (scores[r], -r))  # the first of equal scores
    assert best > 1 and scores[best] > 0.7
    assert result["finetuned"] == tags[f"multistep.round.{best}"].rpartition(" → ")[2]
    assert runs["gate"].data.tags["multistep.input.model"] == result["finetuned"] == result["model"]
    assert str(client.get_model_version_by_alias("mini", "challenger").version) == str(best)
