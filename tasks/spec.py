"""The base of every stage spec; `flows/spec.py` composes the stage specs into `PipelineSpec`."""

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Frozen, no unknown keys, and each field's attribute docstring becomes its help text in the Prefect form."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
