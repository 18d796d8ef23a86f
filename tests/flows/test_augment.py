"""The augment stage inside llm_pipeline: EDA, pseudo-label self-training rounds, adversarial examples and training."""

import json
import random
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from flows.pipeline import llm_pipeline
from flows.spec import load
from tasks import model as models
from tasks import synonyms
from tasks.augment.prompt import PromptTeacher, calibrator
from tasks.errors import UserError
from tasks.predict import probabilities
from tests.conftest import REPO, toy_labeled
from tests.tasks.augment.keyword_model import save_keyword_classifier
from tests.tasks.tiny_folders import llama_folder

pytestmark = pytest.mark.usefixtures("prefect_api")

COMPLAINTS, NOUNS = ["awful", "dull", "bad", "poor"], ["film", "plot", "cast", "score"]
# minilm's pooler and head train, its 6 blocks stay frozen: the package ships no pooler weights, and a random frozen pooler
# squeezes the features so much that the head alone learns slowly and erratically; with the pooler, 4 steps suffice.
POOLER_AND_HEAD = ("finetune.method=full", "finetune.freeze_layers=6")


@pytest.fixture
def pool(tmp_path) -> Path:
    rng = random.Random(1)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "dull", "bad", "poor"]
    lines = ["sentence"] + [
        f"{rng.choice(good + bad)} the {rng.choice(['film', 'plot', 'cast'])} felt {rng.choice(good + bad)} {i}"
        for i in range(60)
    ]
    path = tmp_path / "pool.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def overrides(data: Path, *extra: str) -> list[str]:
    """sst2-augment on the toy set, head-only on package:minilm so that each fine-tune takes seconds."""
    return [
        *toy_labeled(data),
        "finetune.method=head",
        "finetune.max_length=16",
        "finetune.patience=null",
        "finetune.train={max_steps: 4, batch_size: 16, lr: 0.01, warmup_steps: 0, checkpoint_every: 2, log_every: 2}",
        "augment.eda.copies=2",
        "augment.eda.protected=[the]",
        *extra,
    ]


def dataset_rows(uri: str, split: str) -> list[dict]:
    return pq.read_table(Path(mlflow.artifacts.download_artifacts(uri)) / f"{split}.parquet").to_pylist()


def stage_runs(pipeline_run: str) -> dict[str, mlflow.entities.Run]:
    found = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{pipeline_run}'", output_format="list"
    )
    return {r.info.run_name.rpartition("/")[2]: r for r in found}  # runs are named <pipeline>/<stage>


