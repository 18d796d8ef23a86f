"""Structure surgery: identity expansion, dropping blocks, new tokens, classification heads, the spec and `apply`."""

import copy
import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from tasks import heads
from tasks.data.spec import TokenizerSpec
from tasks.errors import UserError
from tasks.tokenizer import train_tokenizer
from tasks.transfer import surgery
from tasks.transfer.spec import TransferSpec

VOCAB = 48


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["hello world, hello model. the quick brown fox"] * 5, TokenizerSpec(kind="char"))


def tiny(arch: str, layers: int = 4, vocab: int = VOCAB, **extra):
    """A randomly initialised model of the architecture, in eval mode (dropout off)."""
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=layers, n_head=2, n_inner=32,
                            bos_token_id=0, eos_token_id=0, **extra)  # fmt: skip
        return GPT2LMHeadModel(config).eval()
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                             bos_token_id=0, eos_token_id=0, **extra)  # fmt: skip
        return LlamaForCausalLM(config).eval()
    config = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, **extra)  # fmt: skip
    return BertForMaskedLM(config).eval()


def ids(n: int = 10, batch: int = 2) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, n), generator=torch.Generator().manual_seed(1))


def block_params(block) -> int:
    return sum(p.numel() for p in block.parameters())


# ---- identity expansion ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("positions, new", [([0], [0]), ([2], [2]), ([-1], [4]), ([0, 3, 5], [0, 3, 5])])
def test_identity_blocks_leave_logits_exactly_unchanged(arch, positions, new):
    model = tiny(arch)
    with torch.no_grad():
        before = model(ids()).logits
    assert surgery.insert_identity_blocks(model, positions) == new
    blocks = surgery._blocks(model)
    assert len(blocks) == model.config.num_hidden_layers == 4 + len(positions)
    with torch.no_grad():
        after = model(ids()).logits
    # Bit-equal, not just close: each new block adds an exact 0 (zero weights and biases) to the residual stream.
    assert torch.equal(after, before)


def test_new_blocks_copy_the_block_below_with_only_the_residual_writers_zeroed():
    model = tiny("llama")
    source = surgery._blocks(model)[1]
    [at] = surgery.insert_identity_blocks(model, [2])
    clone = surgery._blocks(model)[at]
    assert clone is not source
    for name, param in clone.named_parameters():
        if name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            assert not param.any()
        else:
            assert torch.equal(param, source.get_parameter(name)) and param.any(), name
            assert param.data_ptr() != source.get_parameter(name).data_ptr()  # a copy, trained on its own


def test_gpt2_new_block_zeroes_projection_weights_and_biases():
    model = tiny("gpt2")
    with torch.no_grad():  # GPT-2 initialises biases to 0; make them non-zero so zeroing them matters
        for p in model.parameters():
            p.add_(0.01)
        before = model(ids()).logits
    [at] = surgery.insert_identity_blocks(model, [1])
    block = surgery._blocks(model)[at]
    for name in ("attn.c_proj", "mlp.c_proj"):
        assert not block.get_submodule(name).weight.any() and not block.get_submodule(name).bias.any()
    assert block.attn.c_attn.weight.any() and block.attn.c_attn.bias.any()
    with torch.no_grad():
        assert torch.equal(model(ids()).logits, before)


def test_llama_generates_with_cache_after_surgery_and_survives_a_save(tmp_path):
    model = tiny("llama", layers=5)
    prompt = ids(4, batch=1)
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    original = model.generate(prompt, **greedy)
    surgery.drop_layers(model, [1, 3])
    surgery.insert_identity_blocks(model, [0, 2])
    # Each attention addresses the KV cache by layer_idx; unrenumbered, a copy would share its source's slot.
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2, 3, 4]
    cached = model.generate(prompt, **greedy, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, **greedy, use_cache=False))
    assert not torch.equal(cached, original)  # two blocks fewer: a different model
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 5
    with torch.no_grad():
        assert torch.equal(reloaded(ids()).logits, model(ids()).logits)


def test_identity_insertion_generates_the_same_text():
    model = tiny("llama")
    prompt = ids(4, batch=1)
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    before = model.generate(prompt, **greedy)
    surgery.insert_identity_blocks(model, [1, -1])
    assert torch.equal(model.generate(prompt, **greedy), before)


def test_bert_identity_insertion_is_refused_as_post_ln():
    with pytest.raises(UserError, match=r"BertForMaskedLM is post-LN .*drop layers instead"):
        surgery.insert_identity_blocks(tiny("bert"), [1])


def test_insert_position_out_of_range():
    with pytest.raises(
        UserError, match=r"insert_identity_at: index 6 is out of range for a stack of 6 blocks .*0–5, or -6 to -1"
    ):
        surgery.insert_identity_blocks(tiny("gpt2"), [0, 6])


