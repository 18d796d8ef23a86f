"""`multistep lineage`: the ancestry of a model version, built from real stage runs and versions in a fresh MLflow store."""

import hashlib
import json
import tempfile
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict

from tasks import registry
from tasks.errors import UserError
from tasks.lineage import ancestry
from tasks.lineage.render import render
from tasks.tracking import DIGEST, PREFECT_FLOW_RUN, content_digest, stage_run

FLOW_RUNS = {
    stage: hashlib.md5(stage.encode()).hexdigest() for stage in ("prepare-labeled", "augment", "finetune", "transfer")
}
DATA_DIGEST = "sha256:" + hashlib.sha256(b"labeled splits").hexdigest()
AUGMENTED_DIGEST = "sha256:" + hashlib.sha256(b"augmented splits").hexdigest()


class Spec(BaseModel):
    """Stands in for a stage's spec: only its (empty) contents enter the stage key."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def stage(
    name: str, inputs: dict[str, str], body, round: int | None = None, digests: dict[str, str] | None = None
) -> str:
    """Run `body` as the stage `name` the way the stage flows do, inside a Prefect flow run (its id faked)."""

    digests = digests or {n: u for n, u in inputs.items()}
    with stage_run(name, Spec(), inputs, code="tasks.lineage", experiment="test", digests=digests, round=round) as ctx:
        if not ctx.cached:
            ctx.tags[PREFECT_FLOW_RUN] = FLOW_RUNS[name]  # what stage_run reads from prefect.runtime inside a flow
            mlflow.set_tag(PREFECT_FLOW_RUN, FLOW_RUNS[name])
            ctx.output = body(ctx)
    return ctx.output


def labeled_stage(source: Path) -> str:
    """prepare-labeled: a card with the source's digest; returns `runs:/<id>/labeled`."""

    def body(ctx):
        card = {"task": "classification", "sources": {str(source): content_digest(source)}, "digest": DATA_DIGEST,
                "splits": {"train": {"rows": 40}, "validation": {"rows": 5}, "test": {"rows": 5}}}  # fmt: skip
        mlflow.log_dict(card, "labeled/card.json")
        mlflow.set_tag(DIGEST, DATA_DIGEST)
        return f"runs:/{ctx.run_id}/labeled"

    return stage("prepare-labeled", {"train0": str(source)}, body, digests={"train0": content_digest(source)})


def augment_stage(dataset: str, teacher: str | None = None, round: int | None = None) -> str:
    """augment: EDA rows, and pseudo-labels when there is a teacher; returns `runs:/<id>/augmented`."""
    operations = {"eda": {"rows": 4000, "synonyms": "wordnet"}}
    if teacher:
        operations["pseudo"] = {"rows": 2000, "teacher": teacher, "pool_rows": 9000}

    def body(ctx):
        card = {"task": "classification", "digest": AUGMENTED_DIGEST, "augment": {"parent": dataset, "operations": operations},
                "splits": {"train": {"rows": 40 + sum(op["rows"] for op in operations.values())}, "validation": {"rows": 5}, "test": {"rows": 5}}}  # fmt: skip
        mlflow.log_dict(card, "augmented/card.json")
        mlflow.set_tag(DIGEST, AUGMENTED_DIGEST)
        return f"runs:/{ctx.run_id}/augmented"

    return stage("augment", {"dataset": dataset, **({"teacher": teacher} if teacher else {})}, body, round=round)


