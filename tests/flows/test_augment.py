"""The augment stage inside llm_pipeline: EDA, pseudo-label self-training rounds, adversarial examples and training."""

import json
import random
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from transformers import BertConfig, BertForSequenceClassification

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import model as models
from tasks.errors import UserError

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def pool(tmp_path) -> Path:
    rng = random.Random(1)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "dull", "bad", "poor"]
    lines = ["sentence"] + [f"{rng.choice(good + bad)} the {rng.choice(['film', 'plot', 'cast'])} felt {rng.choice(good + bad)} {i}" for i in range(60)]
    path = tmp_path / "pool.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def overrides(data: Path, *extra: str) -> list[str]:
    """sst2-augment on the toy set, head-only on package:minilm so that each fine-tune takes seconds."""
    return [
        "name=mini", f"labeled.train=[{data}]", "labeled.test=[]", "labeled.split.validation=0.2", "labeled.split.test=0.2",
        "labeled.max_train_rows=60", "finetune.method=head", "finetune.max_length=16", "finetune.patience=null",
        "finetune.train={max_steps: 4, batch_size: 16, lr: 0.01, warmup_steps: 0, checkpoint_every: 2, log_every: 2}",
        "augment.eda.copies=2", "augment.eda.protected=[the]", *extra,
    ]


def dataset_rows(uri: str, split: str) -> list[dict]:
    return pq.read_table(Path(mlflow.artifacts.download_artifacts(uri)) / f"{split}.parquet").to_pylist()


def stage_runs(pipeline_run: str) -> dict[str, mlflow.entities.Run]:
    found = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{pipeline_run}'", output_format="list")
    return {r.info.run_name: r for r in found}


def test_eda_then_a_self_training_round_that_keeps_the_better_model(home, sentiment, pool):
    spec = load("configs/sst2-augment.yaml", overrides(
        sentiment, f"augment.pseudo.pool=[{pool}]", "augment.pseudo.threshold=0.0", "augment.pseudo.per_class=10", "augment.pseudo.balance=false",
        "augment.rounds=2", "augment.min_gain=1.0",  # no student can gain a whole point: the loop stops after one round
    ))
    result = llm_pipeline(spec)

    runs = stage_runs(result["pipeline_run"])
    assert {"prepare-labeled", "augment-round0", "finetune-round0", "augment-round1", "finetune-round1"} <= set(runs)
    assert "augment-round2" not in runs
    assert runs["augment-round1"].data.tags["multistep.hardware"] == "gpu"  # a teacher runs in it
    teacher = "models:/mini/1"
    assert result["model"] == teacher  # the student did not gain min_gain, so the teacher stays
    student = MlflowClient().get_model_version("mini", "2")
    assert student.run_id == runs["finetune-round1"].info.run_id and runs["finetune-round1"].data.tags["multistep.round"] == "1"

    labeled = {s: dataset_rows(result["labeled"], s) for s in ("train", "validation", "test")}
    round1 = runs["augment-round1"].data.tags["multistep.output"]
    rows = {s: dataset_rows(round1, s) for s in ("train", "validation", "test")}
    # Validation and test are the labeled data's, untouched.
    for split in ("validation", "test"):
        assert [(r["text"], r["label"]) for r in rows[split]] == [(r["text"], r["label"]) for r in labeled[split]]
    by_op = {}
    for r in rows["train"]:
        by_op.setdefault(r["operation"].split(".")[0], []).append(r)
    assert len(by_op["original"]) == len(labeled["train"]) and len(by_op["eda"]) == 2 * len(labeled["train"])
    source_label = {r["origin"]: r["label"] for r in labeled["train"]}
    assert all(r["label"] == source_label[r["source_row"]] for r in by_op["eda"])  # EDA keeps each row's label
    assert all(r["text"].split().count("the") == labeled_text.split().count("the")
               for r in by_op["eda"] for labeled_text in [next(x["text"] for x in labeled["train"] if x["origin"] == r["source_row"])])
    assert 0 < len(by_op["pseudo"]) <= 20 and all(r["teacher"] == teacher and 0 <= r["confidence"] <= 1 for r in by_op["pseudo"])
    assert {r["text"] for r in by_op["pseudo"]}.isdisjoint(r["text"] for split in labeled.values() for r in split)
    card = json.loads(Path(mlflow.artifacts.download_artifacts(round1.rstrip("/") + "/card.json")).read_text())
    assert card["augment"]["operations"]["pseudo"]["teacher"] == teacher and card["splits"]["train"]["rows"] == len(rows["train"])


