"""deployments/prefect.yaml: parameters are real specs, presets match configs/, every stage has a deployment on its pool."""

import importlib
from pathlib import Path

import pytest
import yaml
from prefect import Flow

from flows import dispatch, sweep
from flows.spec import PipelineSpec
from flows.stages import STAGES
from flows.sweep_spec import SweepSpec

CONFIG = yaml.safe_load(Path("deployments/prefect.yaml").read_text())
DEPLOYMENTS = CONFIG["deployments"]


def flow_of(entrypoint: str) -> Flow:
    module, name = entrypoint.split(":")
    return getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)


@pytest.mark.parametrize("deployment", [d for d in DEPLOYMENTS if "parameters" in d], ids=lambda d: d["name"])
def test_every_deployment_parameter_set_is_a_valid_spec(deployment):
    if deployment["entrypoint"] == "flows/sweep.py:sweep":
        found = sweep.plan(SweepSpec.model_validate(deployment["parameters"]["spec"]))  # every cell a valid pipeline
        assert {cell.spec.execution.mode for cell in found.cells} == {"pools"}
    else:
        spec = PipelineSpec.model_validate(deployment["parameters"]["spec"])
        assert spec.execution.mode == "pools"
    # The form Prefect builds takes exactly the flow's parameters.
    assert set(deployment["parameters"]) <= set(flow_of(deployment["entrypoint"]).parameters.properties)


def test_preset_deployments_equal_their_config_files():
    presets = CONFIG["definitions"]["presets"]
    for name, spec in presets.items():
        assert spec == yaml.safe_load(Path(f"configs/{name}.yaml").read_text()), (
            f"deployments/prefect.yaml preset {name} drifted from configs/{name}.yaml"
        )
    for name, spec in CONFIG["definitions"]["sweeps"].items():
        assert spec == yaml.safe_load(Path(f"configs/sweeps/{name}.yaml").read_text()), (
            f"deployments/prefect.yaml sweep {name} drifted from configs/sweeps/{name}.yaml"
        )


def test_sweep_deployments_run_their_preset_with_every_cell_on_the_pools():
    (gains,) = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/sweep.py:sweep"]
    preset = yaml.safe_load(Path(f"configs/sweeps/{gains['name']}.yaml").read_text())
    spec = dict(gains["parameters"]["spec"])
    assert spec.pop("overrides") == {**preset.pop("overrides"), "execution.mode": "pools"}
    assert spec == preset


def test_each_stage_flow_has_a_deployment_on_the_pool_of_its_hardware():
    stages = {}
    for d in DEPLOYMENTS:
        if d["entrypoint"].startswith("flows/stages.py:"):
            flow = flow_of(d["entrypoint"])
            # what the pipeline dispatches to, and what Prefect's list of deployments shows first
            assert f"{flow.name}/{d['name']}" == dispatch.deployment_name(flow.name, d["work_pool"]["name"])
            assert d["name"] == f"{flow.name}-on-{d['work_pool']['name']}"
            stages.setdefault(flow.name, set()).add(d["work_pool"]["name"])
    assert set(stages) == set(STAGES)
    for stage, pools in stages.items():
        expected = {"cpu", "gpu"} if STAGES[stage].hardware == "spec" else {STAGES[stage].hardware}
        assert pools == expected, stage


def test_retraining_deployment_runs_on_a_cron_schedule_with_a_timezone():
    (retrain,) = [d for d in DEPLOYMENTS if d["entrypoint"] == "flows/retrain.py:retrain"]
    (schedule,) = retrain["schedules"]
    assert len(schedule["cron"].split()) == 5 and schedule["timezone"] and schedule["active"]
    spec = PipelineSpec.model_validate(retrain["parameters"]["spec"])
    assert spec.finetune and spec.gate and not spec.pretrain
