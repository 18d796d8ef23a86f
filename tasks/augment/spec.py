"""The augment stage's specs: EDA, pseudo-labels and the stage itself (the attack's AttackSpec is shared with finetune, in
tasks/spec.py)."""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tasks.spec import AttackSpec, Spec

OPERATIONS = ("synonym", "insert", "swap", "delete")  # the order EDA's copies cycle through, from a per-row offset


class EdaSpec(Spec):
    copies: int = Field(4, ge=1, le=64)
    """Augmented copies made of each training row (the paper's n_aug: it suggests 16 for ~500 rows, 4 for 5,000 or more)."""
    synonym_rate: float = Field(0.1, ge=0, le=1)
    """Synonym replacement: fraction of a row's words replaced by a synonym (at least one); 0 turns it off."""
    insert_rate: float = Field(0.1, ge=0, le=1)
    """Random insertion: synonyms of the row's words inserted at random places, as a fraction of its words (at least one); 0 turns it off."""
    swap_rate: float = Field(0.1, ge=0, le=1)
    """Random swap: pairs of words swapped, as a fraction of the row's words (at least one); 0 turns it off."""
    delete_rate: float = Field(0.1, ge=0, le=1)
    """Random deletion: probability that each word is deleted (one word always stays); 0 turns it off."""
    protected: list[str] = []
    """Words never replaced, deleted, moved or inserted, whatever their case, e.g. negations such as not, no, never."""
    seed: int = 0
    """The same seed and rows give the same augmented rows, in any order and any process."""
    synonyms: Literal["auto", "wordnet", "embedding"] = "auto"
    """Where synonyms come from: WordNet, the nearest neighbours in a model's input embeddings, or auto (WordNet if installed, else the embeddings)."""

    @model_validator(mode="after")
    def _some_rate(self):
        if not any(self.rates.values()):
            raise ValueError(
                "augment.eda: every rate is 0, so EDA would only copy rows: "
                "set one of synonym_rate, insert_rate, swap_rate, delete_rate above 0, or drop augment.eda"
            )
        return self

    @property
    def rates(self) -> dict[str, float]:
        """α per operation, in OPERATIONS order."""
        return {op: getattr(self, f"{op}_rate") for op in OPERATIONS}


class DistillSpec(Spec):
    temperature: float = Field(2.0, gt=0, le=100)
    """T: teacher and student logits are divided by T before the softmax; above 1 the teacher's runner-up classes carry more of the signal (Hinton et al. 2015)."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the distillation term on pseudo-labeled rows: (1 − alpha)·cross-entropy on the teacher's label + alpha·T²·KL(teacher ‖ student) at temperature T; 0 is plain hard labels. Gold rows always train on cross-entropy alone."""


class PseudoLabelSpec(Spec):
    pool: list[str] = Field(min_length=1)
    """Unlabeled texts: local files or folders (.jsonl .csv .tsv .parquet), `save_to_disk` folders, `s3://` or `hf:` ids; a label column, if any, is ignored."""
    text_column: str = "text"
    """The column (or JSON key) of the pool that holds the text."""
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet", "arrow"] = "auto"
    """File format of the pool; `auto` goes by extension."""
    encoding: str | None = None
    """Text encoding of the pool files; empty means strict UTF-8."""
    max_pool_rows: int | None = Field(20000, ge=1)
    """Pool rows the teacher labels, chosen by content hash; empty labels them all."""
    min_words: int | None = Field(None, ge=1)
    """Leave out pool rows of fewer words than this (before max_pool_rows picks): a pool of fragments (SST-2's training rows are phrases of parse trees) teaches a student little about the whole sentences it will be tested on; empty keeps every row."""
    threshold: float = Field(0.9, ge=0, le=1)
    """Keep a row only when the teacher's probability for its predicted label is at least this."""
    per_class: int | None = Field(1000, ge=1)
    """At most this many rows per predicted label (the most confident first); empty sets no cap."""
    balance: bool = True
    """Keep the same number of rows for every label (the smallest label's count, under the cap), so the teacher's bias toward a class is not amplified."""
    max_ratio: float | None = Field(1.0, gt=0, le=100)
    """At most this many pseudo-labeled rows per gold training row (the most confident kept; per label when balance is on): a pool several times the gold set drowns it, and a teacher's mistakes then outweigh the labels; empty sets no cap."""
    distill: DistillSpec | None = None
    """Soft labels: the teacher's logits are stored on each pseudo-labeled row and the student also learns the teacher's whole distribution (temperature, alpha); empty trains on the hard pseudo-labels only."""
    seed: int = 0
    """Salts the content hash that picks the pool rows when max_pool_rows caps them (0 keeps the original choice); a sweep sets it from its seeds."""

    def setting(self, field: str) -> str:
        """How error messages name a setting (the shared readers ask)."""
        return "augment.pseudo.pool" if field == "sources" else f"augment.pseudo.{field}"


