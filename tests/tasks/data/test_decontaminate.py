"""Train/eval overlap: exact and n-gram matches counted on both sides, and the rows that would be dropped."""

import random

from tasks.data import decontaminate
from tasks.data.decontaminate import bare, ngrams, overlap, overlaps


def test_ngrams_lowercase_words_and_short_texts_count_whole():
    assert ngrams("The cat, sat!", 2) == {("the", "cat"), ("cat", "sat")}
    assert ngrams("Hi there", 8) == {("hi", "there")} and ngrams(" , ", 3) == set()


def test_overlap_counts_exact_and_shared_ngrams_on_both_sides():
    train = ["A great movie .", "the plot was thin and the acting worse", "nothing in common here", "great movie"]
    evaluation = ["a GREAT movie", "honestly the plot was thin and the acting worse than ever", "unrelated words"]
    counts, flags = overlap(train, evaluation, 4)
    # exact: "A great movie ." = "a GREAT movie" (case and punctuation aside); the 8-word train row shares 4-grams with the eval row.
    assert counts == {
        "train_rows_exact": 1,
        "train_rows_ngram": 2,
        "eval_rows_exact": 1,
        "eval_rows_ngram": 2,
        "eval_rows": 3,
    }
    assert flags == [True, True, False, False]  # "great movie" is shorter than 4 words: one gram, not in eval's grams


def test_the_corpus_stage_reports_and_drops_overlap(tmp_path):
    from tasks.data import prepare
    from tasks.data.spec import PrepareSpec

    shared = "the quick brown fox jumps over the lazy dog near the river bank today"
    rows = {
        "train": [{"text": shared + " again", "origin": "a"}, {"text": "nothing alike here at all", "origin": "b"}],
        "validation": [{"text": "we saw that " + shared, "origin": "c"}],
        "test": [{"text": "unrelated", "origin": "d"}],
    }
    report = prepare._contamination(PrepareSpec(clean={"decontaminate": True}), rows)
    assert report["validation"]["train_rows_ngram"] == 1 and report["test"]["train_rows_ngram"] == 0
    assert report["hits"] == [True, False] and report["dropped"] == 1


def test_inside_finds_eval_texts_shorter_than_n_that_run_inside_a_train_text():
    train = ["A b c d e", "x y"]
    evaluation = ["b c d", "c d e f", "a b c d e", "B, C!", "x", "b d", "", "y"]
    assert decontaminate.inside(train, evaluation, 5) == [True, False, False, True, True, False, False, True]


def old_overlap(train: list[str], evaluation: list[str], n: int) -> tuple[dict[str, int], list[bool]]:
    """decontaminate.overlap before it read each training text once and kept only the grams eval texts have."""
    eval_exact = {bare(t) for t in evaluation}
    eval_grams = set().union(*(ngrams(t, n) for t in evaluation)) if evaluation else set()
    train_exact = [bare(t) in eval_exact for t in train]
    train_gram = [not ngrams(t, n).isdisjoint(eval_grams) for t in train]
    train_norm = {bare(t) for t in train}
    train_grams = set().union(*(ngrams(t, n) for t in train)) if train else set()
    counts = {
        "train_rows_exact": sum(train_exact),
        "train_rows_ngram": sum(train_gram),
        "eval_rows_exact": sum(bare(t) in train_norm for t in evaluation),
        "eval_rows_ngram": sum(not ngrams(t, n).isdisjoint(train_grams) for t in evaluation),
        "eval_rows": len(evaluation),
    }
    return counts, [e or g for e, g in zip(train_exact, train_gram)]


def test_overlaps_equal_the_old_overlap_per_eval_set():
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(12)] + ["The", "the", ",", "!", "é"]
    train = [" ".join(rng.choices(vocab, k=rng.randint(0, 9))) for _ in range(300)]
    evaluations = {
        "validation": [" ".join(rng.choices(vocab, k=rng.randint(0, 9))) for _ in range(40)] + train[:3],
        "test": [" ".join(rng.choices(vocab, k=rng.randint(0, 9))) for _ in range(40)],
        "empty": [],
    }
    for n in (1, 2, 3, 5):
        got = overlaps(train, evaluations, n)
        for name, evaluation in evaluations.items():
            assert got[name] == old_overlap(train, evaluation, n), (n, name)
            assert overlap(train, evaluation, n) == old_overlap(train, evaluation, n)
    # the draws make every count of both sides move with n, so the comparison covers hits and misses
    counts = {n: overlaps(train, evaluations, n)["validation"][0] for n in (2, 5)}
    assert counts[2]["train_rows_ngram"] > counts[5]["train_rows_ngram"] > 0
    assert counts[2]["eval_rows_ngram"] > counts[5]["eval_rows_ngram"] > 0
    assert overlaps([], evaluations, 3)["test"] == old_overlap([], evaluations["test"], 3)
