import random

import pytest

from tasks.data.clean import clean, normalize, split
from tasks.data.spec import CleanSpec, SplitSpec
from tasks.errors import UserError

NO_NEAR = CleanSpec(near_dedup_threshold=None)


def rows(*texts):
    return [{"text": t, "origin": f"f.txt:{i}"} for i, t in enumerate(texts)]


def sentence(rng, n=30):
    return " ".join(f"word{rng.randrange(100_000)}" for _ in range(n))


def test_normalize_composes_accents_to_nfc():
    assert normalize("cafe\u0301") == "caf\u00e9"


def test_normalize_drops_control_and_format_characters_but_keeps_newlines():
    assert normalize("a\x00b\x1bc\u200bd\ufeffe\nf") == "abcde\nf"


def test_normalize_collapses_whitespace_and_blank_lines():
    text = "  ROMEO:\t\tBut  soft!   \r\nWhat light\r\n\r\n\r\n\n\nthrough   yonder  \n"
    assert normalize(text) == "ROMEO: But soft!\nWhat light\n\nthrough yonder"


def test_normalize_keeps_single_blank_line():
    assert normalize("a\n\nb\nc") == "a\n\nb\nc"


def test_clean_normalises_and_keeps_extra_keys():
    out, _ = clean([{"text": " a\u0000b ", "origin": "x", "label": 3}], NO_NEAR)
    assert out == [{"text": "ab", "origin": "x", "label": 3}]


def test_clean_keeps_text_as_is_without_normalize():
    out, _ = clean(rows(" a  b "), CleanSpec(normalize=False, near_dedup_threshold=None))
    assert out[0]["text"] == " a  b "


def test_length_bounds_are_counted():
    out, card = clean(
        rows("", "ab", "abcd", "abcdefgh", "   "), CleanSpec(min_chars=3, max_chars=5, near_dedup_threshold=None)
    )
    assert [r["text"] for r in out] == ["abcd"]
    assert card["removed"]["too_short"] == 3  # "", "ab" and the whitespace-only row
    assert card["removed"]["too_long"] == 1


def test_exact_duplicates_keep_first_occurrence():
    out, card = clean(rows("a", "b", "a ", "a", "c"), NO_NEAR)
    assert [r["text"] for r in out] == ["a", "b", "c"]
    assert out[0]["origin"] == "f.txt:0"
    assert card["removed"]["exact_duplicates"] == 2


def test_exact_dedup_can_be_turned_off():
    out, card = clean(rows("a", "a"), CleanSpec(exact_dedup=False, near_dedup_threshold=None))
    assert len(out) == 2 and card["removed"]["exact_duplicates"] == 0


# A one-word edit changes up to 3 of 28 three-word shingles: Jaccard 27/29 at the end, 25/31 in the middle;
# thresholds sit well below those so the MinHash estimate (std ~0.03 with 128 permutations) clears them.
@pytest.mark.parametrize("position, threshold", [(29, 0.8), (15, 0.7)])
def test_near_dedup_drops_a_one_word_edit_and_keeps_unrelated_rows(position, threshold):
    rng = random.Random(0)
    words = sentence(rng).split()
    original = " ".join(words)
    edited = " ".join(words[:position] + ["changed"] + words[position + 1 :])
    others = [sentence(rng) for _ in range(50)]
    out, card = clean(rows(original, *others[:25], edited, *others[25:]), CleanSpec(near_dedup_threshold=threshold))
    assert [r["text"] for r in out] == [original, *others]
    assert card["removed"]["near_duplicates"] == 1


def test_near_dedup_is_case_insensitive_and_handles_short_rows():
    out, card = clean(rows("Hello World", "hello world", "hi"), CleanSpec())
    assert [r["text"] for r in out] == ["Hello World", "hi"]
    assert card["removed"] == {"too_short": 0, "too_long": 0, "exact_duplicates": 0, "near_duplicates": 1}


def test_near_dedup_threshold_one_removes_only_same_shingle_sets():
    out, _ = clean(
        rows("the cat sat on the mat", "The cat sat on the mat", "the cat sat on a mat"),
        CleanSpec(near_dedup_threshold=1.0),
    )
    assert [r["text"] for r in out] == ["the cat sat on the mat", "the cat sat on a mat"]


def test_near_dedup_is_deterministic():
    rng = random.Random(1)
    texts = [sentence(rng, 12) for _ in range(200)]
    texts += [t.rsplit(" ", 1)[0] + " x" for t in texts[:100]]
    spec = CleanSpec(near_dedup_threshold=0.7, shingle_words=2)
    assert clean(rows(*texts), spec) == clean(rows(*texts), spec)


def test_card_counts_add_up():
    rng = random.Random(2)
    uniq = [sentence(rng) for _ in range(40)]
    near = [t + " extra" for t in uniq[:10]]
    texts = uniq + uniq[:5] + near + ["", "x" * 1000]
    out, card = clean(rows(*texts), CleanSpec(max_chars=900, near_dedup_threshold=0.8))
    removed = card["removed"]
    assert card["rows_in"] == len(texts)
    assert card["rows_out"] == len(out) == 40
    assert removed == {"too_short": 1, "too_long": 1, "exact_duplicates": 5, "near_duplicates": 10}
    assert card["rows_in"] - sum(removed.values()) == card["rows_out"]


def test_split_is_deterministic_and_salt_changes_it():
    data = rows(*(f"row {i}" for i in range(2000)))
    a, b = split(data, SplitSpec()), split(data, SplitSpec())
    assert a == b
    salted = split(data, SplitSpec(salt="other"))
    assert salted["validation"] != a["validation"]


def test_split_fractions_are_roughly_respected_and_order_kept():
    data = rows(*(f"row {i}" for i in range(2000)))
    parts = split(data, SplitSpec(validation=0.1, test=0.2))
    assert sum(map(len, parts.values())) == 2000
    assert 150 <= len(parts["validation"]) <= 250
    assert 340 <= len(parts["test"]) <= 460
    for part in parts.values():
        ids = [int(r["text"].split()[1]) for r in part]
        assert ids == sorted(ids)


def test_identical_texts_land_in_the_same_split():
    data = rows(*(f"row {i % 50}" for i in range(1000)))
    parts = split(data, SplitSpec(validation=0.2, test=0.2))
    where = {}
    for name, part in parts.items():
        for r in part:
            assert where.setdefault(r["text"], name) == name


def test_zero_fractions_give_everything_to_train():
    parts = split(rows("a", "b"), SplitSpec(validation=0, test=0))
    assert len(parts["train"]) == 2 and parts["validation"] == parts["test"] == []


@pytest.mark.parametrize("name", ["validation", "test"])
def test_empty_eval_split_names_the_split_and_the_fix(name):
    with pytest.raises(UserError, match=rf"{name} split came out empty.*set split\.{name}: 0"):
        split(rows("only one row"), SplitSpec(**{name: 0.01, ({"validation", "test"} - {name}).pop(): 0}))


def test_empty_train_split_is_an_error():
    data = rows(*(f"row {i}" for i in range(20)))
    with pytest.raises(UserError, match="train split came out empty"):
        split(data, SplitSpec(validation=0.5, test=0.499999))