def write_rows(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_eda_then_self_training_rounds_that_keep_the_better_model(home, tmp_path, monkeypatch):
    # Gold rows say "zorp" (1) or "blick" (0); validation rows say "quax" (1) or "vremp" (0), words the teacher never
    # sees. Each pool row pairs a known word with a new one of the same polarity, so the teacher labels it right and its
    # student learns the new words: the student beats the teacher by min_gain and becomes the next teacher; the next
    # student learns nothing more, gains less than min_gain, and the loop keeps the first student.
    # EDA seeds each row's edits by its origin (file:line); relative paths keep them, and so the models, the same every run.
    monkeypatch.chdir(tmp_path)
    rng = random.Random(4)
    polarity = {"1": ("zorp", "quax"), "0": ("blick", "vremp")}
    gold = write_rows(
        Path("gold.tsv"),
        ["sentence\tlabel"]
        + [
            f"{polarity[str(i % 2)][0]} the {rng.choice(NOUNS)} was {polarity[str(i % 2)][0]} {i}\t{i % 2}"
            for i in range(80)
        ],
    )
    validation = write_rows(
        Path("validation.tsv"),
        ["sentence\tlabel"]
        + [
            f"{polarity[str(i % 2)][1]} the {rng.choice(NOUNS)} was {polarity[str(i % 2)][1]} {i}\t{i % 2}"
            for i in range(100, 152)
        ],
    )
    pool = write_rows(
        Path("pool.tsv"),
        ["sentence"]
        + [
            f"{polarity[str(i % 2)][0]} the {rng.choice(NOUNS)} was {polarity[str(i % 2)][1]} {i}"
            for i in range(200, 300)
        ],
    )
    spec = load(
        REPO / "configs/sst2-augment.yaml",
        overrides(
            gold,
            f"labeled.validation=[{validation}]",
            f"augment.pseudo.pool=[{pool}]",
            "augment.pseudo.threshold=0.0",
            "augment.pseudo.per_class=20",
            "augment.rounds=3",
            "augment.min_gain=0.2",
            *POOLER_AND_HEAD,
            "finetune.train={max_steps: 4, batch_size: 16, lr: 0.003, warmup_steps: 0, checkpoint_every: 4, log_every: 2}",
        ),
    )
    result = llm_pipeline(spec)

    runs = stage_runs(result["pipeline_run"])
    assert {f"{stage}-round{r}" for stage in ("augment", "finetune") for r in (0, 1, 2)} <= set(
        runs
    ) and "augment-round3" not in runs
    assert runs["augment-round1"].data.tags["multistep.hardware"] == "gpu"  # a teacher runs in it
    accuracy = {
        r: float(MlflowClient().get_model_version("mini", str(r + 1)).tags["metric.validation_accuracy"])
        for r in (0, 1, 2)
    }
    assert accuracy[1] - accuracy[0] > 0.2 and accuracy[2] - accuracy[1] < 0.2  # 0.46 → 0.88 → 0.87
    # round 1's student beat its teacher by min_gain; round 2's did not beat it
    assert result["model"] == "models:/mini/2"
    # the kept student teaches round 2
    assert runs["augment-round2"].data.tags["multistep.input.teacher"] == "models:/mini/2"
    for r in (1, 2):
        student = MlflowClient().get_model_version("mini", str(r + 1))
        assert student.run_id == runs[f"finetune-round{r}"].info.run_id and runs[f"finetune-round{r}"].data.tags[
            "multistep.round"
        ] == str(r)

    teacher = "models:/mini/1"
    labeled = {s: dataset_rows(result["labeled"], s) for s in ("train", "validation", "test")}
    round1 = runs["augment-round1"].data.tags["multistep.output"]
    rows = {s: dataset_rows(round1, s) for s in ("train", "validation", "test")}
    # Validation and test are the labeled data's, untouched.
    for split in ("validation", "test"):
        assert [(r["text"], r["label"]) for r in rows[split]] == [(r["text"], r["label"]) for r in labeled[split]]
    by_op = {}
    for r in rows["train"]:
        by_op.setdefault(r["operation"].split(".")[0], []).append(r)
    assert len(by_op["original"]) == len(labeled["train"]) and len(by_op["eda"]) == 2 * len(labeled["train"])
    source_label = {r["origin"]: r["label"] for r in labeled["train"]}
    assert all(r["label"] == source_label[r["source_row"]] for r in by_op["eda"])  # EDA keeps each row's label
    assert all(
        r["text"].split().count("the") == labeled_text.split().count("the")
        for r in by_op["eda"]
        for labeled_text in [next(x["text"] for x in labeled["train"] if x["origin"] == r["source_row"])]
    )
    # The teacher labels every pool row by its known word; balance keeps the 20 most confident of each label.
    pseudo = by_op["pseudo"]
    assert len(pseudo) == 40 and all(r["teacher"] == teacher for r in pseudo)
    assert (
        all(polarity[r["label"]][0] in r["text"].split() for r in pseudo)
        and sorted(r["label"] for r in pseudo) == ["0"] * 20 + ["1"] * 20
    )
    model, tok = models.load(teacher, auto=AutoModelForSequenceClassification)
    probs = probabilities(model.eval(), tok, [r["text"] for r in pseudo])
    # the teacher's own probability
    assert [r["confidence"] for r in pseudo] == pytest.approx(probs.max(axis=1).tolist(), abs=1e-5)
    assert {r["text"] for r in pseudo}.isdisjoint(r["text"] for split in labeled.values() for r in split)
    card = json.loads(Path(mlflow.artifacts.download_artifacts(round1.rstrip("/") + "/card.json")).read_text())
    assert card["augment"]["operations"]["pseudo"]["teacher"] == teacher and card["splits"]["train"]["rows"] == len(
        rows["train"]
    )


@pytest.fixture
def keyword_reviews(tmp_path) -> Path:
    """Label 1 rows hold the word "great" once, label 0 rows one complaint: a "great" detector gets every row right."""
    rng = random.Random(2)
    return write_rows(
        tmp_path / "keyword.tsv",
        ["sentence\tlabel"]
        + [
            f"{'great' if i % 2 else rng.choice(COMPLAINTS)} the {rng.choice(NOUNS)} was {i}\t{i % 2}"
            for i in range(120)
        ],
    )


def test_adversarial_examples_from_a_teacher_and_adversarial_training(home, keyword_reviews, tmp_path):
    # The teacher says 1 exactly when "great" is in the text: it gets every row right, and swapping "great" for any
    # synonym (none of which it knows) flips every label-1 row, while no synonym of a complaint can flip a label-0 row.
    teacher = tmp_path / "great-detector"
    save_keyword_classifier(teacher, [*COMPLAINTS, *NOUNS, "great", "the", "was"], keyword="great")
    spec = load(
        "configs/sst2-augment.yaml",
        overrides(
            keyword_reviews,
            "augment.eda=null",
            "augment.pseudo=null",
            f"augment.teacher={teacher}",
            "augment.adversarial={rows: null, synonyms: wordnet}",
            "finetune.adversarial.method=pgd",
            "finetune.adversarial.steps=2",
            "finetune.attack.rows=20",
        ),
    )
    result = llm_pipeline(spec)
    runs = stage_runs(result["pipeline_run"])
    train = dataset_rows(result["labeled"], "train")
    positive = {r["origin"]: r["text"] for r in train if r["label"] == "1"}
    assert len(train) == 60 and 0 < len(positive) < 60
    augment = runs["augment-round1"].data.metrics
    assert augment["attack_attacked_rows"] == 60 and augment["attack_clean_accuracy"] == 1.0
    assert augment["attack_attack_success_rate"] == pytest.approx(len(positive) / 60)
    assert (
        augment["attack_robust_accuracy"] == pytest.approx(1 - len(positive) / 60)
        and augment["attack_mean_edits"] == 1.0
    )
    rows = dataset_rows(runs["augment-round1"].data.tags["multistep.output"], "train")
    adversarial = {r["source_row"]: r for r in rows if r["operation"] == "adversarial"}
    assert augment["adversarial_rows"] == len(adversarial) and set(adversarial) == set(positive)
    substitute = synonyms.wordnet()("great")[0]  # every substitute scores alike; the attack keeps WordNet's first
    for origin, row in adversarial.items():
        assert (
            row["text"] == positive[origin].replace("great", substitute)
            and row["label"] == "1"
            and row["teacher"] == str(teacher)
        )
        assert json.loads(row["params"])["edits"] == [[0, "great", substitute]]

    # The student trained adversarially (PGD) and was attacked on 20 test rows; the numbers must agree with each other.
    tags = MlflowClient().get_model_version("mini", result["model"].rsplit("/", 1)[1]).tags
    robust, clean, success = (
        float(tags[f"metric.test_{k}"]) for k in ("robust_accuracy", "clean_accuracy", "attack_success_rate")
    )
    assert float(tags["metric.test_attacked_rows"]) == 20 and robust == pytest.approx(clean * (1 - success))
    client, run_id = MlflowClient(), runs["finetune-round1"].info.run_id
    loss, clean_loss, adv_loss = (client.get_metric_history(run_id, k) for k in ("loss", "clean_loss", "adv_loss"))
    assert [m.step for m in adv_loss] == [m.step for m in clean_loss] == [m.step for m in loss] == [2, 4]
    for total, c, a in zip(loss, clean_loss, adv_loss):
        # weight 1: the loss is the clean plus the adversarial
        assert total.value == pytest.approx(c.value + a.value, abs=1e-3)
        assert a.value > c.value  # PGD moves the embeddings up the loss


def test_a_teacher_with_other_labels_stops_the_run_before_anything_is_registered(home, sentiment, tmp_path):
    teacher = tmp_path / "teacher"
    _, tok = models.load("package:minilm")
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label={0: "x", 1: "y"},
        label2id={"x": 0, "y": 1},
    )
    BertForSequenceClassification(config).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    spec = load(
        "configs/sst2-augment.yaml",
        overrides(
            sentiment, "augment.eda=null", "augment.pseudo=null", f"augment.teacher={teacher}", "augment.adversarial={}"
        ),
    )
    with pytest.raises(
        UserError, match=r"augment\.teacher .* predicts the labels \['x', 'y'\] but the data's labels are \['0', '1'\]"
    ):
        llm_pipeline(spec)
    assert MlflowClient().search_registered_models() == []


