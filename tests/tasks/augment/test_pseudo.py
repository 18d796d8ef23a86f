"""Pseudo-labels: the pool read and filtered, confident rows kept and balanced, with provenance."""

import json

import pytest

from tasks.augment.pseudo import label, read_pool
from tasks.augment.spec import PseudoLabelSpec
from tasks.errors import UserError
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


def test_bad_pools_name_the_setting_and_the_fix(tmp_path):
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
    rows, stats = label(
        model,
        tok,
        pool,
        LABELS,
        PseudoLabelSpec(pool=["x"], threshold=0.9, per_class=None, balance=False),
        "models:/t/3",
        32,
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
        model, tok, pool, LABELS, PseudoLabelSpec(pool=["x"], threshold=0.9, per_class=None), "t", 32
    )
    assert stats["pseudo_confident"] == {"neg": 4, "pos": 3} and stats["pseudo_kept"] == {"neg": 3, "pos": 3}
    assert sum(r["label"] == "neg" for r in balanced) == 3

    strict, _ = label(
        model, tok, pool, LABELS, PseudoLabelSpec(pool=["x"], threshold=0.99, balance=False, per_class=1), "t", 32
    )
    assert [r["text"] for r in strict] == ["good great movie"]  # the most confident positive; no negative reaches 0.99
