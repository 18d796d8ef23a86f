"""A first challenger must beat the task's trivial baseline on the gate's test rows: measured on real prepared datasets,
and decided with tiny models whose scores are known exactly."""

import json
import math
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import sacrebleu
import torch
from mlflow.tracking import MlflowClient
from transformers import GPT2Config, GPT2LMHeadModel

from tasks import tracking
from tasks.backend import configure
from tasks.data import prepared, sources
from tasks.data.labeled.spec import LabeledSpec
from tasks.data.spec import PrepareSpec
from tasks.gate import baseline, stage
from tasks.gate.promotion import decide_alone, holder
from tasks.gate.spec import GateSpec
from tests.tasks.augment.keyword_model import save_keyword_classifier
from tests.tasks.data.test_labeled import jsonl
from tests.tasks.data.test_labeled import stage as labeled_stage


def register(folder: Path, name: str) -> str:
    """A saved model folder registered as the next version of `name`, the way LoRA adapters are (plain files)."""
    client = MlflowClient()
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    with mlflow.start_run():
        mlflow.log_artifacts(str(folder), "model")
        version = client.create_model_version(name, mlflow.get_artifact_uri("model"), mlflow.active_run().info.run_id)
    return f"models:/{name}/{version.version}"


def gate(spec: GateSpec, model: str, dataset: str) -> mlflow.entities.Run:
    """The gate stage's body inside its stage run, as the gate flow runs it; returns the run."""
    inputs = {"model": model, "dataset": dataset}
    with tracking.stage_run("gate", spec, inputs, code="tasks.gate.stage", experiment="t", digests=inputs) as ctx:
        ctx.output = stage.run(spec, model, dataset, ctx)
    return MlflowClient().get_run(ctx.run_id)


def gate_tags(model: str) -> dict[str, str]:
    name, version = model.removeprefix("models:/").split("/")
    return MlflowClient().get_model_version(name, version).tags


@pytest.fixture
def store(home):
    configure("t")
    return home


# ---- language model: the add-one unigram of the training tokens ------------------------------------------------


@pytest.fixture
def corpus_dataset(store, corpus) -> str:
    spec = PrepareSpec(sources=[str(corpus)], tokenizer={"kind": "char"}, block_size=16, split={"test": 0.2})
    inputs = {"source0": str(corpus)}
    digests = {"source0": sources.source_digests(spec)[str(corpus)]}
    with tracking.stage_run("prepare", spec, inputs, code="tasks.data.prepare", experiment="t", digests=digests) as ctx:
        from tasks.data import prepare

        ctx.output = prepare.run(spec, None, ctx)
    return ctx.output