class PromptTeacherSpec(Spec):
    model: str = "package:smollm2-135m"
    """An instruction-tuned causal LM (package:, a folder, a registry version, an hf: id) asked `prompt` about each pool row; the score of each label word right after `answer` is its vote."""
    prompt: str = Field(min_length=1)
    """The question, as the user's turn of the model's chat template, with {text} where the row goes, e.g. "Is the sentiment of this movie review positive or negative?\n\n{text}"."""
    answer: str = ""
    """How the model's reply begins before the label word, e.g. "The sentiment is"; empty scores the reply's first token."""
    label_words: dict[str, str] = Field(min_length=2)
    """The word that answers for each label of the data, e.g. {"0": negative, "1": positive}: every label needs one, and no two may start with the same token."""
    calibrate: bool = True
    """Fit a logistic regression from the label words' scores to the gold training rows' labels, which corrects the model's bias toward a word and its scale (SST-2, SmolLM2-135M: 61% on dev uncalibrated, 84% calibrated on 500 rows); off uses the softmax over the label words."""
    alone: bool = True
    """Label the pool with this model alone (the round-0 teacher then only stands against the student on validation, and is attacked); off averages its probabilities with that teacher's and augment.teachers'."""
    guard: bool = True
    """Fine-tune the plain model first (round 0) and keep the prompt teacher's student only if it beats it on validation; off labels the pool before anything trains and the student is the result: a plain fine-tune's time less (about a third of the recipe), with nothing to fall back on if the model does not know the task (check the stage's prompt_teacher_val_accuracy)."""
    batch_size: int = Field(32, ge=1, le=4096)
    """Prompts per forward pass."""

    @field_validator("label_words", mode="before")
    @classmethod
    def _label_names(cls, value):
        # YAML reads {0: negative} with int keys; labels are names, so 0 means "0"
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _text_slot(self):
        if "{text}" not in self.prompt:
            raise ValueError(
                "augment.prompt_teacher.prompt has no {text}: put {text} where each row's text goes, e.g. 'Is this review positive or negative?\n\n{text}'"
            )
        try:
            self.prompt.replace("{text}", "").format()
        except (IndexError, KeyError, ValueError):
            raise ValueError(
                "augment.prompt_teacher.prompt has braces other than {text}: double them ({{ and }}) to keep them as text"
            ) from None
        return self


