"""Reading a prepared dataset back from its URI (`runs:/<id>/dataset` or a local copy)."""

import functools
import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq

from tasks.errors import UserError

SPLITS = ("train", "validation", "test")


@functools.lru_cache(maxsize=8)
def root(uri: str) -> Path:
    """A local folder holding the dataset's files (downloaded once per process)."""
    if uri.startswith(("runs:/", "s3://", "models:/", "mlflow-artifacts:")):
        try:
            return Path(mlflow.artifacts.download_artifacts(uri))
        except mlflow.exceptions.MlflowException as exc:
            raise UserError(
                f"Cannot fetch dataset {uri} ({exc.message.splitlines()[0]}): pass the URI a prepare stage (prepare or prepare-labeled) returned."
            ) from None
    path = Path(uri.removeprefix("file://"))
    if not (path / "card.json").exists():
        raise UserError(
            f"{uri} is not a prepared dataset (no card.json): pass the URI a prepare stage (prepare or prepare-labeled) returned."
        )
    return path


def load_blocks(uri: str, split: str) -> np.ndarray:
    """Packed token blocks of one split, int32 [n_blocks, block_size]."""
    table = pq.read_table(root(uri) / "blocks" / f"{split}.parquet")
    column = table.column("input_ids").combine_chunks()
    return column.values.to_numpy().reshape(len(column), column.type.list_size)


def load_tokenizer(uri: str):
    """The tokenizer the dataset was encoded with."""
    # Imported here: tasks.model pulls in torch and transformers, and tasks.data.labeled (whose spec every flow imports)
    # needs only `root` from this module.
    from tasks.model import load_tokenizer

    return load_tokenizer(root(uri) / "tokenizer")


def card(uri: str) -> dict:
    """The data card: counts per filter and split, token counts, sources and digests."""
    return json.loads((root(uri) / "card.json").read_text())
