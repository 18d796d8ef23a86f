"""The gate stage's spec: the metric that decides, the policy (margin, significance, no regressions; without a champion,
the trivial baseline and a threshold), the alias it moves."""

from typing import Literal

from pydantic import Field, model_validator

from tasks.spec import Spec

# The metric `gate.metric: auto` stands for, by task (the gate and a sweep's report read it).
AUTO = {
    "classification": "accuracy",
    "sft": "chrf",
    "extractive-qa": "f1",
    "math": "answer_accuracy",
    "lm": "perplexity",
}


class GateSpec(Spec):
    metric: Literal["auto", "accuracy", "macro_f1", "exact_match", "chrf", "perplexity", "f1", "answer_accuracy"] = (
        "auto"
    )
    """Test metric that decides; auto: accuracy for classification, chrf for SFT, f1 (SQuAD token F1) for extractive QA, answer_accuracy (the extracted final number) for math, perplexity for a language model."""
    min_delta: float = Field(0.0, ge=0)
    """The challenger must beat the champion by more than this (in the metric's units: 0.01 = one accuracy point; perplexity compares mean log-loss)."""
    require_significance: bool = False
    """Promote only when the paired-bootstrap confidence interval of the difference excludes zero."""
    confidence: float = Field(0.95, gt=0.5, lt=1)
    """Confidence level of the bootstrap interval."""
    bootstrap_samples: int = Field(1000, ge=100, le=100000)
    """Resamples of the test rows for the interval."""
    must_not_regress: list[Literal["accuracy", "macro_f1", "ece", "exact_match", "chrf", "bleu", "f1"]] = []
    """Other metrics the challenger may not lose on (beyond regress_tolerance), e.g. macro_f1 when accuracy decides."""
    regress_tolerance: float = Field(0.0, ge=0)
    """How much a must_not_regress metric may drop before it blocks promotion."""
    baseline: bool = True
    """With no champion yet (or one these test rows cannot score), promote only a challenger that beats the task's trivial baseline on the same test rows: the add-one unigram of the training tokens (language model, perplexity), always the most frequent training label (classification), the prompt copied as the response (SFT), the context's first words (extractive QA), the most frequent training answer (math). Off: the first challenger is promoted unless threshold says otherwise."""
    threshold: float | None = None
    """With no champion yet (or one these test rows cannot score): the challenger's metric must also reach this (e.g. 0.8 accuracy, 50 perplexity), on top of beating the trivial baseline; empty sets no extra bar."""
    alias: str = Field("champion", pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    """The alias that marks the promoted version; the candidate gets `challenger` (unless report_only)."""
    max_rows: int | None = Field(None, ge=10)
    """Score at most this many test rows (blocks for a language model), chosen by content hash; empty scores all."""
    report_only: bool = False
    """Score and record the decision but move no alias (neither `challenger` nor the promoted one): what the cells of a sweep do."""

    @model_validator(mode="after")
    def _alias_is_not_challenger(self):
        if self.alias == "challenger":
            raise ValueError("gate.alias cannot be `challenger`: that alias marks every candidate; use e.g. champion")
        return self