# ---- dropping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_drop_layers_removes_the_blocks_and_their_parameters(arch):
    model = tiny(arch, layers=6)
    blocks = surgery._blocks(model)
    expected = model.num_parameters() - block_params(blocks[1]) - block_params(blocks[5])
    kept = [blocks[i] for i in (0, 2, 3, 4)]
    assert surgery.drop_layers(model, [-1, 1]) == [1, 5]
    assert model.num_parameters() == expected
    assert model.config.num_hidden_layers == 4
    assert list(surgery._blocks(model)) == kept
    assert model(ids()).logits.shape == (2, 10, VOCAB)


def test_drop_every_kth_block():
    model = tiny("gpt2", layers=7)
    assert surgery.drop_layers(model, every=3) == [2, 5]
    assert model.config.n_layer == 5 and model.config.to_dict()["n_layer"] == 5
    assert [b.attn.layer_idx for b in model.transformer.h] == [0, 1, 2, 3, 4]


def test_per_layer_config_lists_follow_the_blocks():
    model = tiny("llama", layers=4, layer_types=["full_attention"] * 4)
    model.config.layer_types = ["t0", "t1", "t2", "t3"]  # distinct markers to see the order
    surgery.drop_layers(model, [1])
    surgery.insert_identity_blocks(model, [1])
    assert model.config.layer_types == ["t0", "t0", "t2", "t3"]


@pytest.mark.parametrize(
    "layers, every, message",
    [
        (
            [7],
            None,
            r"transfer.drop_layers: index 7 is out of range for a model with 6 layers \(valid: 0–5, or -6 to -1\)",
        ),
        ([-7], None, r"index -7 is out of range"),
        ([1, -5], None, r"index -5 names block 1 a second time"),
        ([0, 1, 2, 3, 4, 5], None, r"removes all 6 layers: keep at least one"),
        (None, 1, r"drop_every: 1 would drop every block"),
        (None, 7, r"drop_every: 7 drops nothing from a model with 6 layers"),
    ],
)
def test_bad_drops_name_the_index_and_the_valid_range(layers, every, message):
    model = tiny("gpt2", layers=6)
    with pytest.raises(UserError, match=message):
        surgery.drop_layers(model, layers, every)
    assert len(model.transformer.h) == 6  # nothing changed


def test_unsupported_architecture_is_named():
    config = MistralConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    with pytest.raises(UserError, match="MistralForCausalLM is not supported .*GPT-2, Llama or BERT"):
        surgery.drop_layers(MistralForCausalLM(config), [0])


def test_layer_scaled_gpt2_is_refused():
    with pytest.raises(UserError, match="scale_attn_by_inverse_layer_idx=False"):
        surgery.drop_layers(tiny("gpt2", scale_attn_by_inverse_layer_idx=True), [0])


# ---- tokens -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, tied", [("gpt2", True), ("llama", False)])
def test_resize_embeddings_keeps_old_rows_and_skips_known_tokens(tokenizer, arch, tied):
    tok = copy.deepcopy(tokenizer)  # the fixture is shared and add_tokens changes it
    model = tiny(arch, vocab=len(tok), **({} if tied else {"tie_word_embeddings": False}))
    old_in = model.get_input_embeddings().weight.clone()
    old_out = model.get_output_embeddings().weight.clone()
    assert surgery.resize_embeddings(model, tok, ["<ent>", "h", "<ent>", "<rel>"]) == 2  # "h" is a known char
    n = old_in.shape[0]
    new_in, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert new_in.shape[0] == new_out.shape[0] == len(tok) == n + 2 == model.config.vocab_size
    assert torch.equal(new_in[:n], old_in) and torch.equal(new_out[:n], old_out)
    assert torch.equal(new_in[n], old_in.mean(0)) and torch.equal(new_out[n + 1], old_out.mean(0))
    assert (new_in.data_ptr() == new_out.data_ptr()) == tied
    assert tok.convert_tokens_to_ids(tok.tokenize("h<ent>")) == [tok.convert_tokens_to_ids("h"), n]
    assert model(torch.tensor([[n, n + 1]])).logits.shape == (1, 2, n + 2)
    assert surgery.resize_embeddings(model, tok, ["<ent>"]) == 0


def test_resize_never_shrinks_a_padded_vocabulary(tokenizer):
    tok = copy.deepcopy(tokenizer)
    model = tiny("gpt2", vocab=len(tok) + 8)  # rows beyond the tokenizer, as in vocabularies padded to 64
    old = model.get_input_embeddings().weight.clone()
    assert surgery.resize_embeddings(model, tok, ["<ent>"]) == 1
    new = model.get_input_embeddings().weight
    first = len(tok) - 1
    assert new.shape == old.shape
    assert torch.equal(new[first], old[:first].mean(0))
    assert torch.equal(new[:first], old[:first]) and torch.equal(new[first + 1 :], old[first + 1 :])


