"""The trivial baseline a first challenger must beat: what a model that learnt nothing from the inputs scores on the
same test rows the gate scores, with the same metric code. Its statistics come from the dataset's training split."""

import math
import statistics
from collections import Counter
from dataclasses import dataclass

import numpy as np

from tasks import answers, qa_scores
from tasks import metrics as metrics_
from tasks.data import labeled, prepared
from tasks.evaluate import scoring
from tasks.tokenizer import unigram_perplexity


@dataclass
class Baseline:
    """A trivial predictor's metrics on the gate's test rows; `name` goes into the decision's reason."""

    name: str
    described: str
    metrics: dict[str, float]


def measure(dataset: str, max_rows: int | None, split: str = "test") -> Baseline:
    """The baseline of the dataset's task, scored on the rows `scoring.score` picks for the same max_rows."""
    task = scoring.task_of(dataset)
    if task == "lm":
        return _unigram(dataset, split, max_rows)
    trivial = {
        "classification": _majority,
        "sft": _copy_prompt,
        "extractive-qa": _first_words,
        "math": _frequent_answer,
    }
    return trivial[task](
        dataset, labeled.load_rows(dataset, "train"), scoring.scored_rows(dataset, task, split, max_rows)
    )


def _unigram(dataset: str, split: str, max_rows: int | None) -> Baseline:
    # The training split is stored tokenised (with the tokenizer the model was trained with): counted, not re-encoded.
    blocks = scoring.scored_blocks(dataset, split, max_rows)
    vocab = len(prepared.load_tokenizer(dataset))
    perplexity = unigram_perplexity(prepared.load_blocks(dataset, "train"), blocks, vocab)
    return Baseline(
        "unigram",
        "add-one unigram of the training split's tokens, on the same test blocks",
        {"perplexity": perplexity, "loss": math.log(perplexity)},
    )


def _majority(dataset: str, train: list[dict], rows: list[dict]) -> Baseline:
    labels = labeled.card(dataset)["labels"]
    counts = Counter(r["label"] for r in train)
    majority = max(labels, key=lambda label: counts[label])  # a tie goes to the first label in id order
    y = np.array([labels.index(r["label"]) for r in rows])
    always = np.zeros((len(rows), len(labels)))
    always[:, labels.index(majority)] = 1.0
    report = metrics_.classification(y, always, labels)
    return Baseline(
        "majority-class",
        f"always `{majority}`, the most frequent training label",
        {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
    )


def _copy_prompt(dataset: str, train: list[dict], rows: list[dict]) -> Baseline:
    # The user's prompt without the template's instruction around it: copying the source is the classic floor of
    # translation and rewriting, and the instruction words would only lower it.
    template = labeled.card(dataset).get("prompt_template") or "{prompt}"
    parts = template.split("{prompt}")
    before, after = (parts[0], parts[-1]) if len(parts) > 1 else ("", "")
    hyps = [r["prompt"].removeprefix(before).removesuffix(after) for r in rows]
    found = metrics_.generation(hyps, [r["response"] for r in rows])
    return Baseline("copy-the-prompt", "the prompt itself as the response", found)


def _first_words(dataset: str, train: list[dict], rows: list[dict]) -> Baseline:
    # A reader that ignores the question: the context's first n words, n the median length of the training answers.
    # The empty answer would score 0 and let any span model through; this bar is passed only by reading the question.
    n = max(1, round(statistics.median(len(r["answers"][0]["text"].split()) for r in train)))
    predicted = [" ".join(r["context"].split()[:n]) for r in rows]
    found, _ = qa_scores.scores(predicted, [[a["text"] for a in r["answers"]] for r in rows])
    return Baseline("first-words", f"the context's first {n} words (the median training answer's length)", found)


def _frequent_answer(dataset: str, train: list[dict], rows: list[dict]) -> Baseline:
    # The prior of the answers: a model that ignores the problem can at best say the most frequent training answer.
    answer = answers.vote([answers.final(r["response"]) for r in train])  # a tie goes to the answer found first
    said = "" if answer is None else f"{answers.MARK} {answers.shown(answer)}"
    found, _, _ = answers.score([said] * len(rows), [r["response"] for r in rows])
    return Baseline(
        "most-frequent-answer",
        f"always `{answers.shown(answer)}`, the most frequent final answer of the training split",
        {"answer_accuracy": found["answer_accuracy"]},
    )
