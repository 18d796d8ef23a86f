"""Extractive QA pieces on hand-made inputs: windows and offsets, n-best post-processing, SQuAD EM/F1, readers, the
article split and the misaligned-answer count."""

import gzip
import json

import numpy as np
import pytest

from tasks import qa_scores, spans
from tasks.data import clean
from tasks.data.labeled import read, rows
from tasks.data.labeled.spec import LabeledSpec
from tasks.errors import UserError
from tasks.finetune import qa
from tasks.model import locate
from tasks.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(locate("package:minilm").tokenizer)


def long_row(answer: str = "Fredville City") -> dict:
    context = " ".join(f"word{i}" for i in range(120)) + f" The capital of Freedonia is {answer}. "
    context += " ".join(f"later{i}" for i in range(80))
    return {
        "question": "  What is the capital of Freedonia?",
        "context": context,
        "answers": [{"text": answer, "answer_start": context.index(answer)}],
    }


def test_a_known_answer_in_a_long_context_round_trips_through_windows_and_offsets(tok):
    row, how = long_row(), spans.settings(64, 16)
    features, found, dropped = qa.encode(tok, [row], how, train=True)
    assert len(found.example) > 5 and dropped == 0  # the context spans many windows
    labelled = [i for i, s in enumerate(features.starts) if s]
    assert labelled  # the windows that hold the whole answer point at it; the others at [CLS]
    for i in labelled:
        first, last = found.offsets[i][features.starts[i]], found.offsets[i][features.ends[i]]
        assert row["context"][first[0] : last[1]] == "Fredville City"
    # Logits that point at the answer in one window, and elsewhere at a higher-scoring [CLS] and question token:
    # post-processing keeps to context tokens and maps the tokens back to exactly the answer's characters.
    start, end = np.zeros((len(found.example), 64)), np.zeros((len(found.example), 64))
    start[:, 0] = end[:, 0] = 50
    start[:, 2] = end[:, 3] = 40
    start[labelled[0], features.starts[labelled[0]]] = end[labelled[0], features.ends[labelled[0]]] = 10
    assert spans.best_answers(start, end, found, [row], how) == ["Fredville City"]


def test_post_processing_honours_max_answer_length_and_n_best(tok):
    row = {
        "question": "q?",
        "context": "alpha beta gamma delta epsilon",
        "answers": [{"text": "beta", "answer_start": 6}],
    }
    found = spans.windows(tok, [row], spans.settings(32, 8))
    inside = [j for j, o in enumerate(found.offsets[0]) if o is not None]  # alpha .. epsilon
    start, end = np.zeros((1, 32)), np.zeros((1, 32))
    start[0, inside[0]], end[0, inside[4]] = 9, 9  # alpha..epsilon: five tokens
    start[0, inside[1]], end[0, inside[1]] = 5, 5  # beta
    assert spans.best_answers(start, end, found, [row], spans.settings(32, 8)) == ["alpha beta gamma delta epsilon"]
    # alpha + beta (9 + 5) is the best of the spans of at most 4 tokens
    assert spans.best_answers(start, end, found, [row], spans.settings(32, 8, max_answer_length=4)) == ["alpha beta"]
    # n_best 1 keeps only the top start (alpha) and end (epsilon): too long for 4 tokens, so no span at all
    assert spans.best_answers(start, end, found, [row], spans.settings(32, 8, max_answer_length=4, n_best=1)) == [""]


def test_an_answer_no_window_can_hold_is_dropped_from_training_and_counted(tok):
    long_answer = " ".join(f"part{i}" for i in range(30))
    features, found, dropped = qa.encode(tok, [long_row(long_answer), long_row()], spans.settings(48, 8), train=True)
    assert dropped == 1
    assert len(features) == found.example.count(1)  # only the second question's windows train
    _, _, kept = qa.encode(tok, [long_row(long_answer)], spans.settings(48, 8), train=False)
    assert kept == 0  # validation keeps every question: it is scored whatever the windows hold


def test_exact_match_and_f1_follow_the_official_normalisation():
    assert qa_scores.normalize("  The Cat,   sat!  on a   mat. ") == "cat sat on mat"
    assert qa_scores.normalize("Anthem theatre") == "anthem theatre"  # articles only as whole words
    assert qa_scores.exact_match("the Denver Broncos!", "Denver  Broncos") == 1.0
    # pred tokens {cat, sat, on, mat}, gold {cat, on, mat}: precision 3/4, recall 1, F1 6/7
    assert qa_scores.f1("The cat sat on a mat", "cat on the mat") == pytest.approx(6 / 7)
    assert qa_scores.f1("x b b", "b b c") == pytest.approx(2 / 3)  # tokens counted with multiplicity
    assert qa_scores.f1("a b b", "b b c") == pytest.approx(0.8)  # "a" is an article: P 2/2, R 2/3
    assert qa_scores.f1("the", "a") == 0.0  # both empty after normalising: nothing shared
    found, per = qa_scores.scores(["Denver", "cat sat"], [["Denver Broncos", "denver"], ["dog", "the cat"]])
    assert per["exact_match"].tolist() == [1.0, 0.0] and per["f1"] == pytest.approx([1.0, 2 / 3])
    assert found == pytest.approx({"exact_match": 0.5, "f1": 5 / 6})


def squad_json(articles: int, paragraphs: int = 2, questions: int = 2, titled: bool = True) -> dict:
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            context = f"Article {a} paragraph {p} says the number is {a * 10 + p} today."
            qas = [
                {
                    "id": f"{a}-{p}-{q}",
                    "question": f"What number does article {a} paragraph {p} give ({q})?",
                    "answers": [{"text": str(a * 10 + p), "answer_start": context.index(f"is {a * 10 + p}") + 3}],
                }
                for q in range(questions)
            ]
            paras.append({"context": context, "qas": qas})
        data.append({**({"title": f"Title_{a}"} if titled else {}), "paragraphs": paras})
    return {"data": data, "version": "1.1"}


