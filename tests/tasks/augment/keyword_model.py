"""A tiny differentiable classifier whose decision is known: positive exactly when a positive word is present."""

from types import SimpleNamespace

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

WORDS = ["good", "great", "decent", "fine", "movie", "film", "plot", "the", "was", "not", "bad", "dull"]


def tokenizer(tmp_path, words=WORDS):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return BertTokenizerFast.from_pretrained(tmp_path)  # transformers 5 reads vocab.txt this way, not via vocab_file


class KeywordModel(torch.nn.Module):
    """Label 1 (positive) iff the text holds one of `positive`; its embedding is the whole evidence, so gradients point at it."""

    def __init__(self, tok, positive=("good", "great")):
        super().__init__()
        self.emb = torch.nn.Embedding(len(tok.get_vocab()), 1)
        torch.nn.init.zeros_(self.emb.weight)
        with torch.no_grad():
            for w in positive:
                self.emb.weight[tok.convert_tokens_to_ids(w)] = 5.0
        self.config = SimpleNamespace(num_labels=2)

    @property
    def device(self):
        return self.emb.weight.device

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        e = self.emb(input_ids) if inputs_embeds is None else inputs_embeds  # [batch, seq, 1]
        mask = torch.ones(e.shape[:2]) if attention_mask is None else attention_mask.float()
        score = (e[..., 0] * mask).sum(1)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(score), score - 2.5], dim=-1))


def save_keyword_classifier(folder, words: list[str], keyword: str, labels=("0", "1")) -> None:
    """A BertForSequenceClassification folder that predicts labels[1] exactly when `keyword` is in the text, labels[0] otherwise.

    Hand-set weights: the keyword's embedding is (1, 0), every other token's (0, 0); attention with zero queries and keys
    averages all tokens into [CLS], whose layer norms turn any positive share of the keyword into (1, -1); the pooler and
    classifier read that first coordinate. Any other word, a synonym that replaces the keyword included, is evidence of nothing.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(folder, words=words)
    config = BertConfig(
        vocab_size=len(tok.get_vocab()),
        hidden_size=2,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=1,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.fill_(1.0)
        model.bert.embeddings.word_embeddings.weight[tok.convert_tokens_to_ids(keyword), 0] = 1.0
        attention = model.bert.encoder.layer[0].attention
        attention.self.value.weight.copy_(torch.eye(2))
        attention.output.dense.weight.copy_(torch.eye(2))
        model.bert.pooler.dense.weight[0, 0] = 1.0  # pooled = (tanh(1), 0) with the keyword, (0, 0) without
        model.classifier.weight[1, 0] = 10.0
        model.classifier.bias[1] = -3.8  # logit of labels[1]: 10·tanh(1) − 3.8 ≈ +3.8 with the keyword, −3.8 without
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
