"""Adversarial training (FGM, PGD) on tiny random BERT and GPT-2 models: perturbation sizes, losses, gradients, logs."""

import math

import pydantic
import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from tasks.errors import UserError
from tasks.finetune.adversarial import perturbation, project, trainer_class
from tasks.finetune.spec import AdversarialSpec

VOCAB, BATCH, SEQ = 50, 4, 8


def batch(seed: int = 0, labels: str = "class") -> dict[str, torch.Tensor]:
    """Fixed random ids [BATCH, SEQ], right-padded with id 0 (rows keep 8, 6, 4, 7 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=gen)
    mask = (torch.arange(SEQ) < torch.tensor([[8], [6], [4], [7]])).long()
    ids = ids * mask
    if labels == "class":
        y = torch.randint(0, 2, (BATCH,), generator=gen)
    else:  # causal LM: the model shifts; pads and the first two tokens are left out of the loss
        y = ids.masked_fill(mask == 0, -100)
        y[:, :2] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": y}


def bert(dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(0)
    # no dropout unless asked: a training-mode forward is then deterministic and comparable with a plain one
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


def gpt2_config(**kw) -> GPT2Config:
    return GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=0,
        embd_pdrop=0,
        attn_pdrop=0,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        **kw,
    )


def trainer(model, tmp_path, spec: AdversarialSpec | None, train=None, **args) -> Trainer:
    arguments = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no", **args)
    return trainer_class(spec)(model=model, args=arguments, train_dataset=train)


def plain_loss(model, tmp_path, inputs) -> torch.Tensor:
    return trainer(model, tmp_path, None).compute_loss(model, dict(inputs))


def per_example_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)


# ---- spec ---------------------------------------------------------------------------------------


def test_spec_defaults_and_bounds():
    spec = AdversarialSpec()
    assert (spec.method, spec.epsilon, spec.alpha, spec.steps, spec.weight) == ("fgm", 1.0, 0.3, 3, 1.0)
    assert AdversarialSpec(method="fgm", steps=7).steps == 7  # ignored by fgm, not refused
    for bad in (
        {"epsilon": 0},
        {"alpha": -1},
        {"steps": 0},
        {"steps": 21},
        {"weight": -0.5},
        {"method": "free"},
        {"eps": 1},
    ):
        with pytest.raises(pydantic.ValidationError):
            AdversarialSpec(**bad)
    assert all(field.description for field in AdversarialSpec.model_fields.values())


def test_no_spec_returns_the_base_class():
    class Custom(Trainer):
        pass

    assert trainer_class(None) is Trainer
    assert trainer_class(None, Custom) is Custom
    adversarial = trainer_class(AdversarialSpec(), Custom)
    assert issubclass(adversarial, Custom) and adversarial is not Custom


# ---- the perturbation ---------------------------------------------------------------------------


def test_perturbation_has_norm_epsilon_per_example_and_spares_padding():
    grad = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    grad[1] *= 1000  # the size does not follow the gradient's
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    r = perturbation(grad, mask, 0.7)
    torch.testing.assert_close(per_example_norm(r), torch.full((3,), 0.7))
    assert (r[mask == 0] == 0).all()
    # Within the real tokens it points along the gradient.
    cos = torch.nn.functional.cosine_similarity((grad * mask[..., None]).flatten(1), r.flatten(1))
    torch.testing.assert_close(cos, torch.ones(3))


def test_zero_gradient_gives_zero_perturbation_not_nan():
    grad = torch.randn(2, 3, 4)
    grad[0] = 0
    mask = torch.ones(2, 3)
    mask[1] = 0  # an all-pad row: its gradient is masked to zero too
    r = perturbation(grad, mask, 1.0)
    assert torch.isfinite(r).all() and (r == 0).all()


def test_projection_keeps_every_example_inside_the_ball():
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(6, 5, 4, generator=gen) * torch.tensor([0.01, 0.1, 0.5, 2, 10, 0]).view(-1, 1, 1)
    projected = project(delta, 0.5)
    norms = per_example_norm(projected)
    assert (norms <= 0.5 + 1e-6).all()
    inside = per_example_norm(delta) <= 0.5
    torch.testing.assert_close(projected[inside], delta[inside])  # already inside: unchanged
    torch.testing.assert_close(norms[~inside], torch.full((int((~inside).sum()),), 0.5))  # outside: onto the sphere
    cos = torch.nn.functional.cosine_similarity(delta[~inside].flatten(1), projected[~inside].flatten(1))
    torch.testing.assert_close(cos, torch.ones_like(cos))
    assert torch.isfinite(projected).all()


# ---- compute_loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fgm", "pgd"])
def test_training_loss_is_clean_plus_adversarial(method, tmp_path):
    model, inputs = bert(), batch()
    model.train()
    clean = plain_loss(model, tmp_path, inputs)
    t = trainer(model, tmp_path, AdversarialSpec(method=method, epsilon=0.5))
    loss = t.compute_loss(model, dict(inputs))
    part_clean, adv = t._adv_parts
    torch.testing.assert_close(part_clean, clean.detach())
    torch.testing.assert_close(loss.detach(), clean.detach() + adv)
    assert adv > clean  # the nudge is chosen to raise the loss
    # The same nudge in a random direction raises it less.
    direction = (
        torch.randn(BATCH, SEQ, 16, generator=torch.Generator().manual_seed(3)) * inputs["attention_mask"][..., None]
    )
    random_delta = perturbation(direction, inputs["attention_mask"], 0.5)
    embeds = model.get_input_embeddings()(inputs["input_ids"]) + random_delta
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    assert adv > model(inputs_embeds=embeds, **rest).loss.detach()


def test_weight_zero_trains_on_the_clean_loss_alone(tmp_path):
    model, inputs = bert(), batch()
    model.train()
    loss = trainer(model, tmp_path, AdversarialSpec(weight=0)).compute_loss(model, dict(inputs))
    torch.testing.assert_close(loss, plain_loss(model, tmp_path, inputs))


def test_evaluation_scores_the_clean_loss(tmp_path):
    model, inputs = bert(), batch()
    t = trainer(model, tmp_path, AdversarialSpec(method="pgd"))
    model.train()
    with torch.no_grad():
        under_no_grad = t.compute_loss(model, dict(inputs))
    torch.testing.assert_close(under_no_grad, plain_loss(model, tmp_path, inputs).detach())
    model.eval()
    loss, outputs = t.compute_loss(model, dict(inputs), return_outputs=True)
    torch.testing.assert_close(loss, plain_loss(model, tmp_path, inputs))
    assert outputs.logits.shape == (BATCH, 2)


def test_gradients_reach_the_embedding_matrix_and_the_classifier(tmp_path):
    model, inputs = bert(), batch()
    model.train()
    plain_loss(model, tmp_path, inputs).backward()
    clean_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    trainer(model, tmp_path, AdversarialSpec()).compute_loss(model, dict(inputs)).backward()
    for name in ("bert.embeddings.word_embeddings.weight", "classifier.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
        assert not torch.allclose(grad, clean_grads[name]), f"{name}: the adversarial loss adds nothing"


@pytest.mark.parametrize(("method", "forwards"), [("fgm", 2), ("pgd", 4)])
def test_each_pgd_step_costs_one_forward(method, forwards, tmp_path):
    model, inputs = bert(), batch()
    model.train()
    calls = []
    model.bert.register_forward_hook(lambda *_: calls.append(1))
    trainer(model, tmp_path, AdversarialSpec(method=method, steps=3)).compute_loss(model, dict(inputs))
    assert len(calls) == forwards  # clean + adversarial, plus steps - 1 inner ones for PGD


def test_causal_lm_with_masked_labels(tmp_path):
    torch.manual_seed(0)
    model, inputs = GPT2LMHeadModel(gpt2_config()), batch(labels="lm")
    model.train()
    clean = plain_loss(model, tmp_path, inputs)
    t = trainer(model, tmp_path, AdversarialSpec(method="pgd", epsilon=0.5))
    loss = t.compute_loss(model, dict(inputs))
    assert torch.isfinite(loss) and loss > clean
    loss.backward()
    assert model.transformer.wte.weight.grad.abs().sum() > 0


def test_decoder_classifier_still_pools_the_last_real_token(tmp_path):
    # With inputs_embeds instead of input_ids, GPT-2 cannot see the padding and would pool the last (pad) position.
    torch.manual_seed(0)
    model, inputs = GPT2ForSequenceClassification(gpt2_config(num_labels=2)), batch()
    model.train()
    loss = trainer(model, tmp_path, AdversarialSpec(weight=0)).compute_loss(model, dict(inputs))
    torch.testing.assert_close(loss, plain_loss(model, tmp_path, inputs))


def test_lora_model_with_frozen_embeddings(tmp_path):
    model = get_peft_model(bert(), LoraConfig(r=2, target_modules=["query", "value"], task_type=TaskType.SEQ_CLS))
    assert not model.get_input_embeddings().weight.requires_grad
    model.train()
    loss = trainer(model, tmp_path, AdversarialSpec()).compute_loss(model, dict(batch()))
    loss.backward()
    lora = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(g is not None for g in lora) and any(g.abs().sum() > 0 for g in lora)


class NoInputsEmbeds(torch.nn.Module):
    """A classifier whose forward takes ids only (no inputs_embeds); it embeds them with its own layer."""

    def __init__(self, call_embeddings: bool = True):
        super().__init__()
        self.embed, self.head, self.call_embeddings = (
            torch.nn.Embedding(VOCAB, 8),
            torch.nn.Linear(8, 2),
            call_embeddings,
        )

    def forward(self, input_ids, attention_mask, labels):
        h = self.embed(input_ids) if self.call_embeddings else self.embed.weight[input_ids]
        logits = self.head((h * attention_mask[..., None]).sum(1))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_model_without_inputs_embeds_is_perturbed_through_its_embedding_layer(tmp_path):
    model = NoInputsEmbeds()
    model.get_input_embeddings = lambda: model.embed
    model.train()
    t = trainer(model, tmp_path, AdversarialSpec())
    loss = t.compute_loss(model, dict(batch()))
    assert loss > t._adv_parts[0]


def test_model_without_embedding_layer_is_refused(tmp_path):
    model = NoInputsEmbeds().train()
    expected = (
        r"finetune\.adversarial .*NoInputsEmbeds has no get_input_embeddings\(\).*set finetune\.adversarial to empty"
    )
    with pytest.raises(UserError, match=expected):
        trainer(model, tmp_path, AdversarialSpec()).compute_loss(model, dict(batch()))


def test_model_that_skips_its_embedding_layer_is_refused(tmp_path):
    model = NoInputsEmbeds(call_embeddings=False).train()
    model.get_input_embeddings = lambda: model.embed
    with pytest.raises(UserError, match=r"finetune\.adversarial .*NoInputsEmbeds did not call"):
        trainer(model, tmp_path, AdversarialSpec()).compute_loss(model, dict(batch()))


# ---- a real Trainer.train() ---------------------------------------------------------------------


def dataset(n: int = 16, labels: str = "class") -> list[dict[str, torch.Tensor]]:
    rows = [batch(seed, labels) for seed in range(n // BATCH)]
    return [{k: v[i] for k, v in b.items()} for b in rows for i in range(BATCH)]


@pytest.mark.parametrize(
    ("arch", "spec", "accumulate"),
    [
        ("bert", AdversarialSpec(method="fgm"), 1),
        ("bert", AdversarialSpec(method="pgd", steps=2, weight=0.5), 1),
        # GPT-2 normalises its loss over the tokens of the whole accumulated batch: the parts must still add up.
        ("gpt2", AdversarialSpec(method="pgd", steps=2, epsilon=0.5), 2),
    ],
)
def test_train_logs_adversarial_loss_beside_loss(arch, spec, accumulate, tmp_path):
    if arch == "bert":
        model, train = bert(dropout=0.1), dataset()
    else:
        torch.manual_seed(0)
        model, train = GPT2LMHeadModel(gpt2_config()), dataset(labels="lm")
    t = trainer(
        model,
        tmp_path,
        spec,
        train,
        max_steps=5,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulate,
        logging_steps=1,
        learning_rate=1e-3,
        seed=0,
    )
    before = model.get_input_embeddings().weight.detach().clone()
    t.train()
    logs = [entry for entry in t.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2, 3, 4, 5]
    for entry in logs:
        assert math.isfinite(entry["adv_loss"]) and entry["adv_loss"] > 0
        assert entry["loss"] == pytest.approx(entry["clean_loss"] + spec.weight * entry["adv_loss"], rel=1e-5)
    assert not torch.equal(before, model.get_input_embeddings().weight)
    # clean_loss is on the scale of the plain loss (per token or per example), not divided by the accumulation.
    assert logs[0]["clean_loss"] == pytest.approx(math.log(VOCAB if arch == "gpt2" else 2), rel=0.2)
