"""Sweeps in local mode on tiny models: cells, shared stages, the table against the registry, failures, bad input."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.sweep import plan, sweep
from flows.sweep_spec import SweepSpec, load
from tasks import metrics, tracking
from tasks.errors import UserError
from tasks.sweep_report import render


def base(corpus: Path, sentiment: Path, tiny_overrides) -> dict:
    """A tiny GPT-2 pretrained on the corpus, then fine-tuned to classify the toy sentiment rows."""
    from flows.spec import load as load_pipeline

    extra = [
        "evaluate=null", "labeled.task=classification", f"labeled.train=[{sentiment}]", "labeled.text_column=sentence",
        "labeled.split.validation=0.2", "labeled.split.test=0.2",
        "finetune.train.max_steps=6", "finetune.train.batch_size=16", "finetune.train.lr=0.003",
        "finetune.train.warmup_steps=0", "finetune.train.checkpoint_every=6", "finetune.train.log_every=3",
        "finetune.max_length=16", "finetune.patience=null",
    ]  # fmt: skip
    return load_pipeline("configs/default.yaml", tiny_overrides(corpus, "swept") + extra).model_dump(
        mode="json", exclude_unset=True
    )


def write(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def stage_runs(stage: str) -> list:
    return mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.`{tracking.STAGE}` = '{stage}'", output_format="list"
    )


def test_two_conditions_by_two_seeds_share_the_data_and_pretraining_and_report_the_registry_numbers(
    prefect_api, home, corpus, sentiment, tiny_overrides, tmp_path
):
    spec = load(write(
        tmp_path, base=base(corpus, sentiment, tiny_overrides), seeds=[0, 1], seed_fields=["finetune.train.seed"],
        conditions={"baseline": {}, "fast": {"finetune.train.lr": 0.03}},
    ))  # fmt: skip
    report = sweep(spec)

    # Four cells, each a pipeline run nested under the sweep's run; the corpus, the pretraining and the labeled data once.
    assert [(c["row"], c["seed"], c["status"]) for c in report["cells"]] == [
        ("baseline", 0, "completed"),
        ("baseline", 1, "completed"),
        ("fast", 0, "completed"),
        ("fast", 1, "completed"),
    ]
    client = MlflowClient()
    pipelines = client.search_runs(
        [client.get_run(report["sweep_run"]).info.experiment_id], f"tags.`mlflow.parentRunId` = '{report['sweep_run']}'"
    )
    assert sorted(r.info.run_id for r in pipelines) == sorted(c["pipeline_run"] for c in report["cells"])
    assert {
        stage: len(stage_runs(stage)) for stage in ("prepare", "pretrain", "prepare-labeled", "finetune", "gate")
    } == {"prepare": 1, "pretrain": 1, "prepare-labeled": 1, "finetune": 4, "gate": 4}

    # What a cell costs alone: the first cell ran the shared stages, so its alone is its wall; every other cell's alone
    # adds the time those stages took in the first cell.
    shared = sum(
        (r.info.end_time - r.info.start_time) / 1000
        for s in ("prepare", "pretrain", "prepare-labeled")
        for r in stage_runs(s)
    )
    assert shared > 1
    assert [round(c["alone_s"] - c["wall_s"], 1) for c in report["cells"]] == pytest.approx(
        [0, shared, shared, shared], abs=0.11
    )

    # The table's numbers are the registered versions' metrics.
    value = {
        (c["row"], c["seed"]): float(
            client.get_model_version("swept", c["model"].rsplit("/", 1)[1]).tags["metric.test_accuracy"]
        )
        for c in report["cells"]
    }
    assert {(c["row"], c["seed"]): c["value"] for c in report["cells"]} == value
    rows = {r["row"]: r for r in report["rows"]}
    for row in ("baseline", "fast"):
        mine = [value[row, 0], value[row, 1]]
        assert (rows[row]["n"], rows[row]["mean"], rows[row]["min"], rows[row]["max"]) == (
            2,
            pytest.approx(np.mean(mine)),
            min(mine),
            max(mine),
        )
        assert rows[row]["std"] == pytest.approx(np.std(mine, ddof=1))

    # The paired statistics come from the cells' test predictions, pooled over the seeds.
    def correct(cell) -> np.ndarray:
        run_id = client.get_model_version("swept", cell["model"].rsplit("/", 1)[1]).run_id
        table = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/test_predictions.json")
            ).read_text()
        )
        return np.array(
            [
                float(str(p) == str(label))
                for label, p in zip(
                    *([row[table["columns"].index(c)] for row in table["data"]] for c in ("label", "predicted"))
                )
            ]
        )

    cells = {(c["row"], c["seed"]): c for c in report["cells"]}
    fast = np.concatenate([correct(cells["fast", 0]), correct(cells["fast", 1])])
    slow = np.concatenate([correct(cells["baseline", 0]), correct(cells["baseline", 1])])
    # equal row counts per seed
    assert rows["fast"]["delta"] == pytest.approx(rows["fast"]["mean"] - rows["baseline"]["mean"])
    assert rows["fast"]["mcnemar_p"] == metrics.mcnemar(fast, slow)["p_value"]
    boot = metrics.paired_bootstrap(fast, slow, samples=2000)
    assert (rows["fast"]["ci_low"], rows["fast"]["ci_high"]) == (boot["low"], boot["high"])
    assert rows["fast"]["paired_rows"] == len(fast) == len(slow) == 2 * 59  # both seeds, the same 59 test rows

    # No alias moved: the cells' gates only reported. With no champion, each cell faced the majority-class baseline on
    # the same test rows: the seed-1 classifiers still say the majority training label everywhere, a tie, not a gain.
    assert client.get_registered_model("swept").aliases == {}
    tags = {(c["row"], c["seed"]): client.get_model_version("swept", c["model"].rsplit("/", 1)[1]).tags for c in report["cells"]}  # fmt: skip
    assert {cell: t["gate.decision"] for cell, t in tags.items()} == {
        ("baseline", 0): "would promote (report only)",
        ("baseline", 1): "would reject (report only)",
        ("fast", 0): "would promote (report only)",
        ("fast", 1): "would reject (report only)",
    }
    assert {t["gate.baseline_value"] for t in tags.values()} == {tags["fast", 1]["gate.challenger_value"]}

    # The report on the sweep's MLflow run and as a Prefect artifact.
    files = {f.path for f in client.list_artifacts(report["sweep_run"], "sweep")}
    assert {"sweep/report.md", "sweep/report.json", "sweep/table.json", "sweep/chart.png", "sweep/spec.json"} <= files
    from prefect import get_client

    with get_client(sync_client=True) as prefect:
        (artifact,) = [a for a in prefect.read_latest_artifacts(limit=50) if a.key == "sweep-swept-sweep"]
    assert f"| fast | 2 | {rows['fast']['mean']:.4f} ± {rows['fast']['std']:.4f}" in artifact.data


def test_a_failed_cell_is_reported_and_the_others_complete_with_paired_block_losses(
    prefect_api, home, corpus, tiny_overrides, tmp_path
):
    from flows.spec import load as load_pipeline

    lm = load_pipeline("configs/default.yaml", tiny_overrides(corpus, "lm", steps=4)).model_dump(
        mode="json", exclude_unset=True
    )
    missing = tmp_path / "missing.txt"
    report = sweep(SweepSpec(base=lm, seeds=[0], conditions={
        "baseline": {}, "hotter": {"pretrain.train.lr": 0.01}, "broken": {"data.sources": [str(missing)]}}))  # fmt: skip

    cells = {c["row"]: c for c in report["cells"]}
    assert (cells["baseline"]["status"], cells["hotter"]["status"], cells["broken"]["status"]) == (
        "completed",
        "completed",
        "failed",
    )
    assert str(missing) in cells["broken"]["error"] and "model" not in cells["broken"]
    rows = {r["row"]: r for r in report["rows"]}
    assert (rows["broken"]["n"], rows["broken"]["failed"], rows["broken"]["mean"]) == (0, 1, None)
    assert "| broken | 0 (1 failed) |" in render(report)

    # Perplexity from the registry; the paired difference from the gate's per-block test losses of both models.
    client = MlflowClient()
    for row in ("baseline", "hotter"):
        version = client.get_model_version("lm-base", cells[row]["model"].rsplit("/", 1)[1])
        assert cells[row]["value"] == float(version.tags["metric.test_perplexity"])

    def losses(cell) -> np.ndarray:
        gate = stage_runs_under(cell["pipeline_run"], "gate")
        table = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(run_id=gate, artifact_path="gate/challenger_predictions.json")
            ).read_text()
        )
        return np.array([row[table["columns"].index("loss")] for row in table["data"]])

    hotter, baseline = losses(cells["hotter"]), losses(cells["baseline"])
    assert rows["hotter"]["paired_rows"] == len(hotter) == len(baseline) > 0
    assert rows["hotter"]["delta"] == pytest.approx(float(np.mean(hotter - baseline)))
    assert "mcnemar_p" not in rows["hotter"] and rows["hotter"]["note"] == "the interval is on the mean block log-loss"


def stage_runs_under(pipeline_run: str, stage: str) -> str:
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.`mlflow.parentRunId` = '{pipeline_run}' and tags.`{tracking.STAGE}` = '{stage}'")  # fmt: skip
    return run.info.run_id


# ---- bad input: one sentence, nothing run -------------------------------------------------------------------------------

TINY = {
    "base": "configs/sst2-minilm.yaml",
    "seeds": [0, 1],
    "conditions": {"none": {}, "lora": {"finetune.method": "lora"}},
}


@pytest.mark.parametrize("change, message", [
    ({"conditions": {"none": {}, "typo": {"finetune.train.max_step": 9}}},
     "sweep.yaml: condition typo: unknown key `finetune.train.max_step`: did you mean `finetune.train.max_steps`?"),
    ({"conditions": {"none": {}, "typo": {"augment.psuedo": None}}}, "sweep.yaml: condition typo: unknown key `augment.psuedo`: did you mean `augment.pseudo`?"),
    ({"seeds": []}, "sweep.yaml: `seeds` is empty: give at least one seed, e.g. seeds: [0, 1, 2]"),
    ({"seeds": [1, 1]}, "sweep.yaml: `seeds` repeats a seed"),
    ({"grid": {"finetune.train.lr": []}}, "sweep.yaml: `grid`: key finetune.train.lr has no values"),
    ({"conditions": {}}, "sweep.yaml: `conditions` Dictionary should have at least 1 item"),
    ({"grid": {"finetune.train.warmup": [0, 10]}}, "sweep.yaml: grid: unknown key `finetune.train.warmup`: did you mean `finetune.train.warmup_steps`?"),
    ({"grid": {"name.first": ["a"]}}, "sweep.yaml: grid: `name` is a value, not a section, so `name.first` does not exist"),
    ({"metric": "chrf"}, "sweep.yaml: metric chrf is not measured for classification models: use one of accuracy, macro_f1, ece, nll, robust_accuracy, attack_success_rate"),
    ({"metric": "robust_accuracy"}, "sweep.yaml: metric robust_accuracy is measured by finetune.attack, which not every cell sets: set base.finetune.attack"),
    ({"test": "validation"}, "sweep.yaml: test validation is the split fine-tuning picks its checkpoints on"),
    ({"conditions": {"none": {}, "odd": {"execution.mode": "pools"}}}, "sweep.yaml: a condition or the grid changes execution"),
])  # fmt: skip
def test_bad_input_is_one_sentence_naming_the_key(tmp_path, change, message):
    path = write(tmp_path, **{**TINY, **change})
    with pytest.raises(UserError) as caught:
        plan(load(path), source="sweep.yaml")
    assert str(caught.value).replace(str(path), "sweep.yaml").startswith(message), caught.value


def test_a_condition_identical_to_the_baseline_is_a_warning(tmp_path):
    found = plan(load(write(tmp_path, **{**TINY, "conditions": {"none": {}, "same": {"finetune.method": "full"}}})))
    assert found.warnings == [
        "condition same gives the same pipeline as the baseline none: its cells will reuse the baseline's runs and differ by exactly 0"
    ]
    assert len(found.cells) == 4


def test_the_cli_refuses_bad_input_with_exit_2_before_anything_runs(tmp_path, run_cli):
    path = write(tmp_path, **{**TINY, "conditions": {"none": {}, "typo": {"finetune.train.max_step": 9}}})
    home = tmp_path / "home"
    done = run_cli(["sweep", str(path), "--seeds", "0"], home)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {path}: condition typo: unknown key `finetune.train.max_step`: did you mean `finetune.train.max_steps`?"
    ]
    assert not (home / "mlflow.db").exists()  # no run was opened


# ---- the preset and the spec --------------------------------------------------------------------------------------------


def test_the_augmentation_preset_seeds_every_seed_and_never_promotes():
    path = Path("configs/sweeps/sst2-augment-gains.yaml")
    assert path.read_text().splitlines()[0] == f"# multistep sweep {path}"
    found = plan(load(path, ["base.finetune.train.max_steps=5"], seeds=[3, 4]))
    assert (found.baseline, found.metric, found.split) == ("none", "accuracy", "test")
    assert [(c.row, c.seed) for c in found.cells[:3]] == [("none", 3), ("none", 4), ("eda", 3)]
    assert {c.row for c in found.cells} == {"none", "eda", "pseudo", "eda+pseudo", "adversarial-examples", "fgm"}
    for cell in found.cells:
        spec = cell.spec
        assert (spec.finetune.train.seed, spec.finetune.train.max_steps, spec.gate.report_only) == (cell.seed, 5, True)
        # robustness on the same dev rows in every cell
        assert spec.finetune.attack.rows == 200 and spec.finetune.attack.seed == 0
        assert spec.labeled.split.salt == found.cells[0].spec.labeled.split.salt  # the same rows everywhere
        augment = spec.augment
        seeded = [augment.eda, augment.pseudo, augment.adversarial] if augment else []
        assert all(part.seed == cell.seed for part in seeded if part is not None)
    eda = next(c.spec for c in found.cells if c.row == "eda")
    assert eda.augment.pseudo is None and eda.augment.eda.copies == 8


SWEEPS = sorted(Path("configs/sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_preset_plans_report_only_cells_on_the_test_split(path):
    assert path.read_text().splitlines()[0] == f"# multistep sweep {path}"
    spec = load(path)
    found = plan(spec)
    assert found.split == "test" and len(found.cells) == len(spec.conditions) * len(spec.seeds)
    assert all(cell.spec.gate.report_only for cell in found.cells)


def test_the_sweep_form_shows_help_for_every_field():
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(sweep).model_dump()
    assert list(schema["properties"]) == ["spec"]
    models = schema.get("definitions") or schema.get("$defs")
    missing = [
        f"{name}.{field}"
        for name, model in models.items()
        for field, prop in model["properties"].items()
        if not prop.get("description")
    ]
    assert missing == []
    assert models["SweepSpec"]["properties"]["test"]["enum"] == ["test", "validation"]
    assert all(m.get("additionalProperties") is False for m in models.values())


def test_set_reaches_into_the_base_and_keeps_dotted_keys_of_conditions_overrides_and_grid():
    spec = load("configs/sweeps/sst2-augment-gains.yaml", [
        "base.finetune.train.lr=0.001", "conditions.eda.augment.eda.copies=2", "overrides.execution.mode=pools", "grid.finetune.method=[full, head]",
    ])  # fmt: skip
    assert spec.base.finetune.train.lr == 0.001 and spec.base.labeled.max_train_rows == 500  # the preset, inlined
    assert spec.conditions["eda"] == {"augment.pseudo": None, "augment.eda.copies": 2}
    assert spec.overrides == {"finetune.attack": {"rows": 200}, "execution.mode": "pools"}
    found = plan(spec)
    eda = [c for c in found.cells if c.condition == "eda"]
    assert {(c.point, c.spec.augment.eda.copies, c.spec.finetune.method) for c in eda} == {
        ((("finetune.method", "full"),), 2, "full"),
        ((("finetune.method", "head"),), 2, "head"),
    }
    assert found.reference["eda finetune.method=head"] == "none finetune.method=head"
    assert {c.spec.execution.mode for c in found.cells} == {"pools"} and len(found.cells) == 6 * 2 * 3


def test_a_seed_whose_test_rows_differ_from_the_baselines_is_left_out_of_the_paired_statistics_and_said_so():
    from tasks.sweep import PerRow, paired

    rows, other = [("good film", "1"), ("dull plot", "0")], [("good film", "1"), ("dull cast", "0")]
    per_row = {
        ("base", 0): PerRow(rows, np.array([1.0, 0.0])), ("eda", 0): PerRow(rows, np.array([1.0, 1.0])),
        ("base", 1): PerRow(rows, np.array([0.0, 0.0])), ("eda", 1): PerRow(other, np.array([1.0, 1.0])),
    }  # fmt: skip
    found = paired("eda", "base", per_row, [0, 1], "accuracy", [])
    # seed 0 alone: one row only eda got right
    assert (found["paired_rows"], found["delta"], found["mcnemar_p"]) == (2, 0.5, 1.0)
    assert (
        found["note"]
        == "seed 1: the test rows differ from base's (2 vs 2 rows), so it is left out of the paired statistics"
    )
    alone = paired("eda", "base", {k: v for k, v in per_row.items() if k[1] == 1}, [0, 1], "accuracy", [])
    assert alone == {
        "delta": None,
        "note": "seed 1: the test rows differ from base's (2 vs 2 rows), so it is left out of the paired statistics",
    }
