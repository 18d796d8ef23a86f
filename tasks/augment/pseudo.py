"""Pseudo-labels: a teacher labels an unlabeled pool; confident rows, balanced per class, join the training data."""

import json
import math

import numpy as np

from tasks.augment.spec import PseudoLabelSpec
from tasks.data import clean, formats, sources
from tasks.data.labeled.rows import subset
from tasks.errors import UserError
from tasks.predict import probabilities


def read_pool(spec: PseudoLabelSpec, exclude: set[str]) -> tuple[list[dict], dict[str, int]]:
    """Pool rows `{text, origin}`, normalised, without empty rows or rows whose text is already labeled; and the counts."""
    sources.check_encoding(spec)
    key = spec.setting("text_column")
    rows = []
    for src in spec.pool:
        found = sources.read_table(src, spec, {spec.text_column: key})
        rows += [
            {"text": clean.normalize(formats.text_value(o, spec.text_column, r[spec.text_column], key)), "origin": o}
            for o, r in found
        ]
    counts = {"pool_rows_read": len(rows)}
    if not rows:
        raise UserError(
            f"augment.pseudo.pool {', '.join(spec.pool)} holds no rows: point it at unlabeled texts, or drop augment.pseudo"
        )
    kept = [r for r in rows if r["text"] and r["text"] not in exclude]
    counts["pool_rows_labeled_already"] = sum(1 for r in rows if r["text"] in exclude)
    if not kept:
        raise UserError(
            f"augment.pseudo.pool: all {len(rows)} rows are empty or already in the labeled data (training, validation or test): "
            "give unlabeled texts that are not in the labeled dataset"
        )
    if spec.min_words:
        long = [r for r in kept if len(r["text"].split()) >= spec.min_words]
        counts["pool_rows_too_short"] = len(kept) - len(long)
        if not long:
            raise UserError(
                f"augment.pseudo.min_words {spec.min_words}: none of the {len(kept)} unlabeled pool rows has that many words: "
                "lower augment.pseudo.min_words, or drop it"
            )
        kept = long
    kept = subset(kept, spec.max_pool_rows, f"pool:{spec.seed}" if spec.seed else "pool", lambda r: r["text"])
    counts["pool_rows_scored"] = len(kept)
    return kept, counts


def teach(teachers: list[tuple], texts: list[str], max_length: int, also: tuple[np.ndarray, ...] = ()) -> np.ndarray:
    """Log of the teachers' mean class probabilities [len(texts), num_labels], from (model, tokenizer) pairs and the
    log probabilities of teachers scored elsewhere (`also`: a prompt teacher's).

    Stored as the teacher logits of soft labels: for one teacher this is its log-softmax, which any temperature softens
    exactly as it would the raw logits (softmax is blind to a constant per row), so T can change without relabelling.
    """
    logs = [probabilities(m, tok, texts, max_length=max_length, desc="pseudo-label", log=True) for m, tok in teachers]
    logs += list(also)
    return np.logaddexp.reduce(np.stack(logs), axis=0) - np.log(len(logs))


def label(
    log_probs: np.ndarray, pool: list[dict], labels: list[str], spec: PseudoLabelSpec, teacher: str, gold_rows: int
) -> tuple[list[dict], dict]:
    """Confident, balanced pseudo-labeled rows, at most max_ratio × `gold_rows`, with provenance and the teacher's
    logits; and what was kept per label."""
    probs = np.exp(log_probs)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    per_label = {}
    for k, name in enumerate(labels):
        idx = np.flatnonzero((predicted == k) & (confidence >= spec.threshold))
        per_label[name] = idx[np.argsort(-confidence[idx], kind="stable")]  # most confident first
    cap = min((len(v) for v in per_label.values())) if spec.balance else None
    if spec.per_class is not None:
        cap = spec.per_class if cap is None else min(cap, spec.per_class)
    kept = {name: v[:cap] for name, v in per_label.items()}
    kept, capped = _ratio_cap(kept, confidence, spec, gold_rows)
    params = json.dumps(
        {"threshold": spec.threshold, "balance": spec.balance, "per_class": spec.per_class, "max_ratio": spec.max_ratio}
    )
    rows = []
    for name, idx in kept.items():
        for i in sorted(idx):  # pool order, so the dataset does not depend on sort ties
            src = pool[i]
            rows.append(
                {
                    "text": src["text"],
                    "label": name,
                    "origin": src["origin"],
                    "source_row": src["origin"],
                    "operation": "pseudo",
                    "params": params,
                    "teacher": teacher,
                    "confidence": float(confidence[i]),
                    "teacher_logits": [float(x) for x in log_probs[i]],
                }
            )
    stats = {
        "pseudo_confident": {name: int(len(v)) for name, v in per_label.items()},
        "pseudo_kept": {name: int(len(v)) for name, v in kept.items()},
        "pseudo_capped_by_ratio": capped,
        "pseudo_mean_confidence": float(confidence.mean()) if len(confidence) else 0.0,
    }
    return rows, stats


def _ratio_cap(
    kept: dict[str, np.ndarray], confidence: np.ndarray, spec: PseudoLabelSpec, gold_rows: int
) -> tuple[dict[str, np.ndarray], int]:
    """At most max_ratio × gold rows, the most confident: per label (an equal share) under balance, else over all labels;
    and how many rows the cap dropped."""
    total = sum(len(v) for v in kept.values())
    if spec.max_ratio is None:
        return kept, 0
    limit = math.floor(spec.max_ratio * gold_rows + 1e-9)  # 0.7 × 10 is 7.000000000000001 in floats
    if total <= limit:
        return kept, 0
    if spec.balance:
        kept = {name: v[: limit // len(kept)] for name, v in kept.items()}
    else:
        every = np.concatenate(list(kept.values()))
        top = set(every[np.argsort(-confidence[every], kind="stable")][:limit].tolist())
        kept = {name: np.array([i for i in v if i in top], dtype=int) for name, v in kept.items()}
    return kept, total - sum(len(v) for v in kept.values())
