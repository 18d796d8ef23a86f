"""The prepare stage's spec: what to read, how to clean and split it, how to tokenize it."""

from typing import Literal

from pydantic import Field, model_validator

from tasks.spec import Spec


class CleanSpec(Spec):
    normalize: bool = True
    """Unicode NFC, drop control characters, collapse runs of spaces and blank lines."""
    min_chars: int = Field(1, ge=1)
    """Rows shorter than this (after normalising) are dropped."""
    max_chars: int | None = Field(None, ge=1)
    """Rows longer than this are dropped; empty for no upper bound."""
    exact_dedup: bool = True
    """Drop rows whose text repeats an earlier row exactly."""
    near_dedup_threshold: float | None = Field(0.9, gt=0, le=1)
    """Estimated Jaccard similarity (MinHash over word shingles) at which a row counts as a near duplicate of an earlier one; empty to skip."""
    shingle_words: int = Field(3, ge=1, le=16)
    """Words per shingle for near-duplicate detection."""
    minhash_permutations: int = Field(128, ge=16, le=1024)
    """MinHash permutations: more is more accurate and slower."""
    contamination_ngram: int = Field(13, ge=1, le=64)
    """Word n-gram length of the train/eval overlap report on the data card (13, as GPT-3's decontamination used)."""
    decontaminate: bool = False
    """Drop training rows that share an n-gram with a validation or test row; off only reports the overlap."""


class SplitSpec(Spec):
    validation: float = Field(0.05, ge=0, lt=1)
    """Fraction of rows for validation, chosen by a hash of the row's text (stable across runs and machines)."""
    test: float = Field(0.05, ge=0, lt=1)
    """Fraction of rows for test, chosen the same way."""
    salt: str = ""
    """Mixed into the split hash: change it to draw a different, still deterministic, split."""

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self):
        if self.validation + self.test >= 1:
            raise ValueError(
                "split.validation + split.test must be below 1 so that rows remain for training: lower them"
            )
        return self


class TokenizerSpec(Spec):
    kind: Literal["bpe", "char", "model"] = "bpe"
    """`bpe`: train a byte-level BPE on the training split; `char`: one token per character; `model`: use the tokenizer of the model being trained from."""
    vocab_size: int = Field(4096, ge=260, le=262144)
    """Vocabulary size for a trained BPE (the 256 byte symbols and the special tokens included)."""


class PrepareSpec(Spec):
    sources: list[str] = Field(default_factory=lambda: ["package:pydoc-topics"], min_length=1)
    """Where the text comes from: local files or folders (.txt .jsonl .csv .tsv .parquet), a `save_to_disk` folder, `s3://bucket/key`, `hf:<dataset id>` (online only), or `package:pydoc-topics` (CPython's bundled documentation)."""
    format: Literal["auto", "text", "jsonl", "csv", "tsv", "parquet", "arrow"] = "auto"
    """File format; `auto` goes by the file extension (`arrow` is a `save_to_disk` folder)."""
    text_column: str = "text"
    """Column (or JSON key) that holds the text in tabular sources."""
    encoding: str | None = None
    """Text encoding of the files; empty means strict UTF-8, and a file that is not valid UTF-8 is an error."""
    text_unit: Literal["line", "paragraph", "file"] = "paragraph"
    """How plain-text files are cut into rows: each line, each blank-line separated paragraph, or the whole file."""
    clean: CleanSpec = CleanSpec()
    """Normalisation, length bounds and duplicate removal."""
    split: SplitSpec = SplitSpec()
    """Validation and test fractions."""
    tokenizer: TokenizerSpec = TokenizerSpec()
    """How text becomes token ids."""
    block_size: int = Field(128, ge=2, le=131072)
    """Tokens per packed training block, the frame of a model's tokenizer included (BERT's [CLS] … [SEP] leaves block_size - 2 for text); must not exceed the model's positions."""
