"""Deployment parameters are real specs: a deployment that the UI would refuse fails here first."""

from pathlib import Path

import yaml

from flows.spec import PipelineSpec


def test_every_deployment_parameter_set_is_a_valid_spec():
    config = yaml.safe_load(Path("deployments/prefect.yaml").read_text())
    assert config["deployments"]
    for deployment in config["deployments"]:
        assert deployment["entrypoint"] == "flows/pipeline.py:llm_pipeline"
        PipelineSpec.model_validate(deployment["parameters"]["spec"])