def build(tmp_path, doc: dict, **settings):
    path = tmp_path / "squad.json.gz"
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    spec = LabeledSpec(task="extractive-qa", train=[str(path)], **settings)
    return rows.build(spec, read.read_splits(spec))


@pytest.mark.parametrize("titled", [True, False], ids=["by title", "by context"])
def test_the_article_split_never_puts_one_article_in_two_splits(tmp_path, titled):
    splits, _ = build(tmp_path, squad_json(40, titled=titled), split={"validation": 0.2, "test": 0.2, "salt": "s"})
    key = (lambda r: r["title"]) if titled else (lambda r: r["context"])
    groups = {name: {key(r) for r in found} for name, found in splits.items()}
    assert all(groups.values())
    assert not (groups["train"] & groups["validation"] or groups["train"] & groups["test"])
    assert not groups["validation"] & groups["test"]
    assert sum(len(v) for v in splits.values()) == 40 * 2 * 2
    # stable across machines: the salted content hash of the title (context) alone decides
    everything = groups["train"] | groups["validation"] | groups["test"]
    assert groups["validation"] == {g for g in everything if clean._unit("s", g) < 0.2}
    assert len(groups["validation"]) < 40 * (1 if titled else 2)


def test_a_misaligned_answer_is_dropped_and_counted(tmp_path):
    doc = squad_json(3)
    qas = doc["data"][0]["paragraphs"][0]["qas"]
    qas[0]["answers"].append({"text": "0", "answer_start": 2})  # points at "t", not "0": dropped, the question stays
    qas[1]["answers"][0]["answer_start"] += 1  # its only answer: the question goes too
    splits, counts = build(tmp_path, doc, split={"validation": 0.0, "test": 0.0})
    assert counts["misaligned_answers"]["train"] == 2 and counts["removed"]["misaligned_answer"]["train"] == 1
    assert len(splits["train"]) == 3 * 2 * 2 - 1
    assert splits["train"][0]["answers"] == [{"text": "0", "answer_start": qas[0]["answers"][0]["answer_start"]}]


def test_jsonl_rows_with_answers_columns_and_a_title_column(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps({"q": "Who?", "c": "Ada wrote it.", "a": {"text": ["Ada"], "answer_start": [0]}, "t": "X"}) + "\n"
    )
    spec = LabeledSpec(
        task="extractive-qa",
        train=[str(path)],
        question_column="q",
        context_column="c",
        answers_column="a",
        title_column="t",
    )
    (row,) = read.read_splits(spec)["train"]
    assert row == {
        "question": "Who?",
        "context": "Ada wrote it.",
        "answers": [{"text": "Ada", "answer_start": 0}],
        "title": "X",
        "origin": f"{path}:1",
    }


def test_a_record_without_a_question_names_the_file_and_the_record(tmp_path):
    doc = squad_json(2)
    doc["data"][1]["paragraphs"][0]["qas"][1]["question"] = " "
    with pytest.raises(UserError) as caught:
        build(tmp_path, doc)
    assert str(caught.value) == (
        f"{tmp_path / 'squad.json.gz'}:data[1].paragraphs[0].qas[1] id 1-0-1: the record has no question; "
        "give it one or remove the record"
    )


def test_training_windows_come_in_length_groups_and_validation_windows_in_order(home, tok):
    from types import SimpleNamespace

    from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding

    from tasks.finetune.spec import FinetuneSpec
    from tasks.finetune.trainer import build
    from tasks.model import load

    lengths = [5 + (7 * i) % 40 for i in range(60)]  # 60 windows of 5 to 44 tokens, in no order
    features = qa.Features({"input_ids": [[tok.cls_token_id] * n for n in lengths]}, [0] * 60, [0] * 60)
    train = qa.grouped(features, batch_size=4, max_steps=20, seed=0)  # 80 windows: two epochs, each all 60 once
    assert len(train) == 120 and sorted(train.order[:60]) == sorted(train.order[60:]) == list(range(60))
    assert train.order[:60] != train.order[60:]  # each epoch shuffled afresh

    def padded(order: list[int]) -> int:  # tokens a batch of 4 costs: 4 × its longest window
        return sum(4 * max(lengths[i] for i in order[k : k + 4]) for k in range(0, len(order), 4))

    assert padded(train.order[:60]) < 0.8 * padded(list(range(60)))  # length groups pad far less than no order

    spec = FinetuneSpec(train={"max_steps": 20, "batch_size": 4, "checkpoint_every": 10})
    model, _ = load("package:minilm", auto=AutoModelForQuestionAnswering)
    trainer = build(
        spec, model, tok, train, features, DataCollatorWithPadding(tok), SimpleNamespace(run_id="r"), metric="f1",
        greater=True, ordered=True,
    )  # fmt: skip
    # Training reads the grouped order as given; validation comes in the windows' own order (compute_metrics needs it).
    seen = [len(b["input_ids"][0]) for b in trainer.get_train_dataloader()][:3]
    assert seen == [max(lengths[i] for i in train.order[k * 4 : k * 4 + 4]) for k in range(3)]
    evaluated = [int(b["attention_mask"].sum(1).max()) for b in trainer.get_eval_dataloader()]
    assert evaluated == [max(lengths[k : k + 4]) for k in range(0, 60, 4)]