def test_soft_labels_from_two_teachers_train_a_distilled_student(home, keyword_reviews, pool, tmp_path):
    # Both teachers say 1 exactly when "great" is in the text, so their mean is either one's probabilities.
    teachers = [tmp_path / "great-detector", tmp_path / "great-detector-2"]
    for folder in teachers:
        save_keyword_classifier(folder, [*COMPLAINTS, *NOUNS, "great", "the", "was"], keyword="great")
    spec = load(
        "configs/sst2-augment.yaml",
        overrides(
            keyword_reviews,
            "augment.eda=null",
            f"augment.teacher={teachers[0]}",
            f"augment.teachers=[{teachers[1]}]",
            f"augment.pseudo.pool=[{pool}]",
            "augment.pseudo.threshold=0.0",
            "augment.pseudo.balance=false",
            "augment.pseudo.per_class=null",
            "augment.pseudo.max_ratio=0.5",
            "augment.pseudo.distill={temperature: 3, alpha: 0.7}",
            "finetune.adversarial.method=fgm",
        ),
    )
    result = llm_pipeline(spec)
    assert result["model"] == "models:/mini/1"  # the given teacher taught one student, registered
    runs = stage_runs(result["pipeline_run"])
    assert runs["augment-round1"].data.tags["multistep.input.teachers0"] == str(teachers[1])
    out = runs["augment-round1"].data.tags["multistep.output"]
    train = dataset_rows(out, "train")
    gold = [r for r in train if r["operation"] == "original"]
    pseudo = [r for r in train if r["operation"] == "pseudo"]
    assert len(gold) == 60 and len(pseudo) == 30  # max_ratio 0.5 of the 60 gold rows, from 60 pool rows
    assert all(r["teacher_logits"] is None for r in gold)
    assert all(r["teacher"] == f"{teachers[0]} + {teachers[1]}" for r in pseudo)
    model, tok = models.load(str(teachers[0]), auto=AutoModelForSequenceClassification)
    log_probs = probabilities(model.eval(), tok, [r["text"] for r in pseudo], log=True)
    for row, expected in zip(pseudo, log_probs.tolist()):
        assert row["teacher_logits"] == pytest.approx(expected, abs=1e-5)
        assert row["label"] == ("1" if "great" in row["text"].split() else "0")
    card = json.loads(Path(mlflow.artifacts.download_artifacts(out.rstrip("/") + "/card.json")).read_text())
    assert card["augment"]["distill"] == {"temperature": 3.0, "alpha": 0.7}
    finetune = runs["finetune-round1"]
    assert finetune.data.params["distill.temperature"] == "3.0" and finetune.data.params["distill.alpha"] == "0.7"
    assert "clean_loss" in finetune.data.metrics and "adv_loss" in finetune.data.metrics  # FGM wrapped the KD loss


