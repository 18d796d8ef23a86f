"""Layer-wise learning-rate decay and top-block re-initialisation (Zhang et al. 2021) on a tiny BERT classifier."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from tasks import methods
from tasks.errors import UserError
from tasks.finetune import layers
from tasks.finetune.spec import FinetuneSpec
from tasks.finetune.trainer import build


@pytest.fixture
def bert(tmp_path):
    """A 3-block BERT classifier saved and loaded back, as a stage loads its init (transformers marks loaded weights)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    return AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert")


def lr_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """(lr, weight_decay) by parameter name."""
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def test_layer_lr_decay_gives_each_block_its_rate_in_the_trainers_optimizer(bert, home):
    spec = FinetuneSpec(layer_lr_decay=0.5, train={"lr": 1e-3, "weight_decay": 0.1, "max_steps": 2})
    trainer = build(spec, bert, None, [], [], None, SimpleNamespace(run_id="r"), metric="accuracy", greater=True)
    optimizer = trainer.create_optimizer()
    rates = lr_of(optimizer, bert)
    assert len(rates) == len(list(bert.parameters()))  # every trainable parameter, once
    enc = "bert.encoder.layer.{}.attention.self.query.weight"
    assert rates["classifier.weight"] == (pytest.approx(1e-3), 0.1)  # the head and the top block at train.lr
    assert [rates[enc.format(i)][0] for i in (2, 1, 0)] == pytest.approx([1e-3, 5e-4, 2.5e-4])
    assert rates["bert.embeddings.word_embeddings.weight"][0] == pytest.approx(1.25e-4)  # below the lowest block
    assert rates["bert.encoder.layer.1.attention.self.query.bias"] == (pytest.approx(5e-4), 0.0)  # no decay on biases
    assert rates["bert.embeddings.LayerNorm.weight"] == (pytest.approx(1.25e-4), 0.0)
    # The schedule scales every group alike: a step into the warmup keeps the ratios between blocks.
    trainer.create_scheduler(num_training_steps=4, optimizer=optimizer)
    optimizer.step(), trainer.lr_scheduler.step()
    later = lr_of(optimizer, bert)
    assert 0 < later["classifier.weight"][0] < 1e-3
    assert later[enc.format(0)][0] / later["classifier.weight"][0] == pytest.approx(0.25)


def test_without_decay_the_trainer_keeps_its_own_two_groups(bert, home):
    spec = FinetuneSpec(train={"lr": 1e-3, "max_steps": 2})
    trainer = build(spec, bert, None, [], [], None, SimpleNamespace(run_id="r"), metric="accuracy", greater=True)
    assert len(trainer.create_optimizer().param_groups) == 2


def test_reinit_draws_the_top_blocks_afresh_and_leaves_the_rest(bert):
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    layers.reinit_top(bert, 2)
    changed = {n for n, p in bert.named_parameters() if not torch.equal(p, before[n])}
    top = {n for n in before if n.startswith(("bert.encoder.layer.1.", "bert.encoder.layer.2."))}
    # Every weight matrix of the top two blocks is drawn again (biases and LayerNorms are reset to 0 and 1, and the
    # saved model already had those values); nothing below or beside them moves.
    assert {n for n in top if n.endswith(".weight") and "LayerNorm" not in n} <= changed <= top
    # BERT's initialiser: N(0, 0.02) weights, zero biases.
    query = bert.bert.encoder.layer[2].attention.self.query
    assert query.weight.std().item() == pytest.approx(0.02, rel=0.3) and not query.bias.any()


def test_reinit_refuses_frozen_blocks_and_more_blocks_than_the_model_has(bert):
    with pytest.raises(UserError, match=r"reinit_layers \(4\) exceeds the model's 3 blocks: set it to at most 3"):
        layers.reinit_top(bert, 4)
    frozen = methods.prepare(bert, FinetuneSpec(freeze_layers=2), "classification")
    with pytest.raises(UserError, match="re-initialises blocks that finetune.freeze_layers keeps frozen"):
        layers.reinit_top(frozen, 2)


def test_reinit_with_a_frozen_backbone_is_refused_in_the_spec():
    with pytest.raises(ValueError, match="reinit_layers re-initialises blocks that method lora keeps frozen"):
        FinetuneSpec(method="lora", reinit_layers=1)
