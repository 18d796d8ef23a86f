"""Validation and test drawn from train by whole groups of near duplicates (labeled.split.group), on hand-made rows
whose hashes are fixed: no drawn row equals or shares an 8-gram with a training row, a group lands whole, and the
card says how the split was made."""

import json

import pytest

from tasks.data import clean
from tasks.data.labeled import read, rows
from tasks.data.labeled import stage as body
from tasks.data.labeled.spec import SPLITS, LabeledSpec
from tasks.errors import UserError


def family(i: int) -> list[str]:
    """A sentence, a phrase of it sharing its first 8-gram with it, and the sentence again in capitals with punctuation
    (SST-2's training file holds such phrases); every 8-gram names i, so that no two families chain."""
    return [
        f"review {i} says film {i} is moving and {i} is sad",
        f"says film {i} is moving and {i} is",
        f"REVIEW {i} says film {i}, is moving and {i} is sad!",
    ]


def lone(i: int) -> str:
    return f"plain row {i}"


def jsonl(path, objects) -> str:
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    return str(path)


@pytest.fixture
def phrases(tmp_path) -> str:
    """30 families of 3 rows and 30 lone rows."""
    objects = [{"text": t, "label": "ab"[i % 2]} for i in range(30) for t in family(i)]
    return jsonl(tmp_path / "a.jsonl", objects + [{"text": lone(i), "label": "ab"[i % 2]} for i in range(30)])


def build(path: str, **split) -> tuple[dict, dict]:
    spec = LabeledSpec(train=[path], split={"validation": 0.2, "test": 0.1, "salt": "s", **split})
    return rows.build(spec, read.read_splits(spec))


def placed(out: dict) -> dict[str, str]:
    """Each text's split."""
    return {r["text"]: name for name, found in out.items() for r in found}


def clean_overlap(rows_: int) -> dict:
    return {
        "train_rows_exact": 0,
        "train_rows_ngram": 0,
        "eval_rows_exact": 0,
        "eval_rows_ngram": 0,
        "eval_rows": rows_,
        "eval_rows_inside": 0,
        "eval_rows_inside_under_min_words": 0,
    }


def test_no_drawn_row_equals_or_shares_an_ngram_with_a_training_row(phrases):
    out, counts = build(phrases)
    assert {n: len(v) for n, v in out.items()} == {"train": 78, "validation": 27, "test": 15}
    assert counts["contamination"]["validation"] == clean_overlap(27)
    assert counts["contamination"]["test"] == clean_overlap(15)
    # each row hashed alone, the same file puts phrases of one sentence on both sides
    old, before = build(phrases, group=False)
    assert {n: len(v) for n, v in old.items()} == {"train": 83, "validation": 23, "test": 14}
    assert before["contamination"]["validation"] == {
        "train_rows_exact": 8,
        "train_rows_ngram": 25,
        "eval_rows_exact": 8,
        "eval_rows_ngram": 17,
        "eval_rows": 23,
        "eval_rows_inside": 0,
        "eval_rows_inside_under_min_words": 0,
    }


def test_a_group_lands_whole_where_its_smallest_text_hashes(phrases):
    where = placed(build(phrases)[0])
    assert all(len({where[t] for t in family(i)}) == 1 for i in range(30))
    in_split = lambda name: [i for i in range(30) if where[family(i)[0]] == name]  # noqa: E731
    # the smallest text of a family is its capitalised sentence: the family goes where that text alone would
    assert (
        in_split("validation")
        == [i for i in range(30) if clean._unit("s", family(i)[2]) < 0.2]
        == [0, 7, 16, 18, 20, 21, 22]
    )
    assert in_split("test") == [i for i in range(30) if 0.2 <= clean._unit("s", family(i)[2]) < 0.3] == [2, 5, 13, 29]
    # so the rows that hash as themselves (lone rows, smallest texts) sit where they sat without groups
    alone = placed(build(phrases, group=False)[0])
    assert [t for t in where if t.startswith(("plain", "REVIEW")) and where[t] != alone[t]] == []


def test_the_grouped_draw_is_deterministic_and_the_salt_changes_it(phrases):
    out = build(phrases)
    assert build(phrases) == out
    where = placed(build(phrases, salt="t")[0])
    assert [i for i in range(30) if where[family(i)[0]] == "validation"] == [0, 4, 6, 8, 16, 17, 21, 24, 26, 27, 29]


