"""The evaluate stage's spec: which splits of a prepared corpus to score, in batches of how many blocks."""

from typing import Literal

from pydantic import Field

from tasks.spec import Spec


class EvaluateSpec(Spec):
    splits: list[Literal["validation", "test"]] = Field(default_factory=lambda: ["validation", "test"], min_length=1)
    """Splits to score."""
    batch_size: int = Field(32, ge=1)
    """Blocks per forward pass."""
    max_blocks: int | None = Field(None, ge=1)
    """Score at most this many blocks per split (the first ones); empty scores all."""
