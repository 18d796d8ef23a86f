"""Labeled data for fine-tuning: classification rows `{text, [text_pair], label, origin}` or SFT rows `{prompt, response, origin}`.

The stage body is `run` (`stage.run`); later stages read its URI back with `load_rows` and `card`.
"""

import json

import pyarrow.parquet as pq

from tasks.data.labeled.read import source_digests, source_names
from tasks.data.labeled.spec import SPLITS, LabeledSpec
from tasks.data.prepared import root
from tasks.errors import UserError

__all__ = ["SPLITS", "LabeledSpec", "card", "load_rows", "root", "run", "source_digests", "source_names"]


def __getattr__(name: str):
    # `run` is imported on first use: the body pulls in datasketch and scipy (through rows and clean), which importing
    # this package for its spec (the flows, the run form, a worker starting any stage flow) need not wait for.
    if name == "run":
        from tasks.data.labeled.stage import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_rows(uri: str, split: str) -> list[dict]:
    """The rows of one split, as dicts in stored order."""
    if split not in SPLITS:
        raise UserError(f"Unknown split {split!r}: use one of {', '.join(SPLITS)}.")
    return pq.read_table(root(uri) / f"{split}.parquet").to_pylist()


def card(uri: str) -> dict:
    """The data card: task, labels (classification), rows per split, rows removed and why, sources and digests."""
    return json.loads((root(uri) / "card.json").read_text())