def test_group_false_hashes_each_row_alone(phrases):
    out, counts = build(phrases, group=False)
    assert counts["groups"] is None and counts["split_from"]["validation"] == "drawn from train by content hash"
    everything = [t for i in range(30) for t in family(i)] + [lone(i) for i in range(30)]
    assert [r["text"] for r in out["validation"]] == [t for t in everything if clean._unit("s", t) < 0.2]


def test_the_card_records_the_grouping(phrases):
    out, counts = build(phrases)
    assert counts["split_from"] == {
        "train": "given",
        **dict.fromkeys(("validation", "test"), "drawn from train by content hash, near duplicates together"),
    }
    assert counts["groups"] == {
        "ngram": 8,
        "contained_min_words": 4,
        "rows": 120,
        "groups": 60,
        "multi_row_groups": 30,
        "rows_in_multi_row_groups": 90,
        "largest": 3,
        "kept_in_train": {"groups": 0, "rows": 0, "over_rows": 12},
    }
    card = {"task": "classification", **counts, "splits": {n: {"rows": len(out[n])} for n in SPLITS}, "sources": {}}
    md = body.card_markdown(card)
    assert "| validation | drawn from train by content hash, near duplicates together | 0 | 0 | 0 | 0 | 27 |" in md
    assert (
        "| validation | 0 | 0 | 0 of 27 | 0 of 27 | 0 of 27 (0) |" in md
        and "| test | 0 | 0 | 0 of 15 | 0 of 15 | 0 of 15 (0) |" in md
    )
    assert (
        "Drawn splits take whole groups: training rows equal after lowercasing and dropping punctuation, or sharing a "
        "8-gram of words, or a row of 4 to 7 words running word for word inside another, are one group, placed by a hash of its smallest text with split.salt, so that no drawn row "
        "overlaps a training row. 120 rows formed 60 groups, 30 of them with more than one row (90 rows); the largest "
        "has 3 rows. Groups of more than 12 rows (the smallest drawn split's share) stay in train: 0 did (0 rows)."
    ) in md


def test_a_group_larger_than_a_drawn_share_stays_in_train(tmp_path):
    chain = [f"the same eight words open every one of these rows {i}" for i in range(40)]  # one group of 40
    path = jsonl(
        tmp_path / "c.jsonl",
        [{"text": t, "label": "ab"[i % 2]} for i, t in enumerate(chain + [lone(i) for i in range(60)])],
    )
    out, counts = build(path, test=0)  # validation's share: 0.2 of 100 rows, 20
    assert counts["groups"]["largest"] == 40
    assert counts["groups"]["kept_in_train"] == {"groups": 1, "rows": 40, "over_rows": 20}
    assert [r["text"] for r in out["train"]][:40] == chain  # kept in file order
    assert [r["text"] for r in out["validation"]] == [lone(i) for i in range(60) if clean._unit("s", lone(i)) < 0.2]
    assert counts["contamination"]["validation"] == clean_overlap(13)


def test_training_rows_that_form_only_oversized_groups_are_refused(tmp_path):
    chain = [
        {"text": f"the same eight words open every one of these rows {i}", "label": "ab"[i % 2]} for i in range(10)
    ]
    with pytest.raises(
        UserError,
        match=r"^labeled.split.group: all 10 training rows fall in groups of near duplicates \(equal words or a "
        r"shared 8-word n-gram\) larger than the smallest drawn split's share of 2 rows, so none is left to draw; "
        r"raise labeled.contamination_ngram, or set labeled.split.group to false$",
    ):
        build(jsonl(tmp_path / "c.jsonl", chain), test=0)


def test_qa_articles_that_share_a_sentence_land_together(tmp_path):
    shared = " The treaty was signed in the old town hall by both kings."
    objects = []
    for a in range(20):
        context = f"Article {a} tells of year {1900 + a}." + (shared if a in (3, 11) else "")
        answers = {"text": [str(1900 + a)], "answer_start": [context.index(str(1900 + a))]}
        objects += [
            {
                "question": f"Which year does article {a} name ({q})?",
                "context": context,
                "title": f"T{a}",
                "answers": answers,
            }
            for q in range(2)
        ]
    path = jsonl(tmp_path / "qa.jsonl", objects)

    def titles(group: bool) -> tuple[dict, dict]:
        spec = LabeledSpec(
            task="extractive-qa",
            train=[path],
            title_column="title",
            split={"validation": 0.2, "test": 0.2, "salt": "t", "group": group},
        )
        out, counts = rows.build(spec, read.read_splits(spec))
        return {r["title"]: name for name, found in out.items() for r in found}, counts

    alone, before = titles(False)
    assert (alone["T3"], alone["T11"]) == ("train", "test") and before["contamination"]["test"]["eval_rows_ngram"] == 2
    together, after = titles(True)  # both where T11, the smaller title, hashes
    assert (together["T3"], together["T11"]) == ("test", "test") and after["contamination"]["test"] == clean_overlap(12)
    assert after["groups"]["groups"] == 19 and after["groups"]["largest"] == 4


