"""Pseudo-labels: the pool read and filtered, confident rows kept and balanced, with provenance."""

import json

import numpy as np
import pytest
import torch

from tasks.augment.pseudo import label, read_pool, teach
from tasks.augment.spec import PseudoLabelSpec
from tasks.errors import UserError
from tasks.predict import probabilities
from tests.tasks.augment.keyword_model import KeywordModel, tokenizer

LABELS = ["neg", "pos"]


def pool_file(tmp_path, texts, column="sentence"):
    path = tmp_path / "pool.tsv"
    path.write_text(f"{column}\tlabel\n" + "".join(f"{t}\t9\n" for t in texts))
    return path


def test_the_pool_drops_labeled_and_empty_rows_and_ignores_its_labels(tmp_path):
    path = pool_file(tmp_path, ["the good movie", "the  dull plot ", "a labeled row", " "])
    rows, counts = read_pool(PseudoLabelSpec(pool=[str(path)], text_column="sentence"), exclude={"a labeled row"})
    assert [r["text"] for r in rows] == ["the good movie", "the dull plot"]  # normalised like labeled data
    assert rows[0]["origin"].endswith("pool.tsv:2") and set(rows[0]) == {"text", "origin"}
    assert counts == {"pool_rows_read": 4, "pool_rows_labeled_already": 1, "pool_rows_scored": 2}


def test_min_words_leaves_fragments_out_before_the_pool_is_capped(tmp_path):
    short = [f"phrase {i}" for i in range(50)]
    path = pool_file(tmp_path, [*short[:25], "a whole sentence of six words", *short[25:], "another long row of words"])
    spec = PseudoLabelSpec(pool=[str(path)], text_column="sentence", min_words=5, max_pool_rows=2)
    rows, counts = read_pool(spec, exclude=set())
    # Without the filter the cap of 2 would draw from 52 rows, almost surely fragments.
    assert [r["text"] for r in rows] == ["a whole sentence of six words", "another long row of words"]
    assert counts["pool_rows_too_short"] == 50 and counts["pool_rows_scored"] == 2
    rows, counts = read_pool(spec.model_copy(update={"min_words": None}), exclude=set())
    assert "pool_rows_too_short" not in counts and any(
        r["text"] in short for r in rows
    )  # the cap alone keeps fragments


def test_bad_pools_name_the_setting_and_the_fix(tmp_path):
    with pytest.raises(
        UserError, match=r"augment\.pseudo\.min_words 4: none of the 1 .* lower augment\.pseudo\.min_words"
    ):
        read_pool(PseudoLabelSpec(pool=[str(pool_file(tmp_path, ["x y"]))], text_column="sentence", min_words=4), set())
    with pytest.raises(UserError, match=r"augment\.pseudo\.pool .* holds no rows"):
        read_pool(PseudoLabelSpec(pool=[str(pool_file(tmp_path, []))], text_column="sentence"), exclude=set())
    with pytest.raises(UserError, match="already in the labeled data"):
        read_pool(PseudoLabelSpec(pool=[str(pool_file(tmp_path, ["x y"]))], text_column="sentence"), exclude={"x y"})
    with pytest.raises(UserError, match=r"augment\.pseudo\.text_column"):
        read_pool(
            PseudoLabelSpec(pool=[str(pool_file(tmp_path, ["x y"], column="review"))], text_column="sentence"),
            exclude=set(),
        )


def test_confident_rows_are_kept_balanced_and_carry_their_teacher(tmp_path):
    tok = tokenizer(tmp_path)
    model = KeywordModel(tok)
    # p(pos) = 0.9995 with two positive words, 0.924 with one; p(neg) = 0.924 with none.
    texts = [
        "good great movie",
        "great good plot",
        "good movie",
        "the dull plot",
        "bad film",
        "the bad plot",
        "dull film",
    ]
    pool = [{"text": t, "origin": f"pool:{i}"} for i, t in enumerate(texts)]
    log_probs = teach([(model, tok)], texts, 32)
    rows, stats = label(
        log_probs,
        pool,
        LABELS,
        PseudoLabelSpec(pool=["x"], threshold=0.9, per_class=None, balance=False),
        "models:/t/3",
        gold_rows=100,
    )
    assert [(r["text"], r["label"]) for r in rows] == [
        ("the dull plot", "neg"),
        ("bad film", "neg"),
        ("the bad plot", "neg"),
        ("dull film", "neg"),
        ("good great movie", "pos"),
        ("great good plot", "pos"),
        ("good movie", "pos"),
    ]
    assert all(
        r["teacher"] == "models:/t/3" and r["operation"] == "pseudo" and r["source_row"] == r["origin"] for r in rows
    )
    assert rows[4]["confidence"] > 0.999 and 0.9 < rows[0]["confidence"] < 0.93
    assert json.loads(rows[0]["params"])["threshold"] == 0.9

    balanced, stats = label(
        log_probs, pool, LABELS, PseudoLabelSpec(pool=["x"], threshold=0.9, per_class=None), "t", 100
    )
    assert stats["pseudo_confident"] == {"neg": 4, "pos": 3} and stats["pseudo_kept"] == {"neg": 3, "pos": 3}
    assert sum(r["label"] == "neg" for r in balanced) == 3

    strict, _ = label(
        log_probs, pool, LABELS, PseudoLabelSpec(pool=["x"], threshold=0.99, balance=False, per_class=1), "t", 100
    )
    assert [r["text"] for r in strict] == ["good great movie"]  # the most confident positive; no negative reaches 0.99


