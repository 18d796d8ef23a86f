"""The evaluate stage's body: a language model's loss and perplexity on a prepared corpus's splits, next to an add-one
unigram baseline."""

import math

import mlflow
import numpy as np
import torch
from tqdm.auto import tqdm

from tasks import model as models
from tasks import registry
from tasks.data import prepared
from tasks.evaluate.spec import EvaluateSpec
from tasks.tokenizer import unigram_perplexity
from tasks.tracking import StageRun, log_metrics, resolve_version


def run(spec: EvaluateSpec, model_uri: str, dataset: str, ctx: StageRun) -> str:
    """Score the model on the dataset's splits; metrics go to the run and onto the model version's tags."""
    model, _ = models.load(model_uri, tokenizer=False)
    vocab = len(prepared.load_tokenizer(dataset))
    train = prepared.load_blocks(dataset, "train")
    metrics = {}
    for split in spec.splits:
        blocks = prepared.load_blocks(dataset, split)[: spec.max_blocks]
        loss = mean_loss(model, blocks, spec.batch_size, desc=split)
        metrics[f"{split}_loss"] = loss
        metrics[f"{split}_perplexity"] = math.exp(loss)
        metrics[f"{split}_unigram_perplexity"] = unigram_perplexity(train, blocks, vocab)
    log_metrics(ctx.run_id, metrics)
    mlflow.log_dict({"model": model_uri, "dataset": dataset, "metrics": metrics}, "evaluation/report.json")
    if model_uri.startswith("models:/"):
        version = resolve_version(model_uri)
        registry.set_tags(
            f"models:/{version.name}/{version.version}", {f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}
        )
    for split in spec.splits:
        print(
            f"evaluate: {split} perplexity {metrics[f'{split}_perplexity']:.2f} (unigram baseline {metrics[f'{split}_unigram_perplexity']:.2f})"
        )
    return f"runs:/{ctx.run_id}/evaluation"


def mean_loss(model, blocks: np.ndarray, batch_size: int, desc: str = "eval") -> float:
    """Mean next-token cross-entropy over every predicted position of the blocks [n, block_size]."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in tqdm(range(0, len(blocks), batch_size), desc=desc, disable=len(blocks) <= 4 * batch_size):
            batch = torch.from_numpy(blocks[start : start + batch_size].astype(np.int64)).to(device)
            n = batch.shape[0] * (batch.shape[1] - 1)  # the first token of a block has no context
            total += model(input_ids=batch, labels=batch).loss.item() * n
            count += n
    return total / count


def next_token_distribution(model, input_ids: torch.Tensor) -> torch.Tensor:
    """p(next token | input_ids) for each sequence: softmax of the last position's logits, [batch, vocab]."""
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(input_ids=input_ids).logits[:, -1, :].float(), dim=-1)
