"""Math reasoning end to end on a tiny model: GSM8K-shaped files → a registered model scored by its extracted answers,
greedy and voted, and a gate that decides on answer_accuracy as scoring computes it; sampling is seeded."""

import gzip
import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import model as models
from tasks.data.spec import TokenizerSpec
from tasks.evaluate import scoring
from tasks.predict import sample
from tasks.spec import ModelSpec
from tasks.tokenizer import train_tokenizer


@pytest.fixture
def tiny_lm(tmp_path) -> Path:
    """A freshly initialised 2-layer GPT-2 with a character tokenizer, saved as a model folder."""
    tok = train_tokenizer(["abcdefghijklmnopqrstuvwxyz 0123456789#?:\n"], TokenizerSpec(kind="char"))
    folder = tmp_path / "tiny-lm"
    models.build(ModelSpec(n_layer=2, n_head=2, n_embd=32, n_positions=64), tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def gsm8k(path: Path, golds: list[int]) -> str:
    records = [{"question": f"how many {i}?", "answer": f"so\n#### {g}"} for i, g in enumerate(golds)]
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    return str(path)


def test_sampling_draws_k_per_prompt_and_the_same_for_the_same_seed(tiny_lm):
    model, tok = models.load(str(tiny_lm))
    prompts = ["how many 1?", "how many 2?"]
    first = sample(model, tok, prompts, 6, k=3, temperature=1.5, seed=7)
    assert [len(p) for p in first] == [3, 3]
    assert sample(model, tok, prompts, 6, k=3, temperature=1.5, seed=7) == first
    assert sample(model, tok, prompts, 6, k=3, temperature=1.5, seed=8) != first  # an untrained model samples widely


@pytest.mark.usefixtures("prefect_api")
def test_math_pipeline_registers_a_model_and_the_gate_decides_on_answer_accuracy(home, tmp_path, tiny_lm):
    # Every training answer is 7: a few steps teach the tiny model to end with `#### 7`, so after training it gets the
    # four test problems whose answer is 7 and misses the one whose answer is 8 (accuracy 0.8); untrained, it gets none.
    train = gsm8k(tmp_path / "train.jsonl.gz", [7] * 40)
    test = gsm8k(tmp_path / "test.jsonl.gz", [7, 7, 8, 7, 7])
    spec = load(
        "configs/gsm8k-smollm2.yaml",
        [
            "name=mathy",
            f"labeled.train=[{train}]",
            f"labeled.test=[{test}]",
            "labeled.prompt_template='{prompt}'",
            "labeled.split.validation=0.1",
            f"finetune.init={tiny_lm}",
            "finetune.method=full",
            "finetune.max_length=48",
            "finetune.max_new_tokens=12",
            "finetune.generation_rows=5",
            "finetune.self_consistency={samples: 3, temperature: 0.2, rows: 4}",
            "finetune.train={max_steps: 30, batch_size: 8, lr: 0.01, warmup_steps: 0, log_every: 10, checkpoint_every: 15}",
            "gate.max_rows=10",
        ],
    )
    result = llm_pipeline(spec)
    assert result["model"] == "models:/mathy/1"
    version = MlflowClient().get_model_version("mathy", "1")
    metrics = MlflowClient().get_run(version.run_id).data.metrics
    assert metrics["answer_accuracy_before"] == 0.0 and metrics["answer_accuracy"] == 0.8
    assert metrics["no_answer_rate"] == 0.0
    # the vote ran on the first 4 problems (golds 7, 7, 8, 7): 3 of 4, as greedy decoding on the same 4
    assert metrics["voted_answer_accuracy"] == 0.75 == metrics["greedy_answer_accuracy_voted_rows"]
    table = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{version.run_id}/generations.json")).read_text()
    )
    columns = table["columns"]
    assert columns == [
        "prompt",
        "reference",
        "before",
        "before_answer",
        "before_voted",
        "after",
        "after_answer",
        "after_voted",
    ]
    assert [row[columns.index("after_answer")] for row in table["data"]] == ["7"] * 5
    assert [row[columns.index("after_voted")] for row in table["data"]] == ["7"] * 4 + [None]

    # The gate scored the challenger as `multistep evaluate` would, and decided on that number.
    scored = scoring.score(result["model"], result["labeled"], max_rows=10, max_new_tokens=12)
    assert scored.metrics == {"answer_accuracy": 0.8, "no_answer_rate": 0.0}
    assert scored.per_example["answer_accuracy"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert version.tags["gate.metric"] == "answer_accuracy" and version.tags["gate.challenger_value"] == "0.8"
    # ... and the model learnt no more than the most frequent training answer, 7, which gets the same 4 of 5: a tie with
    # the trivial baseline is no gain, so the first challenger is not promoted.
    assert version.tags["gate.baseline"] == "most-frequent-answer" and version.tags["gate.baseline_value"] == "0.8"
    assert version.tags["gate.decision"] == "rejected" and version.tags["gate.reason"] == (
        "no champion; the challenger's answer_accuracy 0.8 only equals the most-frequent-answer baseline's 0.8"
    )
