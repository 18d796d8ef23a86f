"""Soft-label distillation: the loss by hand, the collator, and the Trainer that trains it (adversarial training too)."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, TrainingArguments

from tasks.finetune import adversarial, distill
from tasks.finetune.spec import AdversarialSpec
from tests.tasks.augment.keyword_model import save_keyword_classifier

STUDENT = torch.tensor([[2.0, 0.0], [0.5, 1.5], [-1.0, 1.0]])
TEACHER = torch.tensor([[0.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
LABELS = torch.tensor([0, 1, 1])
SOFT = torch.tensor([True, True, False])  # the third row is gold: its teacher logits are ignored


def softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def by_hand(temperature: float, alpha: float) -> float:
    total = 0.0
    for s, t, y, soft in zip(STUDENT.tolist(), TEACHER.tolist(), LABELS.tolist(), SOFT.tolist()):
        ce = -math.log(softmax(s)[y])
        if not soft:
            total += ce
            continue
        p = softmax([x / temperature for x in t])
        q = softmax([x / temperature for x in s])
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        total += (1 - alpha) * ce + alpha * temperature**2 * kl
    return total / 3


@pytest.mark.parametrize("temperature, alpha", [(2.0, 0.5), (1.0, 1.0), (4.0, 0.25)])
def test_the_loss_is_hintons_on_soft_rows_and_cross_entropy_on_gold_rows(temperature, alpha):
    got = distill.loss(STUDENT, LABELS, TEACHER, SOFT, temperature, alpha)
    assert got.item() == pytest.approx(by_hand(temperature, alpha), rel=1e-5)
    assert by_hand(temperature, alpha) != pytest.approx(by_hand(temperature, 0.0))  # the soft term matters here


def test_alpha_zero_is_plain_cross_entropy():
    got = distill.loss(STUDENT, LABELS, TEACHER, SOFT, 2.0, 0.0)
    assert got.item() == pytest.approx(F.cross_entropy(STUDENT, LABELS).item(), rel=1e-6)


@pytest.fixture
def student(tmp_path):
    folder = tmp_path / "student"
    save_keyword_classifier(folder, ["good", "bad", "film", "the"], keyword="good")
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return model, AutoTokenizer.from_pretrained(folder)  # no dropout: the same batch gives the same loss in train mode


def batch(tok):
    texts, teacher, soft = ["good film", "bad film", "the film"], [[-3.0, 1.0], [2.0, 0.0], [0.0, 0.0]], [1, 1, 0]
    features = [
        {**tok(t), "labels": y, distill.LOGITS: lg, distill.SOFT: bool(s)}
        for t, y, lg, s in zip(texts, [1, 0, 0], teacher, soft)
    ]
    return distill.Collator(DataCollatorWithPadding(tok))(features)


def test_the_trainer_trains_the_distillation_loss_and_adversarial_training_wraps_it(student, tmp_path):
    model, tok = student
    inputs = batch(tok)
    assert inputs[distill.LOGITS].shape == (3, 2) and inputs[distill.SOFT].tolist() == [True, True, False]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True)
    model.train()
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}).logits
    expected = distill.loss(logits, inputs["labels"], inputs[distill.LOGITS], inputs[distill.SOFT], 2.0, 0.5)
    cls = distill.trainer_class(2.0, 0.5)
    got = cls(model=model, args=args).compute_loss(model, dict(inputs))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() != pytest.approx(
        F.cross_entropy(logits, inputs["labels"]).item(), rel=1e-3
    )  # not the model's own loss

    # FGM on top: the clean part of its loss is the distillation loss, and the total adds the adversarial pass.
    both = adversarial.trainer_class(AdversarialSpec(method="fgm", epsilon=0.5), base=cls)(model=model, args=args)
    total = both.compute_loss(model, dict(inputs))
    clean, adv = both._adv_parts
    assert clean.item() == pytest.approx(expected.item(), rel=1e-5) and total.item() == pytest.approx(
        clean.item() + adv.item(), rel=1e-5
    )
    assert adv.item() > clean.item()

    # evaluation batches carry no teacher: the collator and the loss are the base's
    plain = distill.Collator(DataCollatorWithPadding(tok))([{**tok("good film"), "labels": 1}])
    assert distill.LOGITS not in plain
    with torch.no_grad():
        assert cls(model=model, args=args).compute_loss(model, plain).item() == pytest.approx(
            model(**plain).loss.item()
        )
