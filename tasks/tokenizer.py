"""Train, load and apply tokenizers; pack token ids into fixed-size blocks for language-model training."""

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tasks.data.spec import TokenizerSpec
from tasks.errors import UserError

EOS = "<|endoftext|>"
UNK = "<unk>"
# The packer cuts blocks itself, so the tokenizer never truncates or warns about length.
MODEL_MAX_LENGTH = 2**62
TRAIN_BATCH = 1000
# Files any of which make a folder loadable by AutoTokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)


def _batches(texts: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(texts), size):
        yield texts[i : i + size]


def _byte_level_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        # All 256 byte symbols, so any input (including unseen scripts) encodes without unk.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        # The library's own progress bar costs nothing; only worth showing on real corpora.
        show_progress=sum(map(len, texts)) > 1_000_000,
    )
    tok.train_from_iterator(_batches(texts, TRAIN_BATCH), trainer=trainer, length=len(texts))
    return tok


def _char_level(texts: list[str]) -> Tokenizer:
    chars = sorted(set().union(*map(set, texts)))
    vocab = {EOS: 0, UNK: 1} | {c: i + 2 for i, c in enumerate(chars)}
    # A BPE without merges splits a text into its characters; unseen ones become <unk>.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens([EOS, UNK])
    # Fuse joins tokens as they are; the default decoder would put spaces between them.
    tok.decoder = decoders.Fuse()
    return tok


