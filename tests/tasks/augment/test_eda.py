"""EDA: what each operation does to a row, what every new row keeps and records, protected words, determinism, the spec."""

import json
import random

import pytest
from pydantic import ValidationError

from tasks import synonyms
from tasks.augment.eda import augment
from tasks.augment.spec import EdaSpec
from tasks.synonyms import Synonyms

TABLE = {
    "movie": ["film", "picture"],
    "good": ["great", "fine", "decent"],
    "actor": ["performer", "player"],
    "plot": ["story", "storyline"],
    "awful": ["not", "terrible", "dreadful"],  # "not" is protected below: it must never be put in
    "slow": ["sluggish", "no"],
    "the": ["teh"],  # a stop word: never replaced, whatever the source says
    "funny": ["amusing", "comic"],
}
FAKE = Synonyms("fake", lambda word: TABLE.get(word, []))
PROTECTED = ["not", "no", "never"]
VOCAB = [
    "the",
    "movie",
    "is",
    "not",
    "good",
    "actor",
    "plot",
    "awful",
    "slow",
    "Movie",
    "NOT",
    "no,",
    "funny",
    ",",
    ".",
    "never",
    "Plot",
    "story",
]
OPS = ("synonym", "insert", "swap", "delete")


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "text": " ".join(rng.choices(VOCAB, k=rng.randint(1, 14))),
            "text_pair": f"pair {i}",
            "label": rng.choice(["pos", "neg"]),
            "origin": f"train:{i}",
            "lang": "en",
        }
        for i in range(n)
    ]


def _only(op: str, rate: float = 0.3, **kwargs) -> EdaSpec:
    return EdaSpec(**{f"{o}_rate": rate if o == op else 0 for o in OPS}, **kwargs)


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(word in it for word in short)


def _protected(words: list[str]) -> list[str]:
    return [w for w in words if w.lower().strip(",.") in PROTECTED]


