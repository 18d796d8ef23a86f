"""The pretrain stage's spec: where to start, what to build, how to train, which objective."""

from typing import Literal

from pydantic import Field

from tasks.spec import ModelSpec, Spec, TrainSpec


class PretrainSpec(Spec):
    init: str | None = None
    """Continue pretraining this model (models:/name/version, models:/name@alias, a local folder, hf:<id>); empty trains `model` from scratch."""
    model: ModelSpec = ModelSpec()
    """Architecture and size of a model trained from scratch (ignored when `init` is set)."""
    train: TrainSpec = TrainSpec()
    """Optimisation, logging and checkpointing."""
    objective: Literal["clm", "mlm"] = "clm"
    """clm: predict the next token (gpt2, llama); mlm: predict masked tokens, BERT-style, for encoders (model.arch bert)."""
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    """mlm: fraction of tokens masked (80% replaced by [MASK], 10% by a random token, 10% kept)."""
    register_suffix: str = Field("-base", pattern=r"^[A-Za-z0-9_.-]*$")
    """The model is registered as `<name><suffix>`."""

    def model_post_init(self, _context) -> None:
        if self.init is None and (self.objective == "mlm") != (self.model.arch == "bert"):
            raise ValueError(
                f"pretrain.objective {self.objective} does not fit pretrain.model.arch {self.model.arch}: "
                "use mlm with bert, clm with gpt2 or llama"
            )