def prompt_teacher_spec(keyword_reviews: Path, pool: Path, tmp_path: Path, teacher: str, *extra: str):
    """The sst2-augment preset on the keyword reviews, without EDA, with a tiny random Llama as prompt teacher (`teacher`:
    its YAML fields besides model and prompt) and every pool row it labels kept; returns the spec and the Llama's folder."""
    texts = [line.split("\t")[0] for line in keyword_reviews.read_text().splitlines()[1:]]
    llama = llama_folder(tmp_path / "llama", texts + ["It is great", "It is awful"] * 8)
    spec = load(
        "configs/sst2-augment.yaml",
        overrides(
            keyword_reviews,
            "augment.eda=null",
            f"augment.pseudo.pool=[{pool}]",
            "augment.pseudo.threshold=0.0",
            "augment.pseudo.balance=false",  # a random model may favour one word: balance would keep no row
            "augment.pseudo.per_class=null",
            "augment.pseudo.max_ratio=null",
            *extra,
            f"augment.prompt_teacher={{model: {llama}, prompt: 'Review: {{text}}', {teacher}}}",
        ),
    )
    return spec, llama


def test_a_prompt_teacher_alone_labels_the_pool_calibrated_on_the_gold_rows(home, keyword_reviews, pool, tmp_path):
    # A tiny random Llama answers the prompt; what it says is arbitrary, so the test recomputes its calibrated
    # probabilities from the gold rows of the run and checks that the pool was labeled by exactly those, and by it alone.
    given = tmp_path / "great-detector"  # a given fine-tuned teacher, so no round 0 trains; alone, it labels nothing
    save_keyword_classifier(given, [*COMPLAINTS, *NOUNS, "great", "the", "was"], keyword="great")
    spec, llama = prompt_teacher_spec(
        keyword_reviews, pool, tmp_path, "answer: It is, label_words: {0: awful, 1: great}", f"augment.teacher={given}"
    )
    result = llm_pipeline(spec)
    runs = stage_runs(result["pipeline_run"])
    augment = runs["augment-round1"]
    assert augment.data.tags["multistep.input.prompt_teacher"] == str(llama)
    gold = dataset_rows(result["labeled"], "train")
    validation = dataset_rows(result["labeled"], "validation")
    pseudo = [r for r in dataset_rows(augment.data.tags["multistep.output"], "train") if r["operation"] == "pseudo"]
    assert len(pseudo) == 60 and {r["teacher"] for r in pseudo} == {f"prompt:{llama}"}
    teacher = PromptTeacher(spec.augment.prompt_teacher, ["0", "1"])
    gold_scores = teacher.scores([r["text"] for r in gold], 128)
    gold_labels = [int(r["label"]) for r in gold]
    fitted = calibrator(gold_scores, gold_labels, True)
    expected = fitted(teacher.scores([r["text"] for r in pseudo], 128))
    for row, log_probs in zip(pseudo, expected):
        assert row["teacher_logits"] == pytest.approx(log_probs.tolist(), abs=1e-4)
        assert row["label"] == str(int(log_probs.argmax()))
    val = fitted(teacher.scores([r["text"] for r in validation], 128))
    accuracy = (val.argmax(1) == [int(r["label"]) for r in validation]).mean()
    assert augment.data.metrics["prompt_teacher_val_accuracy"] == pytest.approx(accuracy)


