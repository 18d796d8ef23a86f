"""Math (GSM8K) labeled data: gzipped JSONL read as JSONL, worked solutions kept with their annotations stripped (or
kept), and a solution without `#### <number>` an error naming file:line, or dropped and counted when allowed."""

import gzip
import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tasks.data import labeled
from tasks.data.labeled import read, rows
from tasks.data.labeled import stage as body
from tasks.data.labeled.spec import LabeledSpec
from tasks.errors import UserError
from tasks.tracking import stage_run

RECORDS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in all?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
    },
    {"question": "Weng earns $12 an hour. How much for 50 minutes?", "answer": "12/60 = $<<12/60=0.2>>0.2\n#### 10"},
    {
        "question": "A box holds 1,000 pins. How many in 2 boxes?",
        "answer": "2 x 1,000 = <<2*1000=2000>>2,000\n#### 2,000",
    },
]
MISSING = {"question": "How many legs do 3 cats have?", "answer": "3 x 4 = <<3*4=12>>12 legs."}


def gsm8k(path: Path, records: list[dict]) -> str:
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    return str(path)


def spec(train: str, **kw) -> LabeledSpec:
    return LabeledSpec(
        task="math",
        train=[train],
        prompt_column="question",
        response_column="answer",
        prompt_template="Solve: {prompt}",
        split={"validation": 0, "test": 0},
        **kw,
    )


def built(s: LabeledSpec) -> tuple[dict, dict]:
    return rows.build(s, read.read_splits(s))


def test_gzipped_jsonl_gives_math_pairs_with_the_annotations_stripped(tmp_path):
    train = gsm8k(tmp_path / "train.jsonl.gz", RECORDS)
    out, counts = built(spec(train))
    assert out["train"][0] == {
        "prompt": "Solve: " + RECORDS[0]["question"],
        "response": "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72",
        "origin": f"{train}:1",
    }
    assert [r["response"] for r in out["train"][1:]] == ["12/60 = $0.2\n#### 10", "2 x 1,000 = 2,000\n#### 2,000"]
    assert counts["removed"]["no_final_answer"] == {"train": 0, "validation": 0, "test": 0}
    kept, _ = built(spec(train, keep_annotations=True))
    assert [r["response"] for r in kept["train"]] == [r["answer"] for r in RECORDS]
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    gsm8k(folder / "train.jsonl.gz", RECORDS)  # a folder's .jsonl.gz files count as JSONL too
    assert [r["response"] for r in built(spec(str(folder)))[0]["train"]] == [r["response"] for r in out["train"]]


def test_a_solution_without_a_final_answer_is_an_error_naming_its_line(tmp_path):
    train = gsm8k(tmp_path / "train.jsonl.gz", [RECORDS[0], MISSING, RECORDS[1]])
    with pytest.raises(UserError) as caught:
        built(spec(train))
    assert str(caught.value) == (
        f"{train}:2: the solution has no final answer `#### <number>`; end it with one, "
        "or set labeled.allow_missing_answer to true to drop such rows"
    )


def test_allowed_missing_answers_are_dropped_and_counted_on_the_card(home, tmp_path):
    train = gsm8k(tmp_path / "train.jsonl.gz", [RECORDS[0], MISSING, RECORDS[1], {**MISSING, "question": "Again?"}])
    test = gsm8k(tmp_path / "test.jsonl.gz", [RECORDS[2]])
    s = spec(train, allow_missing_answer=True).replace(test=[test])
    names, digests = read.source_names(s), read.source_digests(s)
    with stage_run("labeled", s, names, code="tasks.data.labeled.stage", experiment="test", digests=digests) as ctx:
        ctx.output = body.run(s, ctx)
    card = labeled.card(ctx.output)
    assert card["task"] == "math"
    assert card["removed"]["no_final_answer"] == {"train": 2, "validation": 0, "test": 0}
    assert card["rows_read"]["train"] == 4 and card["splits"]["train"]["rows"] == 2
    assert [r["origin"] for r in labeled.load_rows(ctx.output, "train")] == [f"{train}:1", f"{train}:3"]
    md = Path(mlflow.artifacts.download_artifacts(f"{ctx.output}/card.md")).read_text()
    assert "Solutions without a `#### <number>` final answer, dropped: 2 train, 0 validation, 0 test" in md
    assert MlflowClient().get_run(ctx.run_id).data.metrics["removed_no_final_answer"] == 2


def test_a_split_with_no_final_answer_at_all_names_the_column_to_check(tmp_path):
    train = gsm8k(tmp_path / "train.jsonl.gz", [MISSING, {**MISSING, "question": "Again?"}])
    with pytest.raises(
        UserError,
        match=r"^labeled.train: none of its 2 solutions ends in `#### <number>`; check labeled.response_column",
    ):
        built(spec(train, allow_missing_answer=True))


def test_a_jsonl_gz_that_is_not_gzip_is_named(tmp_path):
    train = tmp_path / "train.jsonl.gz"
    train.write_text(json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(
        UserError, match=rf"^{train}: not a readable gzip file .*; check the file or drop the .gz from its name"
    ):
        built(spec(str(train)))