def train_tokenizer(texts: list[str], spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (`bpe`) or build a character vocabulary (`char`) from the texts."""
    if spec.kind == "bpe":
        tok, special = _byte_level_bpe(texts, spec.vocab_size), {"unk_token": EOS}
    elif spec.kind == "char":
        tok, special = _char_level(texts), {"unk_token": UNK}
    else:
        raise ValueError(f"tokenizer.kind {spec.kind!r} is not trained; load the model's tokenizer instead")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, model_max_length=MODEL_MAX_LENGTH, **special
    )


def load_tokenizer(path_or_dir: str | Path, gguf_file: str | None = None, fix: str = "") -> PreTrainedTokenizerFast:
    """Load a saved tokenizer (never running code from the folder); pad falls back to eos.

    A folder must hold tokenizer files and the tokenizer a vocabulary: from config.json alone transformers builds an
    empty tokenizer that encodes every text to nothing. `fix` adds another way out to the message (", or set ...").
    """
    path = Path(path_or_dir)
    if not gguf_file and path.is_dir() and not any((path / name).exists() for name in TOKENIZER_FILES):
        raise UserError(
            f"Model folder {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): save the tokenizer it was trained "
            f"with into it (tokenizer.save_pretrained){fix}."
        )
    try:
        tok = AutoTokenizer.from_pretrained(
            str(path_or_dir), trust_remote_code=False, **({"gguf_file": gguf_file} if gguf_file else {})
        )
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"Could not load a tokenizer from {path_or_dir} ({reason}): point to a folder written by save_pretrained{fix}."
        ) from None
    special = set(tok.all_special_ids)
    if len(tok) <= len(special):
        raise UserError(
            f"The tokenizer in {path_or_dir} has no vocabulary ({len(tok)} token{'s' * (len(tok) != 1)}, all special): "
            f"save the tokenizer the model was trained with into it (tokenizer.save_pretrained){fix}."
        )
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def check_coverage(tokenizer, texts: list[str], ids: list[list[int]], source: str) -> None:
    """Refuse a model's tokenizer that turns the training text into (almost) nothing, or mostly into its unknown token."""
    chars, tokens = sum(map(len, texts)), sum(map(len, ids))
    fix = "use a model whose tokenizer covers it, or set data.tokenizer.kind to bpe or char to train one on the corpus"
    # One token per 100 characters is far below any real tokenizer (BPE makes about one per 4).
    if tokens * 100 < chars:
        raise UserError(
            f"The tokenizer of {source} makes {tokens:,} tokens from {chars:,} characters of training text: it does not fit this text; {fix}."
        )
    unk = tokenizer.unk_token_id
    unknown = sum(t.count(unk) for t in ids) if unk is not None else 0
    if unknown * 2 > tokens:
        raise UserError(
            f"The tokenizer of {source} turns {unknown / tokens:.0%} of the training text into its unknown token "
            f"{tokenizer.unk_token!r}: it does not fit this text; {fix}."
        )


def _plain_backend(tokenizer: PreTrainedTokenizerFast) -> Tokenizer:
    """A copy of the Rust tokenizer that never pads or truncates and reads special-token strings as plain text."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    # Like nanoGPT's encode_ordinary: a literal "<|endoftext|>" in a document is text, not a document end.
    backend.encode_special_tokens = True
    return backend


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str], batch_size: int = 1000) -> list[list[int]]:
    """Token ids per text, without special tokens or truncation, encoded by the Rust backend in batches."""
    backend = _plain_backend(tokenizer)
    n_batches = -(-len(texts) // batch_size)
    ids: list[list[int]] = []
    # encode_batch_fast skips character offsets, which the packer never needs.
    for batch in tqdm(_batches(texts, batch_size), total=n_batches, desc="tokenize", disable=n_batches < 20):
        ids.extend(e.ids for e in backend.encode_batch_fast(batch, add_special_tokens=False))
    return ids


def separator(tokenizer: PreTrainedTokenizerFast) -> int | None:
    """The token that ends each document in the packed stream: eos, else sep (BERT has [SEP] and no eos), else None."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def frame(tokenizer: PreTrainedTokenizerFast) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer's template puts before and after one text: ([CLS], [SEP]) for BERT, ([<s>], [])
    for Llama 2, ([], []) for GPT-2, SmolLM2 and the tokenizers trained here."""
    encoding = _plain_backend(tokenizer).encode("a", add_special_tokens=True)
    special = encoding.special_tokens_mask
    if all(special):  # the text made no token of its own, so nothing tells the tokens before it from those after
        raise ValueError(f"the tokenizer encodes 'a' to no token, so its template cannot be read: {encoding.tokens}")
    before = next((i for i, s in enumerate(special) if not s), len(special))
    after = next((i for i, s in enumerate(reversed(special)) if not s), 0)
    return encoding.ids[:before], encoding.ids[len(special) - after :]


def pack(
    token_lists: list[list[int]], sep_id: int, block_size: int, prefix: list[int] = (), suffix: list[int] = ()
) -> np.ndarray:
    """Documents joined with sep_id after each, cut into [n_blocks, block_size] int32, each block framed by prefix and
    suffix around its block_size - len(prefix) - len(suffix) tokens of the stream; the short tail is dropped."""
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists)) + 1
    ends = np.cumsum(lengths)  # position after each document's separator
    stream = np.full(int(ends[-1]) if len(ends) else 0, sep_id, dtype=np.int32)
    is_token = np.ones(len(stream), dtype=bool)
    is_token[ends - 1] = False
    if is_token.any():
        # one C pass over every id, not an array per document
        count = int(is_token.sum())
        stream[is_token] = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int32, count=count)
    content = block_size - len(prefix) - len(suffix)
    n_blocks = len(stream) // content
    body = stream[: n_blocks * content].reshape(n_blocks, content)
    before, after = (np.tile(np.asarray(t, dtype=np.int32), (n_blocks, 1)) for t in (prefix, suffix))
    return np.concatenate([before, body, after], axis=1)


def word_starts(tokenizer: PreTrainedTokenizerFast) -> np.ndarray | None:
    """Per token id, whether the piece begins a word, read from how the tokenizer marks pieces; None when it marks none.

    WordPiece (BERT): every piece but the `##` continuations begins one. Byte-level BPE (GPT-2, RoBERTa, the `bpe`
    trained here) and SentencePiece (Metaspace): the pieces that start with the space marker `Ġ` or `▁` do, so
    punctuation stays with the word before it, as in fairseq's whole-word masking. A character vocabulary marks none.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] == "WordPiece":  # the mark is on the pieces that do not begin a word
        mark, marks_start = spec["model"].get("continuing_subword_prefix") or "##", False
    else:
        mark, marks_start = _word_marker(spec.get("pre_tokenizer")), True
        if mark is None:
            return None
    vocab = tokenizer.get_vocab()
    starts = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for piece, i in vocab.items():
        starts[i] = piece.startswith(mark) == marks_start
    return starts


def _word_marker(pre_tokenizer: dict | None) -> str | None:
    """The character a pre-tokenizer puts at the start of each word's first piece, if it puts one."""
    if pre_tokenizer is None:
        return None
    if pre_tokenizer["type"] == "Sequence":
        return next(filter(None, map(_word_marker, pre_tokenizer["pretokenizers"])), None)
    return {"ByteLevel": "\u0120", "Metaspace": pre_tokenizer.get("replacement", "\u2581")}.get(pre_tokenizer["type"])


def unigram_perplexity(train_blocks: np.ndarray, eval_blocks: np.ndarray, vocab_size: int) -> float:
    """Perplexity of an add-one unigram model of the train tokens on the eval tokens a causal LM predicts."""
    counts = np.bincount(train_blocks.ravel(), minlength=vocab_size).astype(np.float64) + 1
    if len(counts) > vocab_size:
        raise ValueError(f"train token ids reach {len(counts) - 1}, beyond vocab_size {vocab_size}")
    predicted = eval_blocks[:, 1:].ravel()  # the first token of a block has no context
    if predicted.size == 0:
        raise UserError("The evaluation split has no packed blocks: add more evaluation data or lower block_size.")
    log_p = np.log(counts[predicted]) - np.log(counts.sum())
    return float(np.exp(-log_p.mean()))
