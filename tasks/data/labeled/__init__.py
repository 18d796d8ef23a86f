"""Labeled data for fine-tuning: classification rows `{text, [text_pair], label, origin}` or SFT rows `{prompt, response, origin}`.

The spec is `spec.LabeledSpec`, the stage body `stage.run`; later stages read its URI back with `load_rows` and `card`.
"""

import json

import pyarrow.parquet as pq

from tasks.data.labeled.spec import SPLITS
from tasks.data.prepared import root
from tasks.errors import UserError


def load_rows(uri: str, split: str) -> list[dict]:
    """The rows of one split, as dicts in stored order."""
    if split not in SPLITS:
        raise UserError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    return pq.read_table(root(uri) / f"{split}.parquet").to_pylist()


def card(uri: str) -> dict:
    """The data card: task, labels (classification), rows per split, rows removed and why, sources and digests."""
    return json.loads((root(uri) / "card.json").read_text())