def test_a_prompt_teacher_without_its_guard_labels_the_pool_before_anything_trains(
    home, keyword_reviews, pool, tmp_path
):
    spec, llama = prompt_teacher_spec(
        keyword_reviews, pool, tmp_path, "answer: It is, label_words: {0: awful, 1: great}, guard: false"
    )
    result = llm_pipeline(spec)
    runs = stage_runs(result["pipeline_run"])
    # One fine-tune, no plain round before it: round 0's rows already hold the prompt teacher's labels.
    assert {name for name in runs if name.startswith(("augment", "finetune"))} == {"augment-round0", "finetune-round0"}
    augment = runs["augment-round0"]
    assert "multistep.input.teacher" not in augment.data.tags
    assert augment.data.tags["multistep.input.prompt_teacher"] == str(llama)
    out = augment.data.tags["multistep.output"]
    pseudo = [r for r in dataset_rows(out, "train") if r["operation"] == "pseudo"]
    assert pseudo and {r["teacher"] for r in pseudo} == {f"prompt:{llama}"}
    assert "prompt_teacher_val_accuracy" in augment.data.metrics
    finetune = runs["finetune-round0"]
    assert finetune.data.tags["multistep.input.dataset"] == out
    assert result["model"] == "models:/mini/1" == result["finetuned"]
    assert MlflowClient().get_model_version("mini", "1").run_id == finetune.info.run_id