def sentence(i: int) -> str:
    return f"the story of film {i} is slow but the ending {i} pays off well"


def phrase(i: int, words: int) -> str:
    """A phrase cut out of sentence i, of 4 or 3 words: shorter than 8, it shares no 8-gram with the sentence."""
    return f"film {i} is slow" if words == 4 else f"ending {i} pays"


@pytest.fixture
def cut(tmp_path) -> str:
    """30 sentences, a 4-word and a 3-word phrase of each, and 30 lone rows."""
    objects = [{"text": t, "label": "ab"[i % 2]} for i in range(30) for t in (sentence(i), phrase(i, 4), phrase(i, 3))]
    return jsonl(tmp_path / "p.jsonl", objects + [{"text": lone(i), "label": "ab"[i % 2]} for i in range(30)])


def test_a_phrase_of_min_words_or_more_lands_with_the_row_it_runs_inside(cut):
    out, counts = build(cut)  # contained_min_words 4
    where = placed(out)
    assert all(where[phrase(i, 4)] == where[sentence(i)] for i in range(30))
    # the 3-word phrase hashes alone: it is where it would be without groups, away from its sentence when that differs
    alone = placed(build(cut, group=False)[0])
    assert all(where[phrase(i, 3)] == alone[phrase(i, 3)] for i in range(30))
    assert [i for i in range(30) if where[phrase(i, 3)] != where[sentence(i)]] == [0, 6, 8, 11, 17, 18, 21, 24, 25, 26]
    assert {n: len(v) for n, v in out.items()} == {"train": 85, "validation": 22, "test": 13}
    assert counts["groups"]["groups"] == 90 and counts["groups"]["largest"] == 2
    # contained_min_words 3 takes the 3-word phrase in too; 8 (= contamination_ngram) turns containment off
    three = placed(build(cut, contained_min_words=3)[0])
    assert all(three[phrase(i, 3)] == three[phrase(i, 4)] == three[sentence(i)] for i in range(30))
    assert build(cut, contained_min_words=8)[1]["groups"]["groups"] == 120


def test_the_card_counts_drawn_rows_inside_a_training_row(cut):
    out, counts = build(cut)
    assert counts["contamination"]["validation"] == {
        **clean_overlap(22),
        "eval_rows_inside": 2,  # the 3-word phrases of sentences 11 and 17
        "eval_rows_inside_under_min_words": 2,
    }
    card = {"task": "classification", **counts, "splits": {n: {"rows": len(out[n])} for n in SPLITS}, "sources": {}}
    md = body.card_markdown(card)
    assert "eval rows under 8 words inside a train row (of them under 4 words) |" in md
    assert "| validation | 0 | 0 | 0 of 22 | 0 of 22 | 2 of 22 (2) |" in md
    # a card written before containment (an augment stage's parent) renders as it did
    old = {**card, "groups": {k: v for k, v in card["groups"].items() if k != "contained_min_words"}}
    strip = lambda c: {k: v for k, v in c.items() if not k.startswith("eval_rows_inside")}  # noqa: E731
    old["contamination"] = {"ngram": 8, "validation": strip(card["contamination"]["validation"]), "test": {}}
    old["contamination"]["test"] = strip(card["contamination"]["test"])
    md = body.card_markdown(old)
    assert "| validation | 0 | 0 | 0 of 22 | 0 of 22 |\n" in md and "inside" not in md
    # without containment, the 4-word phrases of sentences 0, 6, 8, 18 and 26 are drawn apart from them; every row
    # under 8 words is then under contained_min_words
    off = build(cut, contained_min_words=8)[1]["contamination"]["validation"]
    assert (off["eval_rows"], off["eval_rows_inside"], off["eval_rows_inside_under_min_words"]) == (25, 5, 5)
