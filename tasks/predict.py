"""What models predict, for any stage that asks: a classifier loaded with its label set checked and its batched class
probabilities (a teacher, an attack's target, a model being scored), and greedy or sampled generation from prompts."""

from collections.abc import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification

from tasks import model as models
from tasks.errors import UserError


def load(uri: str, labels: list[str], setting: str):
    """The classifier at `uri` in eval mode; its labels must be the data's, in the same order (ids must mean the same)."""
    where = models.locate(uri)
    config = models.saved_config(where)
    if not any("ForSequenceClassification" in a for a in config.architectures or []):
        raise UserError(
            f"{setting} {uri} is not a classifier (its architecture is {', '.join(config.architectures or ['unknown'])}): "
            "give a model fine-tuned for classification on these labels, or leave it empty to use the pipeline's fine-tuned model"
        )
    theirs = [config.id2label[i] for i in sorted(config.id2label)]
    if theirs != labels:
        raise UserError(
            f"{setting} {uri} predicts the labels {theirs} but the data's labels are {labels}: "
            "give a teacher fine-tuned on this label set, or leave it empty to use the pipeline's fine-tuned model"
        )
    model, tok = models.load(uri, where=where, auto=AutoModelForSequenceClassification)
    return model.eval(), tok


@torch.no_grad()
def probabilities(
    model,
    tokenizer,
    texts: list[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    desc: str | None = None,
    log: bool = False,
) -> np.ndarray:
    """Softmax class probabilities [len(texts), num_labels] (`log`: their logarithms, exact where a probability would
    round to 0); batches sorted by length so padding stays small."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc=desc, disable=desc is None or len(texts) < 2 * batch_size, unit="batch"):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        enc = {k: v.to(model.device) for k, v in enc.items()}
        logits = model(**enc).logits.float()
        out[idx] = (torch.log_softmax(logits, dim=-1) if log else torch.softmax(logits, dim=-1)).cpu().numpy()
    return out


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt up to where the response starts."""
    if tokenizer.chat_template:
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(out["input_ids"] if isinstance(out, Mapping) else out)
    return tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy responses, batched with left padding so every prompt ends where generation starts."""
    return _generate(model, tokenizer, prompts, max_new_tokens, batch_size, do_sample=False)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    k: int,
    temperature: float,
    seed: int,
    batch_size: int = 8,
) -> list[list[str]]:
    """k responses per prompt by temperature sampling (no top-k or top-p cut), the same for the same seed and batch size."""
    cuda = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the caller's random stream goes on as if nothing was drawn
        torch.manual_seed(seed)
        flat = _generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens,
            batch_size,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            num_return_sequences=k,
        )
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]  # generate returns each prompt's k in a row


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, **how) -> list[str]:
    model.eval()
    limit = models.max_positions(model.config)  # prompt + response must fit the model's positions
    out = []
    for start in range(0, len(prompts), batch_size):
        encoded = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        if limit:  # keep each prompt's end (where the question is) and room for at least one new token
            encoded = [e[-(limit - 1) :] for e in encoded]
        longest = max(map(len, encoded))
        budget = min(max_new_tokens, limit - longest) if limit else max_new_tokens
        ids = torch.tensor([[tokenizer.pad_token_id] * (longest - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (longest - len(e)) + [1] * len(e) for e in encoded])
        new = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=budget,
            pad_token_id=tokenizer.pad_token_id,
            **how,
        )[:, longest:]
        out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out
