"""Pseudo-labels: a teacher labels an unlabeled pool; confident rows, balanced per class, join the training data."""

import json

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
    kept = subset(kept, spec.max_pool_rows, f"pool:{spec.seed}" if spec.seed else "pool", lambda r: r["text"])
    counts["pool_rows_scored"] = len(kept)
    return kept, counts


def label(
    model, tokenizer, pool: list[dict], labels: list[str], spec: PseudoLabelSpec, teacher: str, max_length: int
) -> tuple[list[dict], dict]:
    """Confident, balanced pseudo-labeled rows with provenance, and what was kept per label."""
    probs = probabilities(model, tokenizer, [r["text"] for r in pool], max_length=max_length, desc="pseudo-label")
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    per_label = {}
    for k, name in enumerate(labels):
        idx = np.flatnonzero((predicted == k) & (confidence >= spec.threshold))
        per_label[name] = idx[np.argsort(-confidence[idx], kind="stable")]  # most confident first
    cap = min((len(v) for v in per_label.values())) if spec.balance else None
    if spec.per_class is not None:
        cap = spec.per_class if cap is None else min(cap, spec.per_class)
    params = json.dumps({"threshold": spec.threshold, "balance": spec.balance, "per_class": spec.per_class})
    rows = []
    for k, name in enumerate(labels):
        for i in sorted(per_label[name][:cap]):  # pool order, so the dataset does not depend on sort ties
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
                }
            )
    stats = {
        "pseudo_confident": {name: int(len(v)) for name, v in per_label.items()},
        "pseudo_kept": {name: int(min(len(v), cap) if cap is not None else len(v)) for name, v in per_label.items()},
        "pseudo_mean_confidence": float(confidence.mean()) if len(confidence) else 0.0,
    }
    return rows, stats
