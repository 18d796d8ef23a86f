"""The labeled-data stage's spec: where each split comes from, its format, and which columns hold what."""

from typing import Literal

from pydantic import Field, model_validator

from tasks.data.spec import SplitSpec
from tasks.spec import Spec

SPLITS = ("train", "validation", "test")


class LabeledSplitSpec(SplitSpec):
    group: bool = True
    """Draw validation and test from train by whole groups: rows equal after lowercasing and dropping punctuation, or sharing a word n-gram of `contamination_ngram` words, land in one split, so that no drawn row overlaps a training row (SST-2's training file holds phrases of the same sentences); off hashes each row alone (rows of the very same text still land together)."""
    contained_min_words: int = Field(4, ge=1)
    """With `group`: a row of at least this many words but fewer than `contamination_ngram` also joins every row its words run inside, word for word (case and punctuation aside), since such a short row shares no n-gram with the longer one (SST-2 holds phrases cut out of its training sentences, with their own labels); lower joins more rows into larger groups (SST-2, n 8: 4 gives a largest group of 157 rows, 3 one of 4,968), and a value of `contamination_ngram` or more turns containment off."""


class LabeledSpec(Spec):
    task: Literal["classification", "sft", "extractive-qa", "math"] = "classification"
    """`classification`: a text (and optionally a second text) with a label; `sft`: a prompt and the response to learn; `extractive-qa`: a question, a context and the answers as character spans of the context (SQuAD); `math`: a word problem and its worked solution ending in `#### <number>` (GSM8K), scored by the extracted final answer."""
    train: list[str] = Field(min_length=1)
    """Training data: local files or folders (.jsonl .csv .tsv .parquet, SQuAD .json/.json.gz for extractive-qa, any file when format is set), `save_to_disk` folders, `s3://` URIs or `hf:<dataset id>` (online only); with format `parallel`, exactly `[prompt_file, response_file]`."""
    validation: list[str] = []
    """Validation data, used as it is (`split.validation` is then ignored); empty draws `split.validation` of the training rows by content hash."""
    test: list[str] = []
    """Test data, used as it is (`split.test` is then ignored); empty draws `split.test` of the training rows by content hash."""
    split: LabeledSplitSpec = LabeledSplitSpec()
    """Fractions of the training rows drawn for validation and test when those lists are empty, and whether near duplicates are drawn together; the salt also picks the rows kept by max_train_rows and max_eval_rows."""
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet", "arrow", "label-prefixed", "parallel", "squad"] = "auto"
    """File format; `auto` goes by extension (for extractive-qa, .json and .json.gz files are SQuAD); `squad`: SQuAD JSON, `data → paragraphs → qas → answers` with `answer_start` (optionally .gz); `label-prefixed`: one `LABEL text` per line (TREC), the label being the first whitespace-separated field; `parallel`: two plain-text files (optionally .gz) whose lines align, prompts then responses (Multi30k); `arrow`: a save_to_disk folder."""
    encoding: str | None = None
    """Text encoding of the files; empty means strict UTF-8, and a file that is not valid UTF-8 is an error (TREC's training file needs latin-1)."""
    text_column: str = "text"
    """Classification: the column (or JSON key) that holds the text; not used by label-prefixed files."""
    text_pair_column: str | None = None
    """Classification: the column with a second text for pair tasks (entailment, paraphrase); empty for single texts."""
    label_column: str = "label"
    """Classification: the column that holds the label, strings or integers (one type throughout); not used by label-prefixed files."""
    prompt_column: str = "prompt"
    """SFT: the column that holds the prompt; not used by parallel files."""
    response_column: str = "response"
    """SFT: the column that holds the response to learn; not used by parallel files."""
    question_column: str = "question"
    """Extractive QA: the column with the question; not used by SQuAD JSON files."""
    context_column: str = "context"
    """Extractive QA: the column with the context the answer is cut from; not used by SQuAD JSON files."""
    answers_column: str = "answers"
    """Extractive QA: the column with the answers, `{text: [...], answer_start: [...]}` (character offsets into the context, as Hugging Face's squad); not used by SQuAD JSON files."""
    title_column: str | None = None
    """Extractive QA: a column naming each row's article, which keeps an article's questions in one split; empty groups by context. SQuAD JSON files give the article title."""
    prompt_template: str = "{prompt}"
    """SFT: the prompt the model sees, with `{prompt}` replaced by the row's prompt, e.g. `Translate German to English: {prompt}`."""
    keep_annotations: bool = False
    """Math: keep GSM8K's `<<48/2=24>>` calculator annotations in the solutions; off strips them, so the model learns plain worked solutions."""
    allow_missing_answer: bool = False
    """Math: drop solutions without a `#### <number>` final answer and count them on the data card; off makes such a row an error naming its file and line."""
    label_before: str | None = None
    """Keep only the part of each label before this separator, e.g. `:` turns TREC's `LOC:city` into the coarse class `LOC`; empty keeps labels whole."""
    max_train_rows: int | None = Field(None, ge=1)
    """Keep at most this many training rows (after validation and test are drawn), chosen by a salted content hash so that neither file order nor a rerun changes the choice; empty keeps all. Extractive QA caps questions (single rows, not whole articles)."""
    max_eval_rows: int | None = Field(None, ge=1)
    """Keep at most this many rows of validation and of test each, chosen the same way; empty keeps all."""
    contamination_ngram: int = Field(8, ge=1, le=64)
    """Word n-gram length for the train/eval overlap report on the data card (a text shorter than this counts as one n-gram), and for the groups that `split.group` draws together."""
    decontaminate: bool = False
    """Drop training rows that equal a validation or test text or share an n-gram with one; off only reports the overlap."""
    normalize: bool = True
    """Unicode NFC, no control characters, single spaces, stripped, on texts, pairs, prompts and responses (not labels, and not extractive-QA rows, whose answers are character offsets into the context as given); rows left empty are dropped and counted in the card."""

    @model_validator(mode="after")
    def _consistent(self):
        if "{prompt}" not in self.prompt_template:
            raise ValueError(
                "labeled.prompt_template must contain {prompt}, where each row's prompt goes, e.g. 'Translate German to English: {prompt}'"
            )
        if self.format == "parallel":
            if self.task != "sft":
                raise ValueError("labeled.format parallel gives prompt/response pairs: set labeled.task to sft")
            for name in SPLITS:
                sources = getattr(self, name)
                if sources and len(sources) != 2:
                    raise ValueError(
                        f"labeled.{name} must be exactly [prompt_file, response_file] with format parallel, not {len(sources)} sources"
                    )
        if self.format == "squad" and self.task != "extractive-qa":
            raise ValueError(
                "labeled.format squad gives questions with answer spans: set labeled.task to extractive-qa"
            )
        if self.format == "label-prefixed" and self.task != "classification":
            raise ValueError("labeled.format label-prefixed gives labeled texts: set labeled.task to classification")
        for name in SPLITS:
            for src in getattr(self, name):
                if src.startswith("package:"):
                    raise ValueError(
                        f"labeled.{name}: {src} holds unlabeled text; use files, folders, s3:// or hf: sources"
                    )
                if src.startswith("hf:") and self.format in ("label-prefixed", "parallel", "squad"):
                    raise ValueError(
                        f"labeled.{name}: {src} is a hub dataset, not {self.format} files; set labeled.format to auto"
                    )
        return self

    def setting(self, field: str) -> str:
        """How error messages name one of this spec's settings (the shared readers ask)."""
        return "labeled.train, labeled.validation or labeled.test" if field == "sources" else f"labeled.{field}"
