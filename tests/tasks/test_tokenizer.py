from pydoc_data.topics import topics

import numpy as np
import pytest

from tasks.data.spec import TokenizerSpec
from tasks.errors import UserError
from tasks.tokenizer import EOS, check_coverage, encode, load_tokenizer, pack, train_tokenizer, unigram_perplexity

# CPython's bundled documentation: real English prose and code, ~0.5 MB, offline.
CORPUS = [p for t in topics.values() for p in t.split("\n\n") if p.strip()]
SAMPLES = [
    "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\n  Ay me!",
    "def f(x):\n    return x  +  1\t# two spaces, a tab\n",
    "a . b , c ' d n't 's",  # patterns the old tokenization clean-up would have changed
    " leading and trailing spaces ",
]


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(CORPUS, TokenizerSpec(kind="bpe", vocab_size=1000))


@pytest.fixture(scope="module")
def char():
    return train_tokenizer(CORPUS + SAMPLES, TokenizerSpec(kind="char"))


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trip(bpe, text):
    assert bpe.decode(encode(bpe, [text])[0]) == text


def test_bpe_encodes_unseen_scripts_without_unk(bpe):
    text = "日本語 ✓ émoji 🙂"
    assert bpe.decode(encode(bpe, [text])[0]) == text


def test_bpe_vocab_size_is_respected(bpe):
    assert len(bpe) == 1000
    assert max(max(ids) for ids in encode(bpe, CORPUS[:200])) < 1000


def test_bpe_vocab_never_exceeds_request_on_tiny_corpus():
    tok = train_tokenizer(["tiny corpus"], TokenizerSpec(kind="bpe", vocab_size=4096))
    assert 257 <= len(tok) <= 4096


@pytest.mark.parametrize("text", SAMPLES)
def test_char_round_trip_keeps_spaces_and_newlines(char, text):
    ids = encode(char, [text])[0]
    assert len(ids) == len(text)  # one token per character
    assert char.decode(ids) == text


