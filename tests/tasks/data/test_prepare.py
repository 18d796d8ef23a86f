"""The prepare stage's tokenizer: a model folder that supplies it must hold it, and it must fit the text."""

import pytest
import torch

from tasks import model as models
from tasks.data import prepare
from tasks.data.spec import PrepareSpec, TokenizerSpec
from tasks.errors import UserError
from tasks.spec import ModelSpec
from tasks.tokenizer import train_tokenizer

FROM_MODEL = PrepareSpec(tokenizer=TokenizerSpec(kind="model"))


@pytest.fixture
def weights_only(tmp_path):
    """A model folder with config.json and model.safetensors, no tokenizer files."""
    tok = train_tokenizer(["hello world"], TokenizerSpec(kind="char"))
    model = models.build(ModelSpec(n_layer=1, n_head=1, n_embd=8, n_positions=16), tok)
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_a_model_folder_without_tokenizer_files_names_both_fixes(weights_only):
    with pytest.raises(
        UserError,
        match=rf"^Model folder {weights_only} has no tokenizer files \(.*\): save the tokenizer it was trained with "
        r"into it \(tokenizer.save_pretrained\), or set data.tokenizer.kind to bpe or char\.$",
    ):
        prepare._model_tokenizer(FROM_MODEL, str(weights_only))


def test_a_pickle_only_folder_is_refused_for_its_weights_before_its_tokenizer(weights_only):
    model = models.load(str(weights_only), tokenizer=False)[0]
    (weights_only / "model.safetensors").unlink()
    torch.save(model.state_dict(), weights_only / "pytorch_model.bin")
    with pytest.raises(
        UserError,
        match=rf"^Model folder {weights_only} holds only pickle weights \(pytorch_model.bin\).*convert them to safetensors",
    ):
        prepare._model_tokenizer(FROM_MODEL, str(weights_only))
