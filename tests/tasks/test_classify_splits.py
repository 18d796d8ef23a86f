"""How the classification splits are encoded: validation shortest first (cheap padding), test in its stored order."""

from tasks.finetune.classify import encode_splits
from tasks.model import load_tokenizer, locate

ROWS = [
    {"text": "good good good good good", "label": "pos"},
    {"text": "bad", "label": "neg"},
    {"text": "fine fine fine", "label": "pos"},
]


def test_validation_is_sorted_by_length_with_its_labels_and_test_keeps_its_order():
    tok = load_tokenizer(locate("package:minilm").tokenizer)
    splits = encode_splits(tok, {"train": ROWS, "validation": ROWS, "test": ROWS}, ["neg", "pos"], max_length=16)
    # Each row is [CLS] words [SEP]: 7, 3 and 5 tokens.
    assert [len(ids) for ids in splits["validation"].encodings["input_ids"]] == [3, 5, 7]
    assert splits["validation"].labels == [0, 1, 1]
    assert [tok.decode(row["input_ids"], skip_special_tokens=True) for row in splits["validation"]] == [
        "bad",
        "fine fine fine",
        "good good good good good",
    ]
    assert [len(ids) for ids in splits["test"].encodings["input_ids"]] == [7, 3, 5]
    assert splits["test"].labels == [1, 0, 1]
    assert [len(ids) for ids in splits["train"].encodings["input_ids"]] == [7, 3, 5]
