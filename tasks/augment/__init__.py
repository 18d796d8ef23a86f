"""The augment stage: a labeled dataset URI (+ an unlabeled pool, + a teacher model) → a new dataset URI with more training rows.

Operations: EDA edits (`eda`), pseudo-labels from a teacher (`pseudo`), adversarial examples that flip a teacher
(`adversarial`). Every new row carries provenance (source row, operation, parameters, teacher and confidence);
validation and test are copied untouched. The specs are in `spec`, the body is `stage.run`.
"""

from tasks.augment.spec import AttackSpec, AugmentSpec, EdaSpec, PseudoLabelSpec

__all__ = ["AttackSpec", "AugmentSpec", "EdaSpec", "PseudoLabelSpec", "run"]


def __getattr__(name: str):
    # `run` is imported on first use: the body pulls in torch and transformers, which importing this package for its
    # specs (the flows, the run form, a worker starting any stage flow) must not wait for.
    if name == "run":
        from tasks.augment.stage import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
