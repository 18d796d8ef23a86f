"""Weight averaging on tiny models: a soup is the element-wise mean and loads back, greedy leaves out what hurts,
mismatched models are named, checkpoint averaging is the mean of the last k published checkpoints."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from tasks import model as models
from tasks import storage
from tasks.finetune import average, soup
from tasks.finetune.average import load_into, mean, mismatch, weights


def tiny_classifier(folder: Path, seed: int, hidden: int = 16) -> Path:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_a_soup_of_two_fine_tunes_is_the_element_wise_mean_and_loads_back(tmp_path):
    a, b = weights(tiny_classifier(tmp_path / "a", 1)), weights(tiny_classifier(tmp_path / "b", 2))
    assert not torch.equal(a["classifier.weight"], b["classifier.weight"])
    souped = mean([a, b])
    assert set(souped) == set(a)
    for name in a:
        assert torch.equal(souped[name], (a[name] + b[name]) / 2), name
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    load_into(model, souped)
    model.save_pretrained(tmp_path / "soup")
    back, _ = models.load(str(tmp_path / "soup"), auto=AutoModelForSequenceClassification, tokenizer=False)
    state = back.state_dict()
    for name in souped:
        assert torch.equal(state[name], souped[name]), name


def test_models_of_another_shape_or_with_other_parameters_are_named(tmp_path):
    a = weights(tiny_classifier(tmp_path / "a", 1))
    wider = weights(tiny_classifier(tmp_path / "b", 1, hidden=32))
    assert mismatch({"m/1": a, "m/2": a}) is None
    assert mismatch({"m/1": a, "m/2": wider}) == "m/2's bert.embeddings.LayerNorm.bias is (32,) where m/1's is (16,)"
    fewer = {k: v for k, v in a.items() if not k.startswith("classifier.")}
    assert mismatch({"m/1": a, "m/2": fewer}) == "m/2 lacks classifier.bias that m/1 has"


def test_greedy_soup_leaves_out_the_ingredient_that_lowers_validation_accuracy():
    # A linear classifier on separable points: `good` and `near` (good, scaled) score 1.0 alone and together;
    # `flipped` (-3 × good) scores 0.0, and adding it turns the soup's weights to -good/3, which scores 0.0: greedy must
    # keep good and near and leave flipped out; a uniform soup of all three would score 0.0.
    torch.manual_seed(0)
    truth = torch.tensor([1.0, -2.0, 0.5])
    x = torch.randn(200, 3)
    y = x @ truth > 0

    def accuracy(state):
        return float(((x @ state["w"] > 0) == y).float().mean())

    states = {"near": {"w": truth * 1.1}, "flipped": {"w": -3 * truth}, "good": {"w": truth.clone()}}
    kept, score = soup.greedy(states, accuracy)
    assert kept == ["near", "good"] and score == 1.0  # ties keep the given order
    assert accuracy(mean(list(states.values()))) == 0.0


def publish(model_dir: Path, dest: str, step: int, seed: int) -> dict:
    torch.manual_seed(seed)
    state = {"bert.pooler.dense.weight": torch.randn(16, 16), "classifier.weight": torch.randn(2, 16)}
    folder = model_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    save_file(state, str(folder / "model.safetensors"))
    storage.publish_dir(folder, f"{dest}/checkpoint-{step}")
    return state


def test_checkpoint_averaging_is_the_mean_of_the_last_k_published_checkpoints(tmp_path, home, monkeypatch):
    ctx = SimpleNamespace(artifact_uri=str(tmp_path / "artifacts"), run_id="run")
    monkeypatch.setattr(average, "MlflowClient", lambda: SimpleNamespace(set_tag=lambda *a: None))
    dest = average.checkpoints(ctx)
    states = [publish(tmp_path / "scratch", dest, step, seed=step) for step in (2, 4, 6)]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier(tmp_path / "m", 1))
    before = model.state_dict()["bert.embeddings.word_embeddings.weight"].clone()
    assert average.average_last(model, 2, ctx) == ["checkpoint-4", "checkpoint-6"]
    state = model.state_dict()
    for name in states[0]:
        assert torch.equal(state[name], (states[1][name] + states[2][name]) / 2), name
    assert torch.equal(state["bert.embeddings.word_embeddings.weight"], before)  # not in the checkpoints: untouched


def test_fewer_checkpoints_than_one_pair_keep_the_best(tmp_path, home):
    ctx = SimpleNamespace(artifact_uri=str(tmp_path / "artifacts"), run_id="run")
    publish(tmp_path / "scratch", average.checkpoints(ctx), 2, seed=2)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier(tmp_path / "m", 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert average.average_last(model, 3, ctx) == ["checkpoint-2"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("k", [1, 21])
def test_average_last_is_bounded(k):
    from pydantic import ValidationError

    from tasks.finetune.spec import FinetuneSpec

    with pytest.raises(ValidationError):
        FinetuneSpec(average_last=k)
