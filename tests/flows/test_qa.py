"""Extractive QA through llm_pipeline on package:minilm: a tiny SQuAD file in, a registered span model out, scored by the
gate exactly as the version says."""

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks.data import labeled
from tasks.data.prepared import root

pytestmark = pytest.mark.usefixtures("prefect_api")

NAMES = ["Ada", "Boris", "Chen", "Dora", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jana", "Karl", "Lena"]
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Quito", "Riga", "Sofia", "Turin", "Hanoi", "Kyoto", "Dakar", "Perth"]


@pytest.fixture
def people(tmp_path) -> Path:
    """24 one-paragraph articles, `<name> was born in <city>.`, and one answer whose answer_start misses its text."""
    data = []
    for i in range(24):
        name, city = NAMES[i % 12], CITIES[(i * 5) % 12]
        context = f"{name} {i} was born in {city} and lived there for many years before moving away."
        qas = [
            {
                "id": f"q{i}",
                "question": f"Where was {name} {i} born?",
                "answers": [{"text": city, "answer_start": context.index(city)}],
            }
        ]
        data.append({"title": f"Person_{i}", "paragraphs": [{"context": context, "qas": qas}]})
    data[0]["paragraphs"][0]["qas"][0]["answers"].append({"text": "Paris", "answer_start": 1})
    path = tmp_path / "people.json"
    path.write_text(json.dumps({"data": data, "version": "1.1"}))
    return path


def test_a_span_model_is_registered_and_the_gate_scores_what_its_version_says(home, people):
    spec = load(
        "configs/squad-minilm.yaml",
        [
            "name=qa-tiny",
            f"labeled.train=[{people}]",
            "labeled.split.validation=0.2",
            "labeled.split.test=0.2",
            # every context shares "and lived there for many years before moving away": grouped, it is one group
            "labeled.split.group=false",
            "finetune.max_length=48",
            "finetune.doc_stride=8",
            "finetune.train.max_steps=12",
            "finetune.train.batch_size=8",
            "finetune.train.lr=0.0003",
            "finetune.train.warmup_steps=0",
            "finetune.train.checkpoint_every=6",
            "finetune.train.log_every=3",
        ],
    )
    result = llm_pipeline(spec)
    assert result["model"] == "models:/qa-tiny/1"
    version = MlflowClient().get_model_version("qa-tiny", "1")
    assert version.tags["multistep.doc_stride"] == "8" and version.tags["multistep.max_length"] == "48"
    # The gate scored the registered model on the same test rows with the same windows: the same numbers.
    gate = MlflowClient().get_run(result["gate"].split("/")[1]).data.metrics
    for metric in ("f1", "exact_match"):
        assert gate[f"challenger_{metric}"] == pytest.approx(float(version.tags[f"metric.test_{metric}"]), rel=1e-5)
    assert version.tags["gate.metric"] == "f1" and version.tags["gate.decision"] == "promoted"
    # No pipeline serves a span head: its description loads it with the project's loader.
    assert version.description.startswith(
        "**models:/qa-tiny/1**: extractive-QA span model fine-tuned from package:minilm"
    )
    assert 'model, tokenizer = load("models:/qa-tiny/1", auto=AutoModelForQuestionAnswering)' in version.description
    # 12 steps learn to copy the city out of the sentence (an untrained span head scores near 0 exact match)
    assert float(version.tags["metric.test_exact_match"]) >= 0.75
    # F1 at every checkpoint: the curve of validation F1 against steps
    history = MlflowClient().get_metric_history(version.run_id, "eval_f1")
    assert [m.step for m in history] == [6, 12]
    # ... scored on the validation windows in order: the best checkpoint's F1 is what scoring it afterwards gives
    # (length-grouped training batches once reordered the evaluation windows too, and the curve was noise)
    validation_f1 = MlflowClient().get_run(version.run_id).data.metrics["validation_f1"]
    assert max(m.value for m in history) == pytest.approx(validation_f1, abs=1e-6)
    table = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(f"runs:/{version.run_id}/evaluation/test_predictions.json")
        ).read_text()
    )
    assert table["columns"] == ["question", "gold", "prediction", "exact_match", "f1"]
    # the misaligned answer is dropped and counted, on card.json and card.md; its question stays with the good answer
    card = labeled.card(result["labeled"])
    (split,) = [s for s, n in card["misaligned_answers"].items() if n]
    assert card["misaligned_answers"][split] == 1 and sum(card["removed"]["misaligned_answer"].values()) == 0
    (first,) = [r for r in labeled.load_rows(result["labeled"], split) if r["title"] == "Person_0"]
    assert first["answers"] == [{"text": "Paris", "answer_start": first["context"].index("Paris")}]
    assert "answers whose answer_start misses their text (dropped)" in (root(result["labeled"]) / "card.md").read_text()
    assert sum(card["splits"][s]["rows"] for s in card["splits"]) == 24
