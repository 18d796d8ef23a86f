"""The word-substitution attack on a classifier whose decision is known."""

import json

import pytest

from tasks.attack import adversarial_rows, attack, summary
from tasks.spec import AttackSpec
from tasks.synonyms import Synonyms
from tests.tasks.augment.keyword_model import KeywordModel, tokenizer

LABELS = ["neg", "pos"]
THESAURUS = {
    "good": ["great", "decent"],
    "movie": ["film"],
    "plot": ["movie"],
    "bad": ["dull"],
    "great": ["good", "fine"],
}


@pytest.fixture
def victim(tmp_path):
    tok = tokenizer(tmp_path)
    return KeywordModel(tok), tok


def synonyms():
    return Synonyms("test", lambda w: THESAURUS.get(w, []))


@pytest.mark.parametrize("importance", ["deletion", "gradient"])
def test_the_attack_flips_a_prediction_by_substituting_the_word_it_depends_on(victim, importance):
    model, tok = victim
    rows = [{"text": "the good movie", "label": "pos", "origin": "f:1"}]
    [outcome] = attack(model, tok, rows, LABELS, AttackSpec(importance=importance), synonyms())
    assert outcome.correct and outcome.flipped
    assert outcome.text == "the decent movie" and outcome.edits == [(1, "good", "decent")]
    assert LABELS[outcome.predicted] == "neg" and outcome.confidence > 0.5
    [row] = adversarial_rows([outcome], "models:/t/1", AttackSpec(), LABELS)
    # The adversarial row keeps its true label; provenance names the source row, the teacher and the edit.
    assert (
        row["label"] == "pos"
        and row["source_row"] == "f:1"
        and row["operation"] == "adversarial"
        and row["teacher"] == "models:/t/1"
    )
    assert json.loads(row["params"])["edits"] == [[1, "good", "decent"]]


def test_protected_words_misclassified_rows_and_the_edit_budget(victim):
    model, tok = victim
    rows = [
        {"text": "the good movie", "label": "pos", "origin": "a"},  # protected: cannot be flipped
        {"text": "the bad movie", "label": "pos", "origin": "b"},  # already wrong: not attacked
        {"text": "the dull plot", "label": "neg", "origin": "c"},  # right, but no synonym makes it positive
    ]
    outcomes = attack(model, tok, rows, LABELS, AttackSpec(protected=["GOOD"]), synonyms())
    assert [o.flipped for o in outcomes] == [False, False, False] and [o.correct for o in outcomes] == [
        True,
        False,
        True,
    ]
    assert all(e[1] != "good" for o in outcomes for e in o.edits)
    found = summary(outcomes)
    assert found == {
        "attacked_rows": 3,
        "clean_accuracy": 2 / 3,
        "robust_accuracy": 2 / 3,
        "attack_success_rate": 0.0,
        "mean_edits": 0.0,
    }


def test_rows_are_capped_by_content_hash_and_the_attack_is_deterministic(victim):
    model, tok = victim
    rows = [{"text": f"the good movie {'film ' * i}".strip(), "label": "pos", "origin": str(i)} for i in range(10)]
    spec = AttackSpec(rows=4)
    first = attack(model, tok, rows, LABELS, spec, synonyms())
    again = attack(model, tok, list(reversed(rows)), LABELS, spec, synonyms())
    assert len(first) == 4 and {o.row["origin"] for o in first} == {o.row["origin"] for o in again}
    assert summary(first)["attack_success_rate"] == 1.0
