"""The augment stage: a labeled dataset URI (+ an unlabeled pool, + a teacher model) → a new dataset URI with more training rows.

Operations: EDA edits (`eda`), pseudo-labels from a teacher (`pseudo`), adversarial examples that flip a teacher (the
word-substitution attack of tasks/attack.py). Every new row carries provenance (source row, operation, parameters,
teacher and confidence); validation and test are copied untouched. The specs are in `spec`, the body is `stage.run`.
"""
