"""The transfer stage's spec: which blocks to drop or insert, which tokens to add, which labels a new head gets."""

from pydantic import Field

from tasks.spec import Spec


class TransferSpec(Spec):
    init: str | None = None
    """Model to operate on (a registry URI, local folder, package:<name>); empty takes the model the pipeline pretrained."""
    register_suffix: str = Field("-transfer", pattern=r"^[A-Za-z0-9_.-]*$")
    """The result is registered as `<name><suffix>`, with the operations in its lineage."""
    seed: int = 0
    """Seed for what surgery initialises at random (a new classification head)."""
    drop_layers: list[int] = []
    """Blocks to remove, by index in the model's stack (0 is the first; negative counts from the end, -1 is the last); empty keeps them all."""
    drop_every: int | None = Field(None, ge=2)
    """Remove every k-th block (the k-th, 2k-th, …, i.e. indices k-1, 2k-1, …); empty removes none. Not together with drop_layers."""
    insert_identity_at: list[int] = []
    """Positions in the final stack (after dropping) where new blocks go, LLaMA-Pro style: each copies the block below it with its output projections zeroed, so the model computes exactly what it did until trained. Negative counts from the end. GPT-2 and Llama only."""
    add_tokens: list[str] = []
    """Tokens to add to the tokenizer (ones it already has are skipped); their embeddings start at the mean of the existing ones."""
    labels: list[str] | None = None
    """Replace the model's head with a freshly initialised classification head for these labels (at least 2); empty keeps the head."""

    def model_post_init(self, _context) -> None:
        for field in ("drop_layers", "insert_identity_at", "add_tokens", "labels"):
            values = getattr(self, field) or []
            repeated = sorted({repr(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"transfer.{field} lists {', '.join(repeated)} more than once: list each entry once")
        if self.drop_layers and self.drop_every:
            raise ValueError(
                "transfer.drop_layers and transfer.drop_every are both set: choose one way to pick the blocks to drop"
            )
        if "" in self.add_tokens:
            raise ValueError("transfer.add_tokens contains an empty string: remove it")
        if self.labels is not None and len(self.labels) == 1:
            raise ValueError(
                f"transfer.labels has one label ({self.labels[0]!r}): a classifier needs at least 2, or leave it empty"
            )