def test_copies_per_row_in_input_order_with_provenance():
    rows = _rows(20)
    spec = EdaSpec(copies=3, seed=7)
    out = augment(rows, spec, FAKE)
    assert len(out) == 3 * len(rows)
    for i, new in enumerate(out):
        row = rows[i // 3]
        assert new["source_row"] == row["origin"]
        assert new["operation"] in {f"eda.{op}" for op in OPS}
        params = json.loads(new["params"])
        assert set(params) == {"rate", "changed", "copy", "seed"}
        assert params["copy"] == i % 3 and params["seed"] == 7 and params["rate"] == 0.1
        assert isinstance(params["changed"], int) and params["changed"] >= 0
        # Everything but the text stays as it was.
        assert {k: v for k, v in new.items() if k not in ("text", "source_row", "operation", "params")} == {
            k: v for k, v in row.items() if k != "text"
        }
    assert all(row.keys() == {"text", "text_pair", "label", "origin", "lang"} for row in rows)  # inputs untouched


def test_copies_spread_over_the_enabled_operations():
    out = augment(_rows(30), EdaSpec(copies=8), FAKE)
    for i in range(0, len(out), 8):
        ops = [r["operation"] for r in out[i : i + 8]]
        assert sorted(ops) == sorted(f"eda.{op}" for op in OPS for _ in range(2))
    assert len({out[i]["operation"] for i in range(0, len(out), 8)}) > 1  # the first operation differs between rows


def test_an_operation_at_rate_zero_is_never_chosen():
    out = augment(_rows(40), EdaSpec(synonym_rate=0, insert_rate=0, copies=5), FAKE)
    assert {r["operation"] for r in out} == {"eda.swap", "eda.delete"}


def test_same_seed_same_rows_in_any_order_and_another_seed_differs():
    rows = _rows(50)
    first = augment(rows, EdaSpec(seed=3), FAKE)
    assert augment(rows, EdaSpec(seed=3), FAKE) == first
    reordered = augment(rows[::-1], EdaSpec(seed=3), FAKE)
    by_origin = lambda out: sorted((r["source_row"], r["params"], r["text"]) for r in out)  # noqa: E731
    assert by_origin(reordered) == by_origin(first)
    other = augment(rows, EdaSpec(seed=4), FAKE)
    assert sum(a["text"] != b["text"] for a, b in zip(first, other)) > len(first) // 4


def test_synonym_replacement_keeps_length_and_uses_synonyms():
    rows = _rows(100)
    out = augment(rows, _only("synonym", copies=2), FAKE)
    for new in out:
        before, after = rows[int(new["source_row"].split(":")[1])]["text"].split(), new["text"].split()
        assert len(after) == len(before)
        diff = [(b, a) for b, a in zip(before, after) if b != a]
        assert len(diff) == json.loads(new["params"])["changed"] <= max(1, round(0.3 * len(before)))
        for b, a in diff:
            assert a.lower() in TABLE[b.lower()] and b.lower() != "the"
            assert a[0].isupper() == b[0].isupper()
    assert sum(json.loads(r["params"])["changed"] for r in out) > 50


def test_replacement_keeps_a_capital_first_letter():
    out = augment([{"text": "Movie", "origin": "a"}], _only("synonym"), FAKE)
    assert out[0]["text"] in {"Film", "Picture"}


def test_random_insertion_only_adds_synonyms_of_the_rows_words():
    rows = _rows(100)
    for new in augment(rows, _only("insert", copies=2), FAKE):
        before, after = rows[int(new["source_row"].split(":")[1])]["text"].split(), new["text"].split()
        changed = json.loads(new["params"])["changed"]
        assert len(after) - len(before) == changed and _is_subsequence(before, after)
        allowed = {s for w in before for s in TABLE.get(w.lower(), []) if w.lower() != "the"}
        added = list(after)
        for w in before:
            added.remove(w)
        assert set(added) <= allowed
        if allowed:
            assert changed == max(1, round(0.3 * len(before)))


def test_random_swap_keeps_the_words():
    rows = _rows(100)
    swapped = 0
    for new in augment(rows, _only("swap", copies=2), FAKE):
        before, after = rows[int(new["source_row"].split(":")[1])]["text"].split(), new["text"].split()
        assert sorted(after) == sorted(before)
        swapped += after != before
    assert swapped > 50


def test_random_deletion_only_removes_and_never_empties_a_row():
    rows = _rows(100)
    for new in augment(rows, _only("delete", rate=0.5, copies=2), FAKE):
        before, after = rows[int(new["source_row"].split(":")[1])]["text"].split(), new["text"].split()
        assert after and _is_subsequence(after, before)
        assert len(before) - len(after) == json.loads(new["params"])["changed"]
    everything = augment([{"text": "movie good plot awful", "origin": "a"}], _only("delete", rate=1.0, copies=5), FAKE)
    assert all(len(r["text"].split()) == 1 and r["text"] in {"movie", "good", "plot", "awful"} for r in everything)


def test_protected_words_are_never_replaced_removed_moved_or_inserted():
    rows = _rows(150)
    for seed in range(4):
        spec = EdaSpec(
            copies=8, synonym_rate=0.5, insert_rate=0.5, swap_rate=0.5, delete_rate=0.5, protected=PROTECTED, seed=seed
        )
        for new in augment(rows, spec, FAKE):
            before, after = rows[int(new["source_row"].split(":")[1])]["text"].split(), new["text"].split()
            assert _protected(after) == _protected(before), (new["operation"], before, after)
            if new["operation"] in ("eda.synonym", "eda.swap"):  # same length: protected words keep their places
                assert [i for i, w in enumerate(after) if w in _protected(before)] == [
                    i for i, w in enumerate(before) if w in _protected(before)
                ]


def test_an_operation_that_cannot_change_anything_keeps_the_row():
    spec = EdaSpec(copies=4, protected=PROTECTED)
    out = augment(
        [{"text": "not", "origin": "a", "label": "neg"}, {"text": "the of and", "origin": "b", "label": "pos"}],
        spec,
        FAKE,
    )
    assert len(out) == 8
    assert all(r["text"] == "not" and json.loads(r["params"])["changed"] == 0 for r in out[:4])
    assert {r["operation"]: r["text"] for r in out[4:] if r["operation"] in ("eda.synonym", "eda.insert")} == {
        "eda.synonym": "the of and",
        "eda.insert": "the of and",
    }


def test_long_inputs_show_progress(capsys):
    augment([{"text": "good movie", "origin": str(i)} for i in range(1001)], EdaSpec(copies=1), FAKE)
    assert "eda" in capsys.readouterr().err
    augment([{"text": "good movie", "origin": str(i)} for i in range(10)], EdaSpec(copies=1), FAKE)
    assert capsys.readouterr().err == ""


def test_every_rate_zero_is_refused_with_the_fix():
    with pytest.raises(
        ValidationError, match="augment.eda: every rate is 0, so EDA would only copy rows: set one of synonym_rate"
    ):
        EdaSpec(synonym_rate=0, insert_rate=0, swap_rate=0, delete_rate=0)


@pytest.mark.parametrize(
    "bad",
    [{"copies": 0}, {"copies": 65}, {"swap_rate": 1.5}, {"delete_rate": -0.1}, {"synonyms": "thesaurus"}, {"n_aug": 4}],
)
def test_out_of_range_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        EdaSpec(**bad)


def test_every_field_has_help_text():
    assert all(field.description for field in EdaSpec.model_fields.values())


def test_eda_with_wordnet_on_real_sentences():
    wordnet = synonyms.wordnet()
    assert wordnet is not None, (
        "WordNet is not installed: apt-get install wordnet-base (the Makefile's install step does)"
    )
    rows = [
        {"text": "a gorgeous , witty , seductive movie .", "label": "1", "origin": "sst2:1"},
        {"text": "the acting is n't good and the plot is awful", "label": "0", "origin": "sst2:2"},
    ]
    out = augment(rows, _only("synonym", rate=0.5, copies=4, protected=["good"]), wordnet)
    for new in out:
        before = next(r for r in rows if r["origin"] == new["source_row"])["text"].split()
        for b, a in zip(before, new["text"].split()):
            assert a == b or a in wordnet(b)
        assert ("good" in new["text"].split()) == ("good" in before)
    assert all(json.loads(r["params"])["changed"] >= 1 for r in out)
