"""Final answers of math word problems: extraction, numeric comparison, annotation stripping and the majority vote."""

import pytest

from tasks import answers

# The first line of GSM8K train, as the data README quotes it.
SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    "text, number",
    [
        ("So the total is 1,234.\n#### 1,234", 1234),
        ("She pays $12.50 for it.", 12.5),
        ("the answer is 7.", 7),
        ("The temperature drops to -5 degrees.", -5),
        ("#### -12", -12),
        ("#### $1,080.00 dollars", 1080),
        ("He needs 3 boxes of 12 eggs, 36 eggs in all", 36),  # no mark: the last number
        ("#### 18\n\nQuestion: Tom has 5 apples.", 18),  # the mark's number, not the last one
        ("It takes 3-4 hours", 4),  # a hyphen between numbers is no minus
        ("10 - 6 = 4, so 2.5 kg of flour.", 2.5),
        ("#### 109,200,000", 109200000),
    ],
)
def test_extract(text, number):
    assert answers.extract(text) == number


@pytest.mark.parametrize("text", ["no number here", "", "#### none"])
def test_no_number_is_none(text):
    assert answers.extract(text) is None


def test_numbers_compare_as_numbers_not_strings():
    assert answers.same(answers.extract("#### 1,234"), answers.extract("1234.0"))
    assert answers.same(answers.extract("$12.50"), answers.extract("12.5"))
    assert not answers.same(answers.extract("12.51"), answers.extract("12.5"))
    assert not answers.same(None, None)  # no answer matches nothing, not even another no answer
    assert answers.shown(1234.0) == "1234" and answers.shown(12.5) == "12.5" and answers.shown(None) == ""


def test_final_needs_the_mark_and_a_number_after_it():
    assert answers.final(SOLUTION) == 72
    assert answers.final("Natalia sold 72 clips.") is None  # a number, but no final answer
    assert answers.final("#### unknown") is None


def test_annotations_are_stripped_and_the_answer_kept():
    assert answers.strip_annotations(SOLUTION) == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"
    )


def test_vote_takes_the_most_frequent_answer_and_breaks_ties_by_the_first_sampled():
    samples = ["#### 5", "the answer is 3", "no idea", "so 5 apples", "#### 3.0", "#### 5.00"]
    assert answers.vote([answers.extract(s) for s in samples]) == 5  # 5 three times, 3 twice; "no idea" has no vote
    assert answers.vote([3.0, 5.0, 5.0, 3.0]) == 3  # a tie: 3 was sampled first
    assert answers.vote([5.0, 3.0, 3.0, 5.0]) == 5
    assert answers.vote([None, None]) is None


def test_score_counts_exact_answers_and_missing_ones():
    generations = ["... #### 72", "she sold 72.0 clips", "she sold 70 clips", "I cannot say"]
    metrics, correct, found = answers.score(generations, [SOLUTION] * 4)
    assert correct.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert found == [72, 72, 70, None]
    assert metrics == {"answer_accuracy": 0.5, "no_answer_rate": 0.25}