def test_a_prompt_teacher_with_words_for_other_labels_stops_the_run_before_round_0_trains(
    home, keyword_reviews, pool, tmp_path
):
    spec, _ = prompt_teacher_spec(keyword_reviews, pool, tmp_path, "label_words: {0: awful, 1: great, 2: fine}")
    with pytest.raises(UserError, match=r"augment\.prompt_teacher\.label_words names \['0', '1', '2'\] .* and drop 2"):
        llm_pipeline(spec)
    assert MlflowClient().search_registered_models() == []  # round 0 never trained


def test_an_extra_teacher_with_other_labels_stops_the_run(home, keyword_reviews, pool, tmp_path):
    good = tmp_path / "great-detector"
    save_keyword_classifier(good, [*COMPLAINTS, *NOUNS, "great", "the", "was"], keyword="great")
    other = tmp_path / "other-labels"
    save_keyword_classifier(other, [*COMPLAINTS, *NOUNS, "great", "the", "was"], keyword="great", labels=("x", "y"))
    spec = load(
        "configs/sst2-augment.yaml",
        overrides(
            keyword_reviews,
            "augment.eda=null",
            f"augment.teacher={good}",
            f"augment.teachers=[{other}]",
            f"augment.pseudo.pool=[{pool}]",
            "augment.pseudo.distill={}",
        ),
    )
    with pytest.raises(
        UserError,
        match=r"augment\.teachers\[0\] .* predicts the labels \['x', 'y'\] but the data's labels are \['0', '1'\]",
    ):
        llm_pipeline(spec)
    assert MlflowClient().search_registered_models() == []


def test_an_empty_pool_exits_non_zero_before_training(home, sentiment, tmp_path, run_cli, registered_versions):
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\n")
    args = [f"--set={o}" for o in overrides(sentiment, "augment.eda=null", f"augment.pseudo.pool=[{empty}]")]
    done = run_cli(["run", "configs/sst2-augment.yaml", *args], home)
    assert done.returncode == 2, done.stderr
    assert "augment.pseudo.pool" in done.stderr and "holds no rows" in done.stderr and "Traceback" not in done.stderr
    assert registered_versions(home) == []


@pytest.mark.parametrize(
    "setting, message",
    [
        ("augment.eda.copies=0", r"augment\.eda\.copies` Input should be greater than or equal to 1"),
        ("augment.eda.swap_rate=1.5", r"augment\.eda\.swap_rate` Input should be less than or equal to 1"),
        ("augment={}", r"augment has no operation"),
        ("augment.pseudo.threshold=2", r"augment\.pseudo\.threshold"),
        ("labeled.task=sft", r"augment works on classification data"),
        (
            "augment.pseudo.distill.alpha=1.5",
            r"augment\.pseudo\.distill\.alpha` Input should be less than or equal to 1",
        ),
        (
            "augment.pseudo.distill.temperature=0",
            r"augment\.pseudo\.distill\.temperature` Input should be greater than 0",
        ),
        ("augment.pseudo.max_ratio=0", r"augment\.pseudo\.max_ratio` Input should be greater than 0"),
        (
            "augment={eda: {}, teachers: [a]}",
            r"augment\.teachers label the pseudo-label pool, and augment\.pseudo is not set",
        ),
    ],
)
def test_bad_augment_settings_name_the_key(sentiment, setting, message):
    with pytest.raises(UserError, match=message):
        load("configs/sst2-augment.yaml", overrides(sentiment, setting))