def test_adversarial_examples_from_a_teacher_and_adversarial_training(home, sentiment):
    first = llm_pipeline(load("configs/sst2-augment.yaml", overrides(sentiment, "augment=null")))
    spec = load("configs/sst2-augment.yaml", overrides(
        sentiment, "augment.eda=null", "augment.pseudo=null", f"augment.teacher={first['model']}", "augment.adversarial.rows=30",
        "finetune.adversarial.method=pgd", "finetune.adversarial.steps=2", "finetune.attack.rows=20",
    ))
    result = llm_pipeline(spec)
    runs = stage_runs(result["pipeline_run"])
    augment = runs["augment-round1"].data.metrics
    assert 0 <= augment["attack_attack_success_rate"] <= 1 and augment["attack_attacked_rows"] == 30
    rows = dataset_rows(runs["augment-round1"].data.tags["multistep.output"], "train")
    adversarial = [r for r in rows if r["operation"] == "adversarial"]
    correct = round(augment["attack_clean_accuracy"] * 30)
    assert len(adversarial) == round(augment["attack_attack_success_rate"] * correct) == augment["adversarial_rows"]
    tags = MlflowClient().get_model_version("mini", result["model"].rsplit("/", 1)[1]).tags
    robust, clean = float(tags["metric.test_robust_accuracy"]), float(tags["metric.test_clean_accuracy"])
    assert 0 <= robust <= clean <= 1 and "metric.test_attack_success_rate" in tags
    history = MlflowClient().get_metric_history(runs["finetune-round1"].info.run_id, "adv_loss")
    assert history and all(m.value >= 0 for m in history)


def test_a_teacher_with_other_labels_stops_the_run_before_anything_is_registered(home, sentiment, tmp_path):
    teacher = tmp_path / "teacher"
    _, tok = models.load("package:minilm")
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        id2label={0: "x", 1: "y"}, label2id={"x": 0, "y": 1})
    BertForSequenceClassification(config).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    spec = load("configs/sst2-augment.yaml", overrides(sentiment, "augment.eda=null", "augment.pseudo=null", f"augment.teacher={teacher}", "augment.adversarial={}"))
    with pytest.raises(UserError, match=r"augment\.teacher .* predicts the labels \['x', 'y'\] but the data's labels are \['0', '1'\]"):
        llm_pipeline(spec)
    assert MlflowClient().search_registered_models() == []


def test_an_empty_pool_exits_non_zero_before_training(home, sentiment, tmp_path, run_cli, registered_versions):
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\n")
    args = [f"--set={o}" for o in overrides(sentiment, "augment.eda=null", f"augment.pseudo.pool=[{empty}]")]
    done = run_cli(["run", "configs/sst2-augment.yaml", *args], home)
    assert done.returncode == 2, done.stderr
    assert "augment.pseudo.pool" in done.stderr and "holds no rows" in done.stderr and "Traceback" not in done.stderr
    assert registered_versions(home) == []


@pytest.mark.parametrize("setting, message", [
    ("augment.eda.copies=0", r"augment\.eda\.copies` Input should be greater than or equal to 1"),
    ("augment.eda.swap_rate=1.5", r"augment\.eda\.swap_rate` Input should be less than or equal to 1"),
    ("augment={}", r"augment has no operation"),
    ("augment.pseudo.threshold=2", r"augment\.pseudo\.threshold"),
    ("labeled.task=sft", r"augment works on classification data"),
])
def test_bad_augment_settings_name_the_key(sentiment, setting, message):
    with pytest.raises(UserError, match=message):
        load("configs/sst2-augment.yaml", overrides(sentiment, setting))


def test_rounds_adjust_the_strategy_and_stop_on_patience(home, sentiment, pool):
    spec = load("configs/sst2-augment.yaml", overrides(
        sentiment, "augment.eda=null", f"augment.pseudo.pool=[{pool}]", "augment.pseudo.threshold=0.0", "augment.pseudo.balance=false",
        "rounds={max_rounds: 4, patience: 1, min_delta: 1.0, strategies: [{lr_factor: 0.5, pseudo_refresh: true}]}",
    ))
    result = llm_pipeline(spec)
    runs = stage_runs(result["pipeline_run"])
    assert {"finetune-round1", "finetune-round2"} <= set(runs) and "finetune-round3" not in runs  # no gain of 1.0: patience 1 stops it
    assert result["model"] == result["finetuned"] == "models:/mini/1"  # round 1 stays the best, so it is the challenger
    assert float(runs["finetune-round2"].data.params["train.lr"]) == pytest.approx(0.005)  # lr ×0.5
    assert runs["augment-round2"].data.tags["multistep.input.teacher"] == "models:/mini/1"  # pseudo-labels from the best so far
    assert "teacher" not in " ".join(runs["augment-round1"].data.tags)  # round 1 has no teacher yet
    pipeline = MlflowClient().get_run(result["pipeline_run"])
    history = MlflowClient().get_metric_history(result["pipeline_run"], "round_validation_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert pipeline.data.tags["multistep.round.2"].startswith("lr ×0.5, pseudo-label refresh → models:/mini/2")
    assert str(MlflowClient().get_model_version_by_alias("mini", "challenger").version) == "1"


def test_rounds_settings_that_do_not_fit_name_the_fix(sentiment):
    with pytest.raises(UserError, match="pseudo_refresh but augment.pseudo is not set"):
        load("configs/sst2-augment.yaml", overrides(sentiment, "augment.pseudo=null", "rounds={strategies: [{pseudo_refresh: true}]}"))
    with pytest.raises(UserError, match="two loops"):
        load("configs/sst2-augment.yaml", overrides(sentiment, "augment.rounds=2", "rounds={}"))
