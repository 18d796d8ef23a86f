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
    """mlm: fraction of tokens masked (80% replaced by [MASK], 10% by a random token, 10% kept); with whole_word_mask, of words."""
    whole_word_mask: bool = False
    """mlm: mask whole words, every piece of a chosen word at once and always by [MASK] (transformers' whole-word masking has no random or kept tokens). Words are read from the tokenizer's pieces: WordPiece `##` continuations join the piece before; for byte-level BPE and SentencePiece a word starts at each piece with a leading space marker (punctuation joins the word before); a character tokenizer marks no words and is refused."""
    register_suffix: str = Field("-base", pattern=r"^[A-Za-z0-9_.-]*$")
    """The model is registered as `<name><suffix>`."""

    def model_post_init(self, _context) -> None:
        if self.whole_word_mask and self.objective != "mlm":
            raise ValueError(
                "pretrain.whole_word_mask masks words for mlm: set pretrain.objective to mlm, or whole_word_mask to false"
            )
        if self.init is None and (self.objective == "mlm") != (self.model.arch == "bert"):
            raise ValueError(
                f"pretrain.objective {self.objective} does not fit pretrain.model.arch {self.model.arch}: "
                "use mlm with bert, clm with gpt2 or llama"
            )
