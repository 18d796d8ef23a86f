"""A tiny differentiable classifier whose decision is known: positive exactly when a positive word is present."""

from types import SimpleNamespace

import torch
from transformers import BertTokenizerFast

WORDS = ["good", "great", "decent", "fine", "movie", "film", "plot", "the", "was", "not", "bad", "dull"]


def tokenizer(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
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