class AugmentSpec(Spec):
    eda: EdaSpec | None = None
    """Easy Data Augmentation: synonym replacement, random insertion, swap and deletion, `copies` new rows per training row; needs no model when WordNet is installed."""
    pseudo: PseudoLabelSpec | None = None
    """Pseudo-labels: a teacher labels an unlabeled pool and its confident rows join training; with `rounds` > 1 the student becomes the next teacher (self-training)."""
    adversarial: AttackSpec | None = None
    """Adversarial examples: training rows that a word-substitution attack makes the teacher misclassify, added with their true labels."""
    teacher: str | None = None
    """Classifier that labels the pool and is attacked (models:/name@alias, a folder); empty fine-tunes one on the labeled (and EDA) data first (not with augment.prompt_teacher.guard off)."""
    teachers: list[str] = []
    """More classifiers that label the pool with the teacher (each round's teacher, augment.teacher or the student that took over): pseudo-labels and soft labels come from the mean of their probabilities, e.g. models from other seeds, or a soup; the attack asks the teacher alone."""
    prompt_teacher: PromptTeacherSpec | None = None
    """An instruction-tuned language model that labels the pseudo-label pool zero-shot from a prompt, calibrated on the gold training rows: a teacher that knows more than the few labels taught the fine-tuned one (SST-2, 500 rows: see README "Which recipe when")."""
    synonym_model: str | None = None
    """Model whose input embeddings give EDA's synonyms when WordNet is missing; empty takes the model fine-tuning starts from."""
    rounds: int = Field(1, ge=1, le=20)
    """Teacher → student rounds for pseudo-labels and adversarial examples: each round's student is fine-tuned from the same start and becomes the next teacher."""
    min_gain: float = Field(0.0, ge=0, le=1)
    """Self-training stops when a student's validation accuracy beats its teacher's by less than this (0: stop as soon as it is no better)."""
    max_length: int = Field(128, ge=8, le=4096)
    """Longest tokenized text the teacher sees when it labels or is attacked."""

    @model_validator(mode="after")
    def _something_to_do(self):
        if not (self.eda or self.pseudo or self.adversarial):
            raise ValueError(
                "augment has no operation: set augment.eda, augment.pseudo or augment.adversarial, or set augment to null"
            )
        if self.teachers and not self.pseudo:
            raise ValueError(
                "augment.teachers label the pseudo-label pool, and augment.pseudo is not set: set augment.pseudo (its pool), or drop augment.teachers"
            )
        if self.prompt_teacher and not self.pseudo:
            raise ValueError(
                "augment.prompt_teacher labels the pseudo-label pool, and augment.pseudo is not set: set augment.pseudo (its pool), or drop augment.prompt_teacher"
            )
        if self.prompt_teacher and self.prompt_teacher.alone and self.teachers:
            raise ValueError(
                "augment.teachers would label the pool beside augment.prompt_teacher, which labels it alone: "
                "set augment.prompt_teacher.alone false to average them, or drop augment.teachers"
            )
        if self.unguarded and not self.prompt_teacher.alone:
            raise ValueError(
                "augment.prompt_teacher.guard is off, so no model is trained before the pool is labeled, and alone is off, which averages in that model: "
                "set augment.prompt_teacher.alone true, or guard true"
            )
        if self.unguarded and self.adversarial and not self.teacher:
            raise ValueError(
                "augment.adversarial attacks a fine-tuned teacher, and augment.prompt_teacher.guard off trains none before the student: "
                "set augment.prompt_teacher.guard true, give augment.teacher, or drop augment.adversarial"
            )
        if self.unguarded and self.rounds > 1:
            raise ValueError(
                f"augment.rounds is {self.rounds}, but with augment.prompt_teacher.guard off the prompt teacher labels the pool alone once "
                "and its student is the result: set augment.rounds 1, or guard true"
            )
        return self

    @property
    def unguarded(self) -> bool:
        """The prompt teacher labels the pool before any model trains, and its first student is the result."""
        return self.prompt_teacher is not None and not self.prompt_teacher.guard

    def labelers(self) -> dict[str, str]:
        """The models besides the round's teacher that label the pool, by the name their stage input takes."""
        found = {f"teachers{i}": uri for i, uri in enumerate(self.teachers)}
        return found | ({"prompt_teacher": self.prompt_teacher.model} if self.prompt_teacher else {})

    @property
    def model_driven(self) -> bool:
        """Pseudo-labels and adversarial examples need a teacher; EDA alone does not."""
        return bool(self.pseudo or self.adversarial)

    @property
    def hardware(self) -> Literal["cpu", "gpu"]:
        """Where the stage belongs: a teacher's forward passes want a GPU, EDA's word edits a CPU."""
        return "gpu" if self.model_driven else "cpu"
