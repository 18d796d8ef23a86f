"""Model sources: from-scratch configs, local folders, refusals that say why."""

import pytest
import torch
from transformers import AutoTokenizer

from tasks import model as models
from tasks.data.spec import TokenizerSpec
from tasks.errors import UserError
from tasks.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["hello world, hello model"] * 20, TokenizerSpec(kind="char"))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_build_sizes_the_model_from_the_spec(tokenizer, arch):
    spec = models.ModelSpec(arch=arch, n_layer=3, n_head=2, n_embd=16, n_positions=48)
    model = models.build(spec, tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert models.max_positions(model.config) == 48
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert sum(1 for n, _ in model.named_modules() if n.count(".") == 2 and n.split(".")[-1].isdigit()) == 3


def test_local_folder_round_trip(tmp_path, tokenizer):
    model = models.build(models.ModelSpec(n_layer=1, n_head=1, n_embd=8, n_positions=16), tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, tok = models.load(str(tmp_path))
    ids = torch.tensor([tok.encode("hello")])
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_pickle_only_folder_is_refused_with_the_reason(tmp_path, tokenizer):
    model = models.build(models.ModelSpec(n_layer=1, n_head=1, n_embd=8, n_positions=16), tokenizer)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # the pickle format of older checkpoints
    with pytest.raises(UserError, match="only pickle weights .*pytorch_model.bin.*can run code"):
        models.load(str(tmp_path))


def test_missing_folder_and_unknown_package(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.load(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="Unknown model source package:nope"):
        models.load("package:nope")


def test_hf_id_offline_says_it_needs_network():
    with pytest.raises(UserError, match="need network"):
        models.load("hf:someone/some-model")


def test_tokenizer_is_saved_beside_the_model(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).encode("hello") == tokenizer.encode("hello")
