"""A word-substitution attack on a classifier (greedy, in the spirit of TextFooler, Jin et al. 2020).

Words are ranked by how much the true label's probability depends on them (deleting each, or the gradient at its
token embeddings), then replaced one at a time by the synonym that lowers that probability most, until the prediction
flips or the edit budget is spent. The augment stage makes adversarial training rows with it, the finetune stage
measures robust accuracy.
"""

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from tqdm.auto import tqdm

from tasks.data.labeled.rows import subset
from tasks.predict import probabilities
from tasks.spec import AttackSpec
from tasks.synonyms import Synonyms


@dataclass
class Outcome:
    """One attacked example: was it classified right to begin with, did the attack flip it, and how."""

    row: dict
    correct: bool
    flipped: bool = False
    text: str = ""  # the adversarial text (when flipped)
    predicted: int = -1  # the model's label id on `text`
    confidence: float = 0.0  # the model's probability of `predicted`
    edits: list[tuple[int, str, str]] = field(default_factory=list)  # (word index, old, new)


def attack(
    model,
    tokenizer,
    rows: list[dict],
    labels: list[str],
    spec: AttackSpec,
    synonyms: Synonyms,
    *,
    salt: str = "attack",
    desc: str = "attack",
) -> list[Outcome]:
    """Attack up to `spec.rows` of `rows` (`text`, `label`); one Outcome per attacked row."""
    chosen = subset(rows, spec.rows, f"{salt}:{spec.seed}" if spec.seed else salt, lambda r: r["text"])
    label_id = {label: i for i, label in enumerate(labels)}
    protected = {w.lower() for w in spec.protected}
    return [
        _attack_one(model, tokenizer, row, label_id[row["label"]], spec, synonyms, protected)
        for row in tqdm(chosen, desc=desc, unit="row", disable=len(chosen) < 20)
    ]


def summary(outcomes: list[Outcome]) -> dict[str, float]:
    """Clean and robust accuracy on the attacked rows, and the success rate over the rows the model got right."""
    n = len(outcomes)
    correct = sum(o.correct for o in outcomes)
    flipped = sum(o.flipped for o in outcomes)
    edits = [len(o.edits) for o in outcomes if o.flipped]
    return {
        "attacked_rows": n,
        "clean_accuracy": correct / n if n else 0.0,
        "robust_accuracy": (correct - flipped) / n if n else 0.0,
        "attack_success_rate": flipped / correct if correct else 0.0,
        "mean_edits": float(np.mean(edits)) if edits else 0.0,
    }


def adversarial_rows(outcomes: list[Outcome], teacher: str, spec: AttackSpec, labels: list[str]) -> list[dict]:
    """Flipped examples as training rows with their true label and provenance."""
    out = []
    for o in outcomes:
        if o.flipped:
            params = {
                "edits": [list(e) for e in o.edits],
                "importance": spec.importance,
                "predicted": labels[o.predicted],
            }
            out.append(
                {
                    **o.row,
                    "text": o.text,
                    "source_row": o.row.get("origin", ""),
                    "operation": "adversarial",
                    "params": json.dumps(params),
                    "teacher": teacher,
                    "confidence": o.confidence,
                }
            )
    return out


def _eligible(word: str, protected: set[str]) -> bool:
    low = word.lower()
    return word.isalpha() and low not in ENGLISH_STOP_WORDS and low not in protected


def _attack_one(model, tok, row: dict, y: int, spec: AttackSpec, synonyms: Synonyms, protected: set[str]) -> Outcome:
    words = row["text"].split()
    probs = lambda texts: probabilities(model, tok, texts, max_length=spec.max_length)  # noqa: E731
    p = probs([row["text"]])[0]
    if int(p.argmax()) != y:
        return Outcome(row, correct=False)
    candidates = {i: synonyms(w.lower())[: spec.candidates] for i, w in enumerate(words) if _eligible(w, protected)}
    candidates = {i: c for i, c in candidates.items() if c}
    importance = _importance(model, tok, words, y, spec, p[y], list(candidates)) if candidates else {}
    order = sorted(candidates, key=lambda i: -importance[i])
    budget = min(spec.max_edits, max(1, int(spec.max_edit_fraction * len(words))))
    current, p_true, edits = list(words), p[y], []
    for i in order:
        if len(edits) == budget:
            break
        options = [_cased(c, words[i]) for c in candidates[i]]
        texts = [" ".join(current[:i] + [o] + current[i + 1 :]) for o in options]
        pc = probs(texts)
        flips = [k for k in range(len(options)) if int(pc[k].argmax()) != y]
        best = min(flips, key=lambda k: pc[k, y]) if flips else int(pc[:, y].argmin())
        if not flips and pc[best, y] >= p_true:
            continue  # no substitute helps at this word: spend no edit on it
        edits.append((i, current[i], options[best]))
        current[i], p_true = options[best], pc[best, y]
        if flips:
            pred = int(pc[best].argmax())
            return Outcome(row, True, True, texts[best], pred, float(pc[best, pred]), edits)
    return Outcome(row, correct=True, edits=edits)


def _importance(
    model, tok, words: list[str], y: int, spec: AttackSpec, p_y: float, positions: list[int]
) -> dict[int, float]:
    if spec.importance == "deletion":
        texts = [" ".join(words[:i] + words[i + 1 :]) for i in positions]
        dropped = probabilities(model, tok, texts, max_length=spec.max_length)[:, y]
        return {i: float(p_y - d) for i, d in zip(positions, dropped)}
    # gradient: the loss's sensitivity to each word's token embeddings, summed over the word's tokens
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
    embeds = model.get_input_embeddings()(enc["input_ids"].to(model.device)).detach().requires_grad_(True)
    extra = {k: v.to(model.device) for k, v in enc.items() if k != "input_ids"}
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(
            model(inputs_embeds=embeds, **extra).logits, torch.tensor([y], device=model.device)
        )
        (grad,) = torch.autograd.grad(loss, embeds)
    per_token = grad[0].norm(dim=-1).cpu().numpy()  # [seq]
    scores = dict.fromkeys(positions, 0.0)
    for t, w in enumerate(enc.word_ids(0)):
        if w in scores:
            scores[w] += float(per_token[t])
    return scores


def _cased(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word
