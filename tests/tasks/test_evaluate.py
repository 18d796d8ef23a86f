"""Next-token distributions and perplexity, checked where the answer is known exactly."""

import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tasks.evaluate.stage import mean_loss, next_token_distribution


def equal_logits_model(vocab: int) -> GPT2LMHeadModel:
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=1, n_head=1, n_embd=8, n_positions=16))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0, whatever the context
    return model


def test_equal_logits_over_three_words_give_one_third_each():
    """The seed's §4.3 example: vocabulary {the, cat, sat}, equal logits → p = 1/3 each, summing to 1."""
    vocab = {"the": 0, "cat": 1, "sat": 2}
    model = equal_logits_model(len(vocab))
    context = torch.tensor([[vocab["the"], vocab["cat"]]])
    p = next_token_distribution(model, context)
    assert p.shape == (1, 3)
    assert torch.allclose(p, torch.full((1, 3), 1 / 3))
    assert p.sum().item() == pytest.approx(1.0)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = equal_logits_model(7)
    blocks = np.random.default_rng(0).integers(0, 7, size=(10, 12), dtype=np.int32)
    assert math.exp(mean_loss(model, blocks, batch_size=4)) == pytest.approx(7.0, rel=1e-5)
