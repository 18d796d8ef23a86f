"""Extractive QA on windows: a question and its (long) context cut into overlapping windows, and the n-best start/end
logits of all windows of a question turned back into one character span of its context.

The finetune stage trains and validates with these; `tasks/evaluate/scoring.py` scores any QA model with them, using
the settings the model version was fine-tuned with (its tags), so that both report the same numbers.
"""

from dataclasses import dataclass

import numpy as np
import torch

from tasks.errors import UserError
from tasks.tracking import resolve_version

# Longer questions are cut (BERT's max_query_length is 64; at most a quarter of a short window), so that a window always
# keeps room for context: doc_stride < max_length / 2 (FinetuneSpec checks it) is then below that room.
MAX_QUESTION_TOKENS = 64
TAGS = {
    "doc_stride": "multistep.doc_stride",
    "max_answer_length": "multistep.max_answer_length",
    "n_best": "multistep.n_best",
}
MAX_LENGTH_TAG = "multistep.max_length"  # registry.MAX_LENGTH; repeated so that this helper needs no registry import


@dataclass(frozen=True)
class Settings:
    """How questions are windowed and answers picked; the defaults are FinetuneSpec's."""

    max_length: int
    doc_stride: int  # tokens shared by consecutive windows of one context (the tokenizer's `stride`)
    max_answer_length: int = 30
    n_best: int = 20

    def tags(self) -> dict[str, str]:
        return {tag: str(getattr(self, field)) for field, tag in TAGS.items()}


def settings(max_length: int, doc_stride: int | None = None, **rest) -> Settings:
    """Settings with FinetuneSpec's default stride, a quarter of max_length, when none is given."""
    return Settings(max_length, doc_stride or max_length // 4, **rest)


def settings_of(model_uri: str, max_length: int) -> Settings:
    """The settings a registered QA model was fine-tuned with (its version tags); defaults with `max_length` otherwise."""
    if not model_uri.startswith("models:/"):
        return settings(max_length)
    tags = resolve_version(model_uri).tags
    found = {field: int(tags[tag]) for field, tag in TAGS.items() if tag in tags}
    return settings(int(tags.get(MAX_LENGTH_TAG, max_length)), **found)


@dataclass
class Windows:
    """Tokenized windows [n windows] and, for each, its question's index and the character span of each token (None
    outside the context: the question, special tokens, padding)."""

    encoding: dict[str, list[list[int]]]
    example: list[int]
    offsets: list[list[tuple[int, int] | None]]


def windows(tokenizer, rows: list[dict], settings: Settings) -> Windows:
    """Each question with its context, cut into windows of max_length tokens that overlap by doc_stride tokens."""
    if not tokenizer.is_fast:
        raise UserError(
            f"{type(tokenizer).__name__} is not a fast tokenizer, and extractive QA needs its character offsets: "
            "use a model whose folder has tokenizer.json"
        )
    cap = min(MAX_QUESTION_TOKENS, settings.max_length // 4)
    questions = [_cut(tokenizer, r["question"].lstrip(), cap) for r in rows]  # leading spaces waste window room
    room = settings.max_length - cap - 3  # [CLS] question [SEP] context [SEP]
    if settings.doc_stride >= room:
        raise UserError(
            f"finetune.doc_stride ({settings.doc_stride}) must be below the context room of a window "
            f"(max_length {settings.max_length} − {cap} question tokens − 3 = {room}): lower it or raise finetune.max_length"
        )
    enc = tokenizer(
        questions,
        [r["context"] for r in rows],
        truncation="only_second",
        max_length=settings.max_length,
        stride=settings.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    offsets = [
        [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i))]
        for i in range(len(enc["input_ids"]))
    ]
    example = list(enc["overflow_to_sample_mapping"])
    encoding = {k: v for k, v in enc.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}
    return Windows(encoding, example, offsets)


def _cut(tokenizer, question: str, cap: int) -> str:
    """The question up to its cap-th token."""
    found = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return question if len(found) <= cap else question[: found[cap - 1][1]]


def best_answers(start_logits, end_logits, found: Windows, rows: list[dict], settings: Settings) -> list[str]:
    """Per question, the context span with the highest start + end logit over all its windows (n-best starts × n-best
    ends of each window, inside the context, end ≥ start, at most max_answer_length tokens); "" when none fits.

    The logits are [n windows, seq] (extra positions, e.g. the Trainer's -100 padding, are ignored).
    """
    best: list[tuple[float, str]] = [(-np.inf, "")] * len(rows)
    for i, (ex, offsets) in enumerate(zip(found.example, found.offsets)):
        n = len(offsets)
        start, end = np.asarray(start_logits[i][:n], dtype=np.float64), np.asarray(end_logits[i][:n], dtype=np.float64)
        inside = np.array([o is not None for o in offsets])
        # the n-best of the context tokens only: a window's [CLS] or question can outscore every real span
        s = np.flatnonzero(inside)[np.argsort(-start[inside], kind="stable")[: settings.n_best]]
        e = np.flatnonzero(inside)[np.argsort(-end[inside], kind="stable")[: settings.n_best]]
        if not len(s):
            continue
        length = e[None, :] - s[:, None] + 1  # [n_best starts, n_best ends]
        score = np.where(
            (length >= 1) & (length <= settings.max_answer_length), start[s][:, None] + end[e][None, :], -np.inf
        )
        k = np.unravel_index(np.argmax(score), score.shape)
        if score[k] > best[ex][0]:
            first, last = offsets[s[k[0]]], offsets[e[k[1]]]
            best[ex] = (float(score[k]), rows[ex]["context"][first[0] : last[1]])
    return [text for _, text in best]


@torch.no_grad()
def predict(model, tokenizer, rows: list[dict], settings: Settings, batch_size: int = 32) -> list[str]:
    """The model's answer to each row's question: windows, start/end logits batch by batch, then best_answers."""
    model.eval()
    found = windows(tokenizer, rows, settings)
    n = len(found.example)
    starts, ends = [], []
    for at in range(0, n, batch_size):
        batch = tokenizer.pad(
            [{k: v[i] for k, v in found.encoding.items()} for i in range(at, min(at + batch_size, n))],
            return_tensors="pt",
        )
        out = model(**{k: v.to(model.device) for k, v in batch.items()})
        starts += list(out.start_logits.float().cpu().numpy())
        ends += list(out.end_logits.float().cpu().numpy())
    return best_answers(starts, ends, found, rows, settings)