def keyword_teacher(tok, weights: dict[str, float]) -> KeywordModel:
    """Positive iff the summed weights of the text's words exceed 2.5: logits (0, sum − 2.5)."""
    model = KeywordModel(tok, positive=())
    with torch.no_grad():
        for word, w in weights.items():
            model.emb.weight[tok.convert_tokens_to_ids(word)] = w
    return model


def test_the_ratio_cap_keeps_the_most_confident_rows(tmp_path):
    tok = tokenizer(tmp_path)
    teacher = keyword_teacher(tok, {"good": 3.0, "great": 4.0})
    # p(pos): 0.62, 0.82, 0.97, 0.99, 0.9995; p(neg) 0.92 for the three without a positive word.
    texts = [
        "good film",
        "great film",
        "good good plot",
        "great great plot",
        "good great great",
        "dull film",
        "the plot",
        "bad",
    ]
    pool = [{"text": t, "origin": f"pool:{i}"} for i, t in enumerate(texts)]
    log_probs = teach([(teacher, tok)], texts, 32)
    confidence = np.exp(log_probs).max(axis=1)
    spec = PseudoLabelSpec(pool=["x"], threshold=0.0, per_class=None, balance=False, max_ratio=0.5)
    rows, stats = label(log_probs, pool, LABELS, spec, "t", gold_rows=10)  # 0.5 × 10 gold rows: 5 of the 8
    most_confident = {texts[i] for i in np.argsort(-confidence, kind="stable")[:5]}
    assert len(rows) == 5 and {r["text"] for r in rows} == most_confident
    assert most_confident == {"great great plot", "good great great", "good good plot", "dull film", "the plot"}
    assert stats["pseudo_capped_by_ratio"] == 3 and stats["pseudo_kept"] == {"neg": 2, "pos": 3}

    # balanced: the same share per label, each label's most confident
    rows, stats = label(log_probs, pool, LABELS, spec.replace(balance=True), "t", gold_rows=10)
    assert stats["pseudo_kept"] == {"neg": 2, "pos": 2} and {r["text"] for r in rows} == {
        "dull film",
        "the plot",
        "great great plot",
        "good great great",
    }
    # no cap: all 8 (balance off)
    rows, _ = label(log_probs, pool, LABELS, spec.replace(max_ratio=None), "t", gold_rows=1)
    assert len(rows) == 8


def test_an_ensemble_labels_by_the_mean_of_its_teachers_probabilities(tmp_path):
    tok = tokenizer(tmp_path)
    a, b = keyword_teacher(tok, {"good": 3.0}), keyword_teacher(tok, {"great": 5.0})
    texts = ["good film", "good good film", "great great film", "the dull plot"]
    pool = [{"text": t, "origin": f"pool:{i}"} for i, t in enumerate(texts)]
    alone = [probabilities(m, tok, texts).argmax(1).tolist() for m in (a, b)]
    assert alone == [[1, 1, 0, 0], [0, 0, 1, 0]]  # the teachers disagree on the first three rows
    mean = (probabilities(a, tok, texts) + probabilities(b, tok, texts)) / 2
    # good film: (0.62 + 0.08) / 2 → neg; good good film: (0.97 + 0.08) / 2 → pos; great great film: (0.08 + 0.9994) / 2 → pos
    assert mean.argmax(1).tolist() == [0, 1, 1, 0]
    spec = PseudoLabelSpec(pool=["x"], threshold=0.0, per_class=None, balance=False, max_ratio=None)
    rows, _ = label(teach([(a, tok), (b, tok)], texts, 32), pool, LABELS, spec, "a + b", gold_rows=1)
    by_text = {r["text"]: r for r in rows}
    assert [by_text[t]["label"] for t in texts] == ["neg", "pos", "pos", "neg"]
    assert [by_text[t]["confidence"] for t in texts] == pytest.approx(mean.max(1).tolist(), abs=1e-6)
    # the stored teacher logits are the log of the mean probabilities
    stored = np.array([by_text[t]["teacher_logits"] for t in texts])
    assert np.allclose(stored, np.log(mean), atol=1e-5)


def test_a_prompt_teachers_probabilities_join_the_mean(tmp_path):
    tok = tokenizer(tmp_path)
    model = KeywordModel(tok)
    texts = ["good movie", "the dull plot"]
    own = probabilities(model, tok, texts, log=True)
    prompted = np.log(np.array([[0.9, 0.1], [0.5, 0.5]]))
    got = teach([(model, tok)], texts, 32, also=(prompted,))
    np.testing.assert_allclose(np.exp(got), (np.exp(own) + np.exp(prompted)) / 2, rtol=1e-5)
    np.testing.assert_allclose(teach([], texts, 32, also=(prompted,)), prompted)  # alone: its own, unchanged