# ---- classification heads ---------------------------------------------------------------------------


def test_gpt2_head_keeps_the_body_and_classifies_a_padded_batch(tokenizer):
    source = tiny("gpt2", vocab=len(tokenizer))
    model = heads.classification_head(source, tokenizer, ["neg", "neu", "pos"])
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and model.config.label2id["pos"] == 2
    assert model.config.pad_token_id == tokenizer.pad_token_id is not None
    body = source.transformer.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in model.transformer.state_dict().items())
    batch = tokenizer(["hello world", "hello"], padding=True, return_tensors="pt")
    assert batch["input_ids"][1, -1] == tokenizer.pad_token_id  # the short one is padded
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        alone = model(**tokenizer(["hello"], return_tensors="pt")).logits
    assert logits.shape == (2, 3)
    # The padded row reads its last real token: equal to the unpadded run up to float summation order.
    torch.testing.assert_close(logits[1], alone[0], atol=1e-6, rtol=0)


def test_bert_mlm_folder_becomes_a_classifier_with_the_body_intact(tmp_path, tokenizer):
    source = tiny("bert")
    source.save_pretrained(tmp_path)
    model = heads.classification_head(str(tmp_path), tokenizer, ["a", "b"])
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 2
    body = source.bert.state_dict()  # an MLM has no pooler: it starts fresh along with the head
    assert all(torch.equal(v, body[k]) for k, v in model.bert.state_dict().items() if not k.startswith("pooler."))
    assert model(ids()).logits.shape == (2, 2)


def test_an_existing_head_is_replaced_not_reused(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    source = BertForSequenceClassification(config)
    model = heads.classification_head(source, tokenizer, ["x", "y"])
    assert model.classifier.weight.shape == source.classifier.weight.shape
    assert not torch.equal(model.classifier.weight, source.classifier.weight)
    assert torch.equal(model.bert.pooler.dense.weight, source.bert.pooler.dense.weight)


def test_a_head_needs_two_distinct_labels(tokenizer):
    with pytest.raises(UserError, match="at least 2 distinct labels"):
        heads.classification_head(tiny("gpt2"), tokenizer, ["only"])


# ---- spec and apply ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"drop_layers": [1, 1]}, "transfer.drop_layers lists 1 more than once"),
        ({"insert_identity_at": [2, 0, 2]}, "transfer.insert_identity_at lists 2 more than once"),
        ({"labels": ["a", "b", "a"]}, "transfer.labels lists 'a' more than once"),
        ({"labels": ["a"]}, "transfer.labels has one label .*at least 2"),
        ({"add_tokens": ["x", ""]}, "transfer.add_tokens contains an empty string"),
        ({"drop_layers": [0], "drop_every": 2}, "drop_layers and transfer.drop_every are both set"),
        ({"drop_every": 1}, "drop_every\n.*greater than or equal to 2"),
        ({"drop_layer": [0]}, "drop_layer\n.*Extra inputs are not permitted"),
    ],
)
def test_spec_validation_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        TransferSpec(**fields)


def test_spec_fields_have_help_text():
    assert all(field.description for field in TransferSpec.model_fields.values())


def test_apply_runs_in_order_and_is_deterministic(tokenizer):
    spec = TransferSpec(add_tokens=["<ent>"], drop_layers=[-1, 0], insert_identity_at=[1], labels=["no", "yes"])

    def run():
        tok = copy.deepcopy(tokenizer)
        model = tiny("gpt2", layers=4, vocab=len(tok))
        torch.manual_seed(1)  # the new head is the only random part
        return surgery.apply(spec, model, tok)

    model, tok, ops = run()
    assert ops == [
        {"op": "add_tokens", "tokens": ["<ent>"], "added": 1},
        {"op": "drop_layers", "layers": [0, 3]},
        {"op": "insert_identity", "at": [1]},
        {"op": "classification_head", "labels": ["no", "yes"]},
    ]
    assert json.loads(json.dumps(ops)) == ops
    assert model.config.n_layer == 3 and model.config.vocab_size == len(tok)
    assert model(torch.tensor([[tok.convert_tokens_to_ids("<ent>"), 2]])).logits.shape == (1, 2)
    again, _, ops_again = run()
    assert ops_again == ops
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_apply_with_a_default_spec_does_nothing(tokenizer):
    model = tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    same, _, ops = surgery.apply(TransferSpec(), model, tokenizer)
    assert ops == [] and same is model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_apply_drop_every_is_recorded(tokenizer):
    _, _, ops = surgery.apply(TransferSpec(drop_every=2), tiny("bert"), tokenizer)
    assert ops == [{"op": "drop_layers", "layers": [1, 3], "every": 2}]