def constant_lm(folder: Path, dataset: str, q: np.ndarray) -> Path:
    """A GPT-2 that predicts the distribution `q` whatever the context: the final layer norm outputs a constant (weight 0,
    bias e0) and the untied head's first column is log q."""
    tok = prepared.load_tokenizer(dataset)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(q), n_layer=1, n_head=1, n_embd=4, n_positions=16, tie_word_embeddings=False)
    )
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = torch.from_numpy(np.log(q))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_language_model_must_beat_the_unigram_of_the_training_tokens_on_the_scored_blocks(
    corpus_dataset, tmp_path, capsys
):
    vocab = len(prepared.load_tokenizer(corpus_dataset))
    scored = prepared.load_blocks(corpus_dataset, "test")[:10]  # gate.max_rows=10: the first ten blocks
    targets = scored[:, 1:].ravel()  # the first token of a block is never predicted
    # The baseline written out from its definition: add-one counts of the training tokens over the vocabulary.
    counts = Counter(prepared.load_blocks(corpus_dataset, "train").ravel().tolist())
    p = np.array([counts[i] + 1 for i in range(vocab)], dtype=np.float64)
    unigram = math.exp(-np.mean(np.log(p[targets] / p.sum())))
    assert unigram < vocab - 1  # English characters are far from uniform
    spec = GateSpec(max_rows=10)

    # (a) Untrained: equal logits, perplexity = the vocabulary size, worse than the unigram: not promoted.
    uniform = register(constant_lm(tmp_path / "uniform", corpus_dataset, np.full(vocab, 1 / vocab)), "lm")
    run = gate(spec, uniform, corpus_dataset)
    tags = gate_tags(uniform)
    assert float(tags["gate.challenger_value"]) == pytest.approx(vocab, rel=1e-4)
    assert run.data.metrics["baseline_perplexity"] == pytest.approx(unigram, rel=1e-9)
    assert run.data.metrics["baseline_loss"] == pytest.approx(math.log(unigram), rel=1e-9)
    assert tags["gate.decision"] == "rejected" and tags["gate.baseline"] == "unigram"
    assert tags["gate.reason"] == (
        f"no champion; the challenger's perplexity {float(tags['gate.challenger_value']):.4g} is worse than the "
        f"unigram baseline's {unigram:.4g}"
    )
    assert f"gate: rejected — no champion; the challenger's perplexity {vocab:.4g}" in capsys.readouterr().out
    assert holder("lm", "champion") is None and holder("lm", "challenger") == uniform
    decision = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/gate/decision.json")).read_text()
    )
    assert decision["baseline"] == "unigram" and decision["baseline_value"] == pytest.approx(unigram, rel=1e-9)
    markdown = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/gate/decision.md")).read_text()
    assert (
        f"| baseline | unigram: add-one unigram of the training split's tokens, on the same test blocks | {unigram:.4g} |"
        in markdown
    )

    # (b) The unigram of the scored tokens themselves: by Gibbs' inequality no other unigram, the baseline included,
    # predicts them better. Promoted.
    seen = np.bincount(targets, minlength=vocab) + 1e-3  # no zero: log 0 in the head would give NaN logits
    oracle = register(constant_lm(tmp_path / "oracle", corpus_dataset, seen / seen.sum()), "lm")
    expected = math.exp(-np.mean(np.log((seen / seen.sum())[targets])))
    assert expected < unigram
    run = gate(spec, oracle, corpus_dataset)
    tags = gate_tags(oracle)
    assert float(tags["gate.challenger_value"]) == pytest.approx(expected, rel=1e-4)
    assert tags["gate.decision"] == "promoted" and tags["gate.reason"] == (
        f"no champion; the challenger's perplexity {float(tags['gate.challenger_value']):.4g} beats the unigram "
        f"baseline's {unigram:.4g}"
    )
    assert run.data.metrics["promoted"] == 1.0 and holder("lm", "champion") == oracle


# ---- classification: always the majority training label --------------------------------------------------------

WORDS = ["the", "plot", "film", "was", "dull", "bad", "great"]


@pytest.fixture
def reviews(store, tmp_path) -> str:
    """Three in four training rows are `0`; six of the eight test rows are `0`, and `great` marks exactly the `1` rows."""
    rows = [(f"the {'plot' if i % 2 else 'film'} was {'dull' if i % 3 else 'bad'} {i}", 0) for i in range(30)]
    rows += [(f"the plot was great {i}", 1) for i in range(30, 40)]
    test = [(f"the film was dull {i}", 0) for i in range(100, 106)] + [
        (f"the film was great {i}", 1) for i in (106, 107)
    ]
    tsv = lambda rows: "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows)  # noqa: E731
    (tmp_path / "train.tsv").write_text(tsv(rows))
    (tmp_path / "test.tsv").write_text(tsv(test))
    spec = LabeledSpec(
        train=[str(tmp_path / "train.tsv")],
        test=[str(tmp_path / "test.tsv")],
        text_column="sentence",
        split={"validation": 0.1},
    )
    return labeled_stage(spec)


def test_a_classifier_must_beat_always_predicting_the_majority_training_label(reviews, tmp_path):
    found = baseline.measure(reviews, None)
    # 6 of 8 right; macro-F1 is class 0's F1 (precision 6/8, recall 1: 6/7) averaged with class 1's 0
    assert found.name == "majority-class" and found.described == "always `0`, the most frequent training label"
    assert found.metrics == {"accuracy": 0.75, "macro_f1": pytest.approx(3 / 7)}

    save_keyword_classifier(tmp_path / "minority", WORDS, keyword="the")  # every text has `the`: always `1`
    minority = register(tmp_path / "minority", "clf")
    run = gate(GateSpec(), minority, reviews)
    tags = gate_tags(minority)
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"] == (
        "no champion; the challenger's accuracy 0.25 is worse than the majority-class baseline's 0.75"
    )
    assert run.data.metrics["baseline_accuracy"] == 0.75 and run.data.metrics["baseline_macro_f1"] == pytest.approx(
        3 / 7
    )
    assert holder("clf", "champion") is None

    save_keyword_classifier(tmp_path / "keyword", WORDS, keyword="great")  # right on every test row
    good = register(tmp_path / "keyword", "clf")
    gate(GateSpec(), good, reviews)
    tags = gate_tags(good)
    assert tags["gate.decision"] == "promoted" and tags["gate.reason"] == (
        "no champion; the challenger's accuracy 1 beats the majority-class baseline's 0.75"
    )
    assert holder("clf", "champion") == good

    # A challenger that only matches the majority class has learnt nothing: a tie is no gain.
    tie = decide_alone(GateSpec(), "accuracy", "models:/clf/3", 0.75, ("majority-class", 0.75), "no champion")
    assert not tie.promote and tie.reason.endswith("only equals the majority-class baseline's 0.75")


