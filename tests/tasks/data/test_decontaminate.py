"""Train/eval overlap: exact and n-gram matches counted on both sides, and the rows that would be dropped."""

from tasks.data import decontaminate
from tasks.data.decontaminate import ngrams, overlap


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
