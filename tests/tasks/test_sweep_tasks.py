"""A sweep's report reads QA and math versions: their metric on the version, and per-row scores for the paired test."""

from types import SimpleNamespace

import mlflow
import pandas as pd

from tasks import sweep
from tasks.backend import configure


def logged(table: dict, path: str) -> SimpleNamespace:
    """A run holding one MLflow table, standing in for the registering finetune run of a version."""
    with mlflow.start_run(experiment_id=configure("sweep-tasks")) as run:
        mlflow.log_table(pd.DataFrame(table), path)
    return SimpleNamespace(run_id=run.info.run_id)


def test_per_row_scores_of_extractive_qa_are_the_predictions_tables(home):
    version = logged(
        {
            "question": ["q1", "q2"],
            "gold": ["a", "b"],
            "prediction": ["a", "c"],
            "exact_match": [1.0, 0.0],
            "f1": [1.0, 0.5],
        },
        "evaluation/test_predictions.json",
    )
    plan = SimpleNamespace(split="test", task="extractive-qa", metric="f1")
    found = sweep._per_row(plan, {}, version)
    assert found.keys == [("q1", "a"), ("q2", "b")] and found.values.tolist() == [1.0, 0.5]
    assert sweep._value({"metric.test_f1": "0.75"}, "extractive-qa", "f1", "test") == 0.75
    assert sweep.GATE_METRIC["extractive-qa"] == "f1" and sweep.GATE_METRIC["math"] == "answer_accuracy"


def test_per_row_scores_of_math_compare_the_extracted_answer_with_the_solutions_final_number(home):
    version = logged(
        {
            "prompt": ["p1", "p2", "p3"],
            "reference": ["so 3\n#### 1,234", "#### 7", "#### 2"],
            "after_answer": ["1234", "8", ""],  # right (commas aside), wrong, no number
        },
        "generations.json",
    )
    plan = SimpleNamespace(split="test", task="math", metric="answer_accuracy")
    found = sweep._per_row(plan, {}, version)
    assert found.values.tolist() == [1.0, 0.0, 0.0] and found.keys[0] == ("p1", "so 3\n#### 1,234")
    # math's generation scores ride on the version without a split prefix, like SFT's
    assert sweep._value({"metric.answer_accuracy": "0.5"}, "math", "answer_accuracy", "test") == 0.5