def register_files(ctx, name: str, tags: dict[str, str]) -> str:
    """A tiny text file as the "model", registered from the run's artifacts the way LoRA adapters are."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "weights.txt").write_text(f"{ctx.stage} {ctx.key}\n")
        mlflow.log_artifacts(tmp, "model")
    return registry.register(mlflow.get_artifact_uri("model"), name, ctx, tags)


def finetune_stage(model: str, dataset: str, name: str = "sst2", round: int | None = 0, accuracy: float = 0.875) -> str:
    def body(ctx):
        version = register_files(
            ctx, name, {"multistep.parent_model": model, "multistep.method": "full", "multistep.labels": "neg,pos"}
        )
        registry.set_tags(version, {"metric.validation_accuracy": f"{accuracy:.6g}", "metric.train_loss": "0.25"})
        return version

    return stage("finetune", {"model": model, "dataset": dataset}, body, round=round)


OPERATIONS = [{"op": "drop_layers", "layers": [1, 3]}, {"op": "classification_head", "labels": ["neg", "pos"]}]


def transfer_stage(model: str, name: str = "sst2-transfer") -> str:
    def body(ctx):
        return register_files(
            ctx, name, {"multistep.parent_model": model, "multistep.operations": json.dumps(OPERATIONS)}
        )

    return stage("transfer", {"model": model}, body)


def nodes(tree: dict) -> list[dict]:
    """Every node of the tree, depth first."""
    return [tree] + [n for child in tree["inputs"].values() for n in nodes(child)]


@pytest.fixture
def three_stages(home, tmp_path) -> dict:
    """prepare-labeled → augment → finetune, from a local source file and the shipped package:minilm."""
    source = tmp_path / "train.tsv"
    source.write_text("sentence\tlabel\na charming journey .\t1\nunflinchingly bleak .\t0\n")
    labeled = labeled_stage(source)
    augmented = augment_stage(labeled)
    model = finetune_stage("package:minilm", augmented)
    return {"source": source, "labeled": labeled, "augmented": augmented, "model": model}


# ---- the tree ------------------------------------------------------------------------------------


def test_lineage_of_a_three_stage_model_lists_all_three(three_stages):
    uri, source = three_stages["model"], three_stages["source"]
    assert uri == "models:/sst2/1"
    tree = ancestry(uri)

    assert [n["stage"] for n in nodes(tree) if n["stage"]] == ["finetune", "augment", "prepare-labeled"]
    assert tree["kind"] == "model" and tree["prefect_flow_run"] == FLOW_RUNS["finetune"]
    assert (
        tree["details"]["method"] == "full"
        and tree["details"]["labels"] == ["neg", "pos"]
        and tree["details"]["round"] == 0
    )
    assert tree["details"]["metrics"] == {"train_loss": 0.25, "validation_accuracy": 0.875}
    assert tree["run_id"] == MlflowClient().get_model_version("sst2", "1").run_id
    assert tree["inputs"]["model"] == {
        **tree["inputs"]["model"],
        "uri": "package:minilm",
        "kind": "source",
        "inputs": {},
    }

    augmented = tree["inputs"]["dataset"]
    assert (augmented["uri"], augmented["kind"], augmented["stage"], augmented["digest"]) == (
        three_stages["augmented"],
        "dataset",
        "augment",
        AUGMENTED_DIGEST,
    )
    assert augmented["details"]["operations"] == {"eda": {"rows": 4000, "synonyms": "wordnet"}}
    assert augmented["details"]["rows"] == {"train": 4040, "validation": 5, "test": 5}
    labeled = augmented["inputs"]["dataset"]
    assert (labeled["uri"], labeled["stage"], labeled["digest"]) == (
        three_stages["labeled"],
        "prepare-labeled",
        DATA_DIGEST,
    )
    assert labeled["prefect_flow_run"] == FLOW_RUNS["prepare-labeled"]
    leaf = labeled["inputs"]["train0"]
    assert (leaf["uri"], leaf["kind"], leaf["digest"], leaf["inputs"]) == (
        str(source),
        "source",
        content_digest(source),
        {},
    )

    text = render(tree)
    print(text)
    lines = text.splitlines()
    assert len(lines) == 5  # finetune, its two inputs, the labeled dataset, its source
    assert lines[0].startswith(
        f"models:/sst2/1  [finetune round 0, run {tree['run_id'][:8]}, flow run {FLOW_RUNS['finetune'][:8]}]  full"
    )
    assert "validation_accuracy 0.875" in lines[0]
    assert lines[1] == "├─ model: package:minilm"
    assert lines[2].startswith(
        f"└─ dataset: runs:/{augmented['run_id'][:8]}…/augmented  [augment, run {augmented['run_id'][:8]}, flow run {FLOW_RUNS['augment'][:8]}]"
    )
    assert f"digest {AUGMENTED_DIGEST[7:19]}" in lines[2] and "eda +4,000 rows" in lines[2]
    assert lines[3].startswith(
        f"   └─ dataset: runs:/{labeled['run_id'][:8]}…/labeled  [prepare-labeled, run {labeled['run_id'][:8]}"
    )
    assert f"digest {DATA_DIGEST[7:19]}" in lines[3] and "40 train / 5 validation / 5 test rows" in lines[3]
    assert lines[4] == f"      └─ train0: {source}  digest {content_digest(source)[7:19]}"


def test_transfer_and_self_training_show_operations_teachers_and_shared_parents_once(three_stages):
    first = three_stages["model"]
    transferred = transfer_stage(first)
    augmented = augment_stage(three_stages["labeled"], teacher=first, round=1)
    student = finetune_stage(transferred, augmented, round=1, accuracy=0.9)
    assert (transferred, student) == ("models:/sst2-transfer/1", "models:/sst2/2")
    MlflowClient().set_registered_model_alias("sst2", "champion", "2")

    tree = ancestry("models:/sst2@champion")
    assert tree["uri"] == "models:/sst2@champion" and tree["details"]["version"] == student
    transfer = tree["inputs"]["model"]
    assert (transfer["stage"], transfer["details"]["operations"], transfer["details"]["parent_model"]) == (
        "transfer",
        OPERATIONS,
        first,
    )
    assert transfer["inputs"]["model"]["uri"] == first and transfer["inputs"]["model"]["stage"] == "finetune"
    data = tree["inputs"]["dataset"]
    assert data["details"]["round"] == 1 and data["details"]["operations"]["pseudo"]["teacher"] == first
    assert list(data["inputs"]) == ["dataset", "teacher"]
    # The first model and the labeled data are parents twice over: in full once, then referred back to.
    assert data["inputs"]["teacher"]["see_above"] and data["inputs"]["teacher"]["inputs"] == {}
    assert data["inputs"]["dataset"]["see_above"] and data["inputs"]["dataset"]["uri"] == three_stages["labeled"]
    full = [n["run_id"] for n in nodes(tree) if n["run_id"] and not n.get("see_above")]
    # student, transfer, first model, its augment, the labeled data, the second augment
    assert len(full) == len(set(full)) == 6

    text = render(tree)
    print(text)
    assert text.splitlines()[0].startswith("models:/sst2@champion  [finetune round 1, run ")
    assert "= models:/sst2/2, full" in text and "validation_accuracy 0.9" in text
    assert "drop_layers layers=1,3; classification_head labels=neg,pos" in text
    assert "[augment round 1, run " in text and "eda +4,000 rows, pseudo +2,000 rows (teacher models:/sst2/1)" in text
    assert text.count("(see above)") == 2
    assert "│  " in text and "├─ " in text and "└─ " in text


def test_cycles_and_missing_parents_end_the_branch_instead_of_the_tree(home, tmp_path):
    source = tmp_path / "train.tsv"
    source.write_text("text\tlabel\nfine\t1\n")
    labeled = labeled_stage(source)
    run_id = labeled.removeprefix("runs:/").split("/")[0]
    # a loop no stage writes, but a hand-edited tag could
    MlflowClient().set_tag(run_id, "multistep.input.dataset", labeled)
    model = finetune_stage("models:/gone/3", labeled)

    tree = ancestry(model)
    data = tree["inputs"]["dataset"]
    assert data["inputs"]["dataset"]["see_above"] and data["inputs"]["train0"]["uri"] == str(source)
    gone = tree["inputs"]["model"]
    assert gone["kind"] == "model" and "models:/gone/3" in gone["error"]
    text = render(tree)
    assert "model: models:/gone/3  (missing: Model models:/gone/3 is not in the registry" in text
    assert "dataset: runs:/" in text and "(see above)" in text


def test_a_dataset_uri_has_lineage_too(three_stages):
    tree = ancestry(three_stages["augmented"])
    assert [n["stage"] for n in nodes(tree) if n["stage"]] == ["augment", "prepare-labeled"]


@pytest.mark.parametrize(
    ("uri", "needles"),
    [
        ("models:/nope/1", ["models:/nope/1", "no registered model is named 'nope'", "it holds sst2", "make ui"]),
        ("models:/sst2/7", ["models:/sst2/7", "'sst2' has no version 7, only version 1", "make ui"]),
        ("models:/sst2@champion", ["'sst2' has no alias @champion, only version 1"]),
        ("models:/sst2", ["models:/sst2 names no version", "models:/<name>/<version>"]),
        ("package:minilm", ["package:minilm is not a registered model version", "models:/<name>@<alias>"]),
        ("runs:/0123456789abcdef/labeled", ["no run '0123456789abcdef'"]),
    ],
)
def test_what_is_not_a_registered_version_is_one_sentence(three_stages, uri, needles):
    with pytest.raises(UserError) as raised:
        ancestry(uri)
    for needle in needles:
        assert needle in str(raised.value)


# ---- the command -----------------------------------------------------------------------------------


def test_cli_prints_the_tree_or_json_and_refuses_unknown_models(three_stages, home, run_cli, tmp_path):
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI to children; blank it so the CLI finds the store by MULTISTEP_HOME.
    embedded = {"MLFLOW_TRACKING_URI": ""}
    shown = run_cli(["lineage", three_stages["model"]], home, timeout=120, **embedded)
    assert shown.returncode == 0, shown.stderr[-3000:]
    for needle in (
        "models:/sst2/1  [finetune round 0",
        "[augment, run",
        "[prepare-labeled, run",
        str(three_stages["source"]),
        DATA_DIGEST[7:19],
    ):
        assert needle in shown.stdout, shown.stdout

    as_json = run_cli(["lineage", three_stages["model"], "--json"], home, timeout=120, **embedded)
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    assert json.loads(as_json.stdout) == ancestry(three_stages["model"])

    for args, where, needles in [
        (["lineage", "models:/nope/1"], home, ["models:/nope/1", "'nope'", "sst2", "make ui"]),
        (["lineage", "models:/sst2/1"], tmp_path / "empty", ["no MLflow store", "multistep run"]),
    ]:
        refused = run_cli(args, where, timeout=120, **embedded)
        assert refused.returncode == 2, refused.stdout[-2000:]
        assert "Traceback" not in refused.stderr, refused.stderr[-3000:]
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and refused.stdout == "", refused.stderr[-3000:]
        for needle in needles:
            assert needle in errors[0], errors[0]
    assert not (tmp_path / "empty" / "mlflow.db").exists()  # looking did not create an empty store
