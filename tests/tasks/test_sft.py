"""SFT trains on the response only: every prompt token is masked out of the loss, with and without a chat template."""

import pytest
import torch

from tasks.data.spec import TokenizerSpec
from tasks.finetune.sft import IGNORE, collate, encode
from tasks.tokenizer import train_tokenizer

# One character per token, so the expected ids can be spelt out by hand.
ALPHABET = "abcdefghijklmnopqrstuvwxyz <>:|\n"
TEMPLATE = "{% for m in messages %}<|{{ m['content'] }}|>{% endfor %}{% if add_generation_prompt %}:{% endif %}"


@pytest.fixture(params=["plain", "chat template"])
def tok(request):
    tok = train_tokenizer([ALPHABET], TokenizerSpec(kind="char"))
    if request.param == "chat template":
        tok.chat_template = TEMPLATE
    return tok


def chars(tok, text: str) -> list[int]:
    return tok.convert_tokens_to_ids(list(text))


def test_labels_are_ignore_on_the_prompt_and_the_ids_on_the_response(tok):
    prompt = chars(tok, "<|say hi|>:" if tok.chat_template else "say hi\n")
    response = chars(tok, "hi there") + [tok.eos_token_id]
    out = encode(tok, {"prompt": "say hi", "response": "hi there"}, max_length=64)
    assert out["input_ids"] == prompt + response
    assert out["labels"] == [IGNORE] * len(prompt) + response


def test_truncation_keeps_the_mask_and_a_prompt_without_room_is_dropped(tok):
    prompt_len = len("<|say hi|>:" if tok.chat_template else "say hi\n")
    out = encode(tok, {"prompt": "say hi", "response": "hi there"}, max_length=prompt_len + 3)
    assert out["input_ids"][prompt_len:] == chars(tok, "hi ")
    assert out["labels"] == [IGNORE] * prompt_len + chars(tok, "hi ")
    assert encode(tok, {"prompt": "say hi", "response": "hi there"}, max_length=prompt_len) is None


def test_collate_pads_labels_with_ignore_and_masks_the_padding(tok):
    rows = [encode(tok, {"prompt": p, "response": r}, max_length=64) for p, r in [("a", "bc"), ("say hi", "hi there")]]
    batch = collate(tok.pad_token_id)(rows)
    short, long = (len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, long)
    assert batch["labels"][0].tolist() == rows[0]["labels"] + [IGNORE] * (long - short)
    assert batch["input_ids"][0].tolist() == rows[0]["input_ids"] + [tok.pad_token_id] * (long - short)
    assert batch["attention_mask"].tolist() == [[1] * short + [0] * (long - short), [1] * long]
    assert batch["labels"][1].tolist() == rows[1]["labels"]
    # The loss sees exactly the response tokens (and their end-of-sequence), nothing of the prompt or the padding.
    assert int((batch["labels"] != IGNORE).sum()) == len("bc") + 1 + len("hi there") + 1
    assert torch.equal(batch["labels"][batch["labels"] != IGNORE], batch["input_ids"][batch["labels"] != IGNORE])
