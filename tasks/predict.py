"""A classification model used as a teacher or attack target: loaded with its label set checked, and batched prediction."""

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
def probabilities(model, tokenizer, texts: list[str], *, batch_size: int = 64, max_length: int = 128, desc: str | None = None) -> np.ndarray:
    """Softmax class probabilities [len(texts), num_labels]; batches sorted by length so padding stays small."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc=desc, disable=desc is None or len(texts) < 2 * batch_size, unit="batch"):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc = {k: v.to(model.device) for k, v in enc.items()}
        out[idx] = torch.softmax(model(**enc).logits.float(), dim=-1).cpu().numpy()
    return out
