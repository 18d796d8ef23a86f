"""Continued pretraining's data: blocks framed as the model's tokenizer frames a text, documents ended by eos or sep,
whole-word masking over packed blocks, what each objective needs of the init model, and the shipped models' tokenizers."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import BertConfig, LlamaConfig, T5Config

from tasks import model as models
from tasks import objectives, tracking
from tasks import tokenizer as tokenizers
from tasks.data import prepare, prepared, sources
from tasks.data.spec import PrepareSpec, TokenizerSpec
from tasks.errors import UserError
from tasks.pretrain import stage
from tasks.pretrain.spec import PretrainSpec
from tasks.tracking import configure
from tests.tasks.augment.keyword_model import tokenizer as bert_tokenizer
from tests.tasks.tiny_folders import llama_bpe

PIECES = ["the", "film", "was", "un", "##believ", "##able", "##s", "good", "."]
CLS, SEP, MASK = 2, 3, 4  # keyword_model's vocabulary: [PAD] [UNK] [CLS] [SEP] [MASK], then PIECES from 5
THE, FILM, WAS, UN, BELIEV, ABLE, S, GOOD, DOT = range(5, 14)


@pytest.fixture
def bert(tmp_path):
    return bert_tokenizer(tmp_path, PIECES)


def test_bert_blocks_are_cls_text_sep_with_documents_ended_by_sep(bert):
    ids = tokenizers.encode(bert, ["The film was unbelievable.", "Good films", "The film"])
    assert ids == [[THE, FILM, WAS, UN, BELIEV, ABLE, DOT], [GOOD, FILM, S], [THE, FILM]]
    assert tokenizers.separator(bert) == SEP and tokenizers.frame(bert) == ([CLS], [SEP])
    # 8 tokens of text per block of 10; the stream's 15 tokens fill one block, the tail is dropped.
    blocks = tokenizers.pack(ids, tokenizers.separator(bert), 10, *tokenizers.frame(bert))
    assert blocks.tolist() == [[CLS, THE, FILM, WAS, UN, BELIEV, ABLE, DOT, SEP, SEP]]
    blocks = tokenizers.pack(ids, SEP, 6, [CLS], [SEP])
    assert blocks.tolist() == [
        [CLS, THE, FILM, WAS, UN, SEP],
        [CLS, BELIEV, ABLE, DOT, SEP, SEP],
        [CLS, GOOD, FILM, S, SEP, SEP],
    ]


def test_a_llama_template_puts_bos_first_and_eos_ends_documents():
    tok = llama_bpe(["the film was good", "a plot"] * 20)
    assert tokenizers.separator(tok) == tok.eos_token_id and tokenizers.frame(tok) == ([tok.bos_token_id], [])
    ids = tokenizers.encode(tok, ["the film", "a plot"])
    blocks = tokenizers.pack(ids, tok.eos_token_id, 4, *tokenizers.frame(tok))
    stream = ids[0] + [tok.eos_token_id] + ids[1] + [tok.eos_token_id]
    assert blocks.tolist() == [[tok.bos_token_id, *stream[i : i + 3]] for i in range(0, len(stream) - 2, 3)]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizers_trained_here_frame_nothing_and_end_documents_with_eos(kind):
    tok = tokenizers.train_tokenizer(["hello world, hello model"] * 20, TokenizerSpec(kind=kind, vocab_size=300))
    assert tokenizers.frame(tok) == ([], []) and tokenizers.separator(tok) == tok.eos_token_id
    np.testing.assert_array_equal(tokenizers.pack([[1, 2, 3], [4]], 0, 3), [[1, 2, 3], [0, 4, 0]])


def test_padding_and_truncation_saved_in_a_tokenizer_change_neither_frame_nor_text(bert):
    # Packed blocks are never padded: a tokenizer.json that pads (on the left) or truncates must not leak into them.
    bert.backend_tokenizer.enable_padding(direction="left", length=16, pad_id=0, pad_token="[PAD]")
    bert.backend_tokenizer.enable_truncation(max_length=3)
    bert.padding_side = "left"
    assert tokenizers.frame(bert) == ([CLS], [SEP])
    assert tokenizers.encode(bert, ["the film was unbelievable"]) == [[THE, FILM, WAS, UN, BELIEV, ABLE]]


def test_word_starts_from_wordpiece_byte_level_bpe_and_none_from_characters(bert):
    starts = tokenizers.word_starts(bert)
    assert [i for i in range(5, 14) if not starts[i]] == [BELIEV, ABLE, S]
    bpe = tokenizers.train_tokenizer(["hello world, hello model"] * 20, TokenizerSpec(kind="bpe", vocab_size=300))
    starts = tokenizers.word_starts(bpe)
    assert starts[bpe.convert_tokens_to_ids("Ġworld")] and not starts[bpe.convert_tokens_to_ids("hello")]
    assert tokenizers.word_starts(tokenizers.train_tokenizer(["hello"], TokenizerSpec(kind="char"))) is None


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(bert):
    block = tokenizers.pack(
        tokenizers.encode(bert, ["The film was unbelievable.", "Good films"]), SEP, 13, [CLS], [SEP]
    )
    words = [[1], [2], [3], [4, 5, 6], [7], [9], [10, 11]]  # positions of each word's pieces; 0, 8 and 12 are special
    data = stage.WordBlocks(np.repeat(block, 4, axis=0), tokenizers.word_starts(bert))
    spec = PretrainSpec(objective="mlm", whole_word_mask=True, mlm_probability=0.4, model={"arch": "bert"})
    torch.manual_seed(0)
    batch = stage.collator(spec, bert)([data[i] for i in range(4)])
    masked = (batch["labels"] != -100).tolist()
    assert [[i for i, m in enumerate(row) if m] for row in masked] == [
        [2, 3, 4, 5, 6, 10, 11],
        [1, 9],
        [1, 2, 3, 4, 5, 6, 7, 9, 10, 11],
        [2, 4, 5, 6, 9],
    ]
    assert all(len({row[p] for p in word}) == 1 for row in masked for word in words)
    # Chosen words are always [MASK] (no random or kept tokens); their labels are the pieces.
    assert torch.equal(batch["input_ids"] == MASK, batch["labels"] != -100)
    assert torch.equal(batch["labels"][2, [4, 5, 6]], torch.tensor([UN, BELIEV, ABLE]))
    # The same seed, token by token, splits unbelievable: the test above would see it.
    torch.manual_seed(0)
    plain = PretrainSpec(objective="mlm", mlm_probability=0.4, model={"arch": "bert"})
    tokens = stage.collator(plain, bert)([{"input_ids": data[i]["input_ids"]} for i in range(4)])
    assert (tokens["labels"][0, [4, 5, 6]] != -100).tolist() == [True, False, False]


def test_whole_word_mask_is_for_mlm_only():
    with pytest.raises(ValueError, match="pretrain.whole_word_mask masks words for mlm: set pretrain.objective to mlm"):
        PretrainSpec(whole_word_mask=True)


@pytest.mark.parametrize(
    "config, objective, message",
    [
        (
            LlamaConfig(),
            "mlm",
            "pretrain.objective mlm needs an encoder, but pretrain.init {} is a decoder-only llama model",
        ),
        (BertConfig(), "clm", "pretrain.objective clm needs a decoder, but pretrain.init {} is a bert encoder"),
        (
            T5Config(),
            "clm",
            "pretrain.init {} is a t5 model, with neither a masked-LM nor a causal-LM head in transformers",
        ),
    ],
)
def test_an_objective_the_init_architecture_was_not_built_for_is_refused_from_its_config(
    tmp_path, bert, config, objective, message
):
    config.save_pretrained(tmp_path)  # the config alone decides: no weights are read
    with pytest.raises(UserError, match="^" + message.format(tmp_path).replace(".", r"\.")):
        objectives.check_init(objective, str(tmp_path), models.Located(tmp_path, tmp_path), bert)


def test_a_bert_saved_as_a_decoder_takes_clm_and_an_encoder_takes_mlm(tmp_path, bert):
    BertConfig(is_decoder=True).save_pretrained(tmp_path / "decoder")
    BertConfig().save_pretrained(tmp_path / "encoder")
    objectives.check_init("clm", "d", models.Located(tmp_path / "decoder", tmp_path / "decoder"), bert)
    objectives.check_init("mlm", "e", models.Located(tmp_path / "encoder", tmp_path / "encoder"), bert)


# ---- the shipped models' own tokenizers, through the prepare stage -----------------------------------------------

ROWS = [
    "The film was unbelievably good, and its score was better still.",
    "A dull plot; the cast did what they could.",
    "Nobody expected the ending: everyone cheered.",
    "Tokenizers split rare words like photosynthesis into pieces.",
]


def prepare_with(uri: str, tmp_path, objective: str) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in ROWS))
    spec = PrepareSpec(
        sources=[str(path)], tokenizer={"kind": "model"}, block_size=16, split={"validation": 0, "test": 0}
    )
    digests = {"source0": sources.source_digests(spec)[str(path)], "tokenizer_from": tracking.digest(uri)}
    inputs = {"source0": str(path), "tokenizer_from": uri}
    with tracking.stage_run("prepare", spec, inputs, code="tasks.data.prepare", experiment="t", digests=digests) as ctx:
        ctx.output = prepare.run(spec, uri, ctx, objective)
    return ctx.output


def expected_blocks(dataset: str, tok, block_size: int = 16) -> list[list[int]]:
    """The train rows as the tokenizer encodes them alone, each ended by the separator, framed by its template."""
    rows = pq.read_table(prepared.root(dataset) / "text" / "train.parquet").column("text").to_pylist()
    assert sorted(rows) == sorted(ROWS)
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    stream = [i for row in rows for i in [*tok(row, add_special_tokens=False)["input_ids"], sep]]
    framed = tok("a")["input_ids"]  # one text with the template's special tokens around it
    before, after = ([i for i in ends if i in tok.all_special_ids] for ends in (framed[:1], framed[-1:]))
    n = block_size - len(before) - len(after)
    return [before + stream[i : i + n] + after for i in range(0, len(stream) - n + 1, n)]


def test_package_minilm_prepares_bert_blocks_with_its_wordpiece(home, tmp_path):
    configure("t")
    dataset = prepare_with("package:minilm", tmp_path, "mlm")
    tok = prepared.load_tokenizer(dataset)
    blocks = prepared.load_blocks(dataset, "train").tolist()
    assert blocks == expected_blocks(dataset, tok)
    assert [tok.decode(b) for b in blocks] == [
        "[CLS] the film was unbelievably good, and its score was [SEP]",
        "[CLS] better still. [SEP] a dull plot ; the cast did what they could [SEP]",
        "[CLS]. [SEP] nobody expected the ending : everyone cheered. [SEP] tokenizers [SEP]",
    ]
    card = prepared.card(dataset)["tokenizer"]
    assert card["separator"] == "[SEP]" and card["frame"] == [["[CLS]"], ["[SEP]"]] and card["vocab_size"] == 30522


def test_package_smollm2_prepares_unframed_blocks_with_documents_ended_by_its_eos(home, tmp_path):
    configure("t")
    dataset = prepare_with("package:smollm2-135m", tmp_path, "clm")
    tok = prepared.load_tokenizer(dataset)
    blocks = prepared.load_blocks(dataset, "train").tolist()
    assert blocks == expected_blocks(dataset, tok)
    assert [tok.decode(b) for b in blocks] == [
        "The film was unbelievably good, and its score was better still.<|im_end|>",
        "A dull plot; the cast did what they could.<|im_end|>Nobody expected the ending",
        ": everyone cheered.<|im_end|>Tokenizers split rare words like photosynthesis into pieces.",
    ]
    assert prepared.card(dataset)["tokenizer"]["frame"] == [[], []]