# ---- the generation tasks: copy the prompt, the first words, the most frequent answer ----------------------------


def test_sft_copies_the_prompt_without_its_template(store, tmp_path):
    pairs = [("ein Haus", "ein Haus"), ("der Hund", "the dog"), ("die Katze", "the cat"), ("ein Baum", "a tree")]
    train = jsonl(tmp_path / "train.jsonl", *({"prompt": f"Satz {i}", "response": f"sentence {i}"} for i in range(20)))
    test = jsonl(tmp_path / "test.jsonl", *({"prompt": p, "response": r} for p, r in pairs))
    spec = LabeledSpec(
        task="sft", train=[train], test=[test], prompt_template="Translate: {prompt}", split={"validation": 0.1}
    )
    dataset = labeled_stage(spec)
    found = baseline.measure(dataset, None)
    prompts, refs = [p for p, _ in pairs], [r for _, r in pairs]
    # exact match 1 of 4 only if the template's words were taken off the copied prompt
    assert found.name == "copy-the-prompt" and found.metrics["exact_match"] == 0.25
    assert found.metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(prompts, [refs]).score)
    worse = decide_alone(GateSpec(), "chrf", "models:/t/1", 1.0, (found.name, found.metrics["chrf"]), "no champion")
    assert not worse.promote and worse.reason == (
        f"no champion; the challenger's chrf 1 is worse than the copy-the-prompt baseline's {found.metrics['chrf']:.4g}"
    )


def test_math_says_the_most_frequent_training_answer(store, tmp_path):
    solution = lambda n: {"question": f"how many {n}?", "answer": f"so\n#### {n}"}  # noqa: E731
    train = jsonl(
        tmp_path / "train.jsonl", *(solution(n) | {"question": f"q{i}"} for i, n in enumerate([7] * 12 + [3] * 4))
    )
    test = jsonl(tmp_path / "test.jsonl", *(solution(n) | {"question": f"t{i}"} for i, n in enumerate([7, 8, 7, 3])))
    spec = LabeledSpec(
        task="math",
        train=[train],
        test=[test],
        prompt_column="question",
        response_column="answer",
        split={"validation": 0.1},
    )
    found = baseline.measure(labeled_stage(spec), None)
    assert found.name == "most-frequent-answer" and found.metrics == {"answer_accuracy": 0.5}
    assert found.described == "always `7`, the most frequent final answer of the training split"


def test_extractive_qa_takes_the_contexts_first_words_as_long_as_the_median_training_answer(store, tmp_path):
    def squad(path: Path, items: list[tuple[str, str]]) -> str:
        data = [
            {
                "title": f"a{i}",
                "paragraphs": [
                    {
                        "context": c,
                        "qas": [
                            {
                                "id": f"{path.stem}{i}",
                                "question": f"where {i}?",
                                "answers": [{"text": a, "answer_start": c.index(a)}],
                            }
                        ],
                    }
                ],
            }
            for i, (c, a) in enumerate(items)
        ]
        path.write_text(json.dumps({"data": data, "version": "1.1"}))
        return str(path)

    # training answers of 2, 2 and 1 words: the baseline answers with the first 2 words of each context
    train = squad(
        tmp_path / "train.json",
        [("Ada lives in New York.", "New York"), ("Bo went to Rio Branco.", "Rio Branco"), ("Cy is in Oslo.", "Oslo")],
    )
    valid = squad(tmp_path / "valid.json", [("Di is in Lima.", "Lima")])
    test = squad(tmp_path / "test.json", [("New York is where Ed lives.", "New York"), ("Flo lives in Oslo.", "Oslo")])
    dataset = labeled_stage(LabeledSpec(task="extractive-qa", train=[train], validation=[valid], test=[test]))
    found = baseline.measure(dataset, None)
    # "New York" right, "Flo lives" wrong; with one word, "New" would score F1 2/3 on the first
    assert found.name == "first-words" and found.metrics == {"exact_match": 0.5, "f1": 0.5}
    assert found.described == "the context's first 2 words (the median training answer's length)"
