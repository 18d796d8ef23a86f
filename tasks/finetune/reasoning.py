"""Math reasoning (GSM8K): SFT on worked solutions, scored by the accuracy of the extracted final answer, greedy and
optionally by a majority vote over sampled generations (self-consistency)."""

from tasks import answers
from tasks.finetune import sft
from tasks.predict import generate, sample

trainer = sft.trainer  # torchrun ranks train exactly as SFT does: only the scoring differs


def judge(model, tok, rows: list[dict], spec) -> tuple[dict[str, float], dict[str, list]]:
    """answer_accuracy and no_answer_rate of greedy generations (with self_consistency, voted_answer_accuracy and
    voted_no_answer_rate too); and the generations-table columns they add (suffix → values)."""
    prompts, solutions = [r["prompt"] for r in rows], [r["response"] for r in rows]
    greedy = generate(model, tok, prompts, spec.max_new_tokens, batch_size=answers.BATCH_SIZE)
    metrics, _, found = answers.score(greedy, solutions)
    columns = {"": greedy, "_answer": [answers.shown(a) for a in found]}
    vote = spec.self_consistency
    if vote:
        n = min(
            vote.rows or len(rows), len(rows)
        )  # sampling costs `samples` generations a problem: maybe fewer problems
        per_batch = max(1, answers.BATCH_SIZE // vote.samples)  # prompts per batch: each brings `samples` sequences
        drawn = sample(
            model, tok, prompts[:n], spec.max_new_tokens, vote.samples, vote.temperature, spec.train.seed, per_batch
        )
        voted = [answers.vote([answers.extract(g) for g in gens]) for gens in drawn]
        hits = [answers.same(v, answers.final(s)) for v, s in zip(voted, solutions)]
        metrics["voted_answer_accuracy"] = sum(hits) / n
        metrics["voted_no_answer_rate"] = sum(v is None for v in voted) / n
        # greedy on the same problems: the vote's gain over greedy decoding, paired
        greedy_hits = [answers.same(a, answers.final(s)) for a, s in zip(found[:n], solutions)]
        metrics["greedy_answer_accuracy_voted_rows"] = sum(greedy_hits) / n
        columns["_voted"] = [answers.shown(v) for v in voted] + [None] * (len(rows) - n)
    return metrics, columns


def run(spec, init: str, data: str, register_as: str, ctx) -> str:
    """Fine-tune on worked solutions; score extracted answers before and after; register the best checkpoint."""
    return sft.run(spec, init, data, register_as, ctx, judge=judge)