def test_char_unseen_characters_become_unk():
    tok = train_tokenizer(["abc"], TokenizerSpec(kind="char"))
    assert encode(tok, ["abz"])[0] == [*encode(tok, ["ab"])[0], tok.unk_token_id]
    assert len(tok) == 5  # a, b, c, eos, unk


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_special_tokens_and_max_length(kind, bpe, char):
    tok = {"bpe": bpe, "char": char}[kind]
    assert tok.eos_token == tok.pad_token == EOS
    assert tok.eos_token_id is not None
    assert tok.model_max_length >= 2**31
    # no special tokens are added: the packer places eos itself
    assert encode(tok, ["the"])[0] == tok("the", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_and_load_give_identical_ids(kind, bpe, char, tmp_path):
    tok = {"bpe": bpe, "char": char}[kind]
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert encode(loaded, CORPUS[:300] + SAMPLES) == encode(tok, CORPUS[:300] + SAMPLES)
    assert loaded.eos_token_id == tok.eos_token_id and loaded.pad_token_id == tok.eos_token_id
    assert loaded.decode(encode(loaded, SAMPLES[:1])[0]) == SAMPLES[0]


def test_literal_eos_string_in_text_is_plain_text(bpe):
    ids = encode(bpe, ["end <|endoftext|> here"])[0]
    assert bpe.eos_token_id not in ids
    assert bpe.decode(ids) == "end <|endoftext|> here"


def test_encode_many_batches_keeps_order(char):
    texts = [f"row {i}" for i in range(2500)]
    assert encode(char, texts, batch_size=100) == [encode(char, [t])[0] for t in texts]


def test_load_tokenizer_without_files_names_the_folder(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UserError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_load_tokenizer_uses_eos_as_missing_pad(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"pad_token": "<|endoftext|>",', ""))
    assert load_tokenizer(tmp_path).pad_token == EOS


def test_a_tokenizer_that_maps_the_text_to_its_unknown_token_is_refused():
    tok = train_tokenizer(["abc"], TokenizerSpec(kind="char"))  # a model's tokenizer that has never seen this script
    texts = ["Съешь же ещё этих мягких французских булок", "abc"]
    with pytest.raises(
        UserError,
        match=r"^The tokenizer of models:/m/1 turns 93% of the training text into its unknown token '<unk>': "
        r"it does not fit this text; .*set data.tokenizer.kind to bpe or char",
    ):
        check_coverage(tok, texts, encode(tok, texts), "models:/m/1")
    check_coverage(tok, ["abc cab"], encode(tok, ["abc cab"]), "models:/m/1")  # a space in seven characters is fine


def test_a_tokenizer_that_makes_almost_no_tokens_is_refused(char):
    texts = ["x" * 5000]
    with pytest.raises(
        UserError, match=r"^The tokenizer of /m makes 12 tokens from 5,000 characters of training text: it does not fit"
    ):
        check_coverage(char, texts, [[5] * 12], "/m")
    check_coverage(char, texts, [[5] * 50], "/m")  # one token per 100 characters is still a tokenizer


def test_pack_shapes_eos_and_dtype():
    blocks = pack([[1, 2, 3], [4, 5], [6]], sep_id=0, block_size=3)
    assert blocks.dtype == np.int32
    # stream: 1 2 3 0 4 5 0 6 0 -> three full blocks
    np.testing.assert_array_equal(blocks, [[1, 2, 3], [0, 4, 5], [0, 6, 0]])


def test_pack_drops_the_short_tail():
    blocks = pack([[1, 2, 3, 4]], sep_id=9, block_size=4)
    np.testing.assert_array_equal(blocks, [[1, 2, 3, 4]])  # the trailing eos alone is dropped


def test_pack_long_document_spans_blocks():
    doc = list(range(1, 11))
    blocks = pack([doc, [20]], sep_id=0, block_size=4)
    assert blocks.shape == (3, 4)
    np.testing.assert_array_equal(blocks.ravel(), [*doc, 0, 20])


def test_pack_handles_empty_documents_and_inputs():
    np.testing.assert_array_equal(pack([[], [7], []], sep_id=0, block_size=2), [[0, 7], [0, 0]])
    assert pack([], sep_id=0, block_size=8).shape == (0, 8)


def old_pack(token_lists, sep_id, block_size, prefix=(), suffix=()):
    """tasks.tokenizer.pack before it read the ids in one np.fromiter pass (commit 1790180)."""
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists)) + 1
    ends = np.cumsum(lengths)
    stream = np.full(int(ends[-1]) if len(ends) else 0, sep_id, dtype=np.int32)
    is_token = np.ones(len(stream), dtype=bool)
    is_token[ends - 1] = False
    if is_token.any():
        stream[is_token] = np.concatenate([np.asarray(t, dtype=np.int32) for t in token_lists if t])
    content = block_size - len(prefix) - len(suffix)
    n_blocks = len(stream) // content
    body = stream[: n_blocks * content].reshape(n_blocks, content)
    before, after = (np.tile(np.asarray(t, dtype=np.int32), (n_blocks, 1)) for t in (prefix, suffix))
    return np.concatenate([before, body, after], axis=1)


def test_pack_equals_the_old_pack_on_random_documents():
    rng = np.random.default_rng(6)
    docs = [rng.integers(0, 2**31 - 1, size=int(rng.choice([0, 1, 5, 40, 300]))).tolist() for _ in range(400)]
    for block_size, prefix, suffix in ((2, [], []), (7, [], []), (128, [101], [102]), (64, [1, 2], [])):
        new, old = pack(docs, 3, block_size, prefix, suffix), old_pack(docs, 3, block_size, prefix, suffix)
        assert new.dtype == old.dtype == np.int32 and new.shape == old.shape and new.shape[0] > 0
        np.testing.assert_array_equal(new, old)
    assert pack([[], []], 3, 4).shape == old_pack([[], []], 3, 4).shape == (0, 4)


def test_unigram_perplexity_of_uniform_symbols_is_their_count():
    rng = np.random.default_rng(0)
    k = 50
    train = rng.integers(0, k, size=(2000, 64))
    evaluation = rng.integers(0, k, size=(200, 64))
    assert unigram_perplexity(train, evaluation, vocab_size=k) == pytest.approx(k, rel=0.01)


def test_unigram_perplexity_ignores_the_first_token_of_each_block():
    train = np.array([[1, 1, 1, 1]])
    # the first column (token 0, never seen in training) is not predicted by a causal LM
    assert unigram_perplexity(train, np.array([[0, 1, 1, 1]]), vocab_size=2) == pytest.approx(6 / 5)


def test_unigram_perplexity_without_eval_blocks_is_a_user_error():
    with pytest.raises(UserError, match="block_size"):
        unigram_perplexity(np.zeros((1, 4), dtype=np.int32), np.zeros((0, 4), dtype=np.int32), vocab_size=4)