def test_rounds_adjust_the_strategy_and_stop_on_patience(home, sentiment, pool):
    # Round 1's learning rate is too low to learn anything in 4 steps; round 2's strategy multiplies it by 100, learns
    # and takes over; round 3 (the same strategy again) does not beat it by min_delta, so patience 1 stops the loop.
    spec = load(
        "configs/sst2-augment.yaml",
        overrides(
            sentiment,
            "augment.eda=null",
            f"augment.pseudo.pool=[{pool}]",
            "augment.pseudo.threshold=0.0",
            "augment.pseudo.balance=false",
            "augment.pseudo.per_class=5",
            *POOLER_AND_HEAD,
            "finetune.train={max_steps: 4, batch_size: 16, lr: 0.00003, warmup_steps: 0, checkpoint_every: 4, log_every: 2}",
            "rounds={max_rounds: 4, patience: 1, min_delta: 0.2, strategies: [{lr_factor: 100, pseudo_refresh: true}]}",
        ),
    )
    result = llm_pipeline(spec)
    runs = stage_runs(result["pipeline_run"])
    assert {"finetune-round1", "finetune-round2", "finetune-round3"} <= set(runs) and "finetune-round4" not in runs
    history = MlflowClient().get_metric_history(result["pipeline_run"], "round_validation_accuracy")
    scores = {m.step: m.value for m in history}
    # 0.48, 0.77, 0.87
    assert sorted(scores) == [1, 2, 3] and scores[2] - scores[1] > 0.2 and scores[3] - scores[2] <= 0.2
    assert result["model"] == result["finetuned"] == "models:/mini/2"  # round 2 took over and stayed the best
    assert str(MlflowClient().get_model_version_by_alias("mini", "challenger").version) == "2"
    # lr ×100
    assert [float(runs[f"finetune-round{r}"].data.params["train.lr"]) for r in (1, 2, 3)] == pytest.approx(
        [3e-5, 3e-3, 3e-3]
    )
    assert "teacher" not in " ".join(runs["augment-round1"].data.tags)  # round 1 has no teacher yet
    # so it adds nothing and hands on the labeled data itself: round 1's fine-tune has the inputs, and so the stage key,
    # of the plain fine-tune, which a sweep's plain cell has trained already
    assert runs["augment-round1"].data.tags["multistep.output"] == result["labeled"]
    assert runs["finetune-round1"].data.tags["multistep.input.dataset"] == result["labeled"]
    # Pseudo-labels come from the best model so far: round 1's for round 2, round 2's (which took over) for round 3.
    assert runs["augment-round2"].data.tags["multistep.input.teacher"] == "models:/mini/1"
    assert runs["augment-round3"].data.tags["multistep.input.teacher"] == "models:/mini/2"
    pipeline = MlflowClient().get_run(result["pipeline_run"])
    assert pipeline.data.tags["multistep.round.2"].startswith("lr ×100, pseudo-label refresh → models:/mini/2")
    assert pipeline.data.tags["multistep.round.3"].startswith("lr ×100, pseudo-label refresh → models:/mini/3")


def test_rounds_settings_that_do_not_fit_name_the_fix(sentiment):
    with pytest.raises(UserError, match="pseudo_refresh but augment.pseudo is not set"):
        load(
            "configs/sst2-augment.yaml",
            overrides(sentiment, "augment.pseudo=null", "rounds={strategies: [{pseudo_refresh: true}]}"),
        )
    with pytest.raises(UserError, match="two loops"):
        load("configs/sst2-augment.yaml", overrides(sentiment, "augment.rounds=2", "rounds={}"))
