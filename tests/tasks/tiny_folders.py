"""Tiny model folders with tokenizers of their own, as continued pretraining finds them: a BERT encoder with a WordPiece
tokenizer ([CLS] … [SEP], no eos) and a Llama decoder with a byte-level BPE (<s> before each text, </s> as eos)."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForMaskedLM, BertModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece(texts: list[str], vocab_size: int = 400, drop: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A BERT tokenizer (uncased WordPiece, ## continuation pieces, [CLS] … [SEP]) trained on the texts; `drop` leaves
    special tokens out ([MASK]; [CLS] and [SEP] together, which drops the template too)."""
    specials = [t for t in BERT_SPECIALS if t not in drop]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    if "[SEP]" in specials:
        tok.post_processor = processors.BertProcessing(
            ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
        )
    names = dict(zip(BERT_SPECIALS, ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **{names[t]: t for t in specials})


def llama_bpe(texts: list[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A Llama-style tokenizer: byte-level BPE whose template puts <s> before each text; </s> is eos, no sep."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def bert_folder(folder: Path, texts: list[str], tok=None, encoder: bool = False) -> Path:
    """A randomly initialised one-layer BertForMaskedLM (64 positions) with a WordPiece tokenizer, saved as a model folder.

    `encoder`: a BertModel instead, with a pooler and no MLM head, as package:minilm ships."""
    tok = tok or wordpiece(texts)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    (BertModel(config) if encoder else BertForMaskedLM(config)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def llama_folder(folder: Path, texts: list[str]) -> Path:
    """A randomly initialised one-layer LlamaForCausalLM (64 positions) with its byte-level BPE, saved as a model folder."""
    tok = llama_bpe(texts)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
