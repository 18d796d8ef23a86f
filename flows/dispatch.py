"""How the pipeline runs a stage flow: here, in-process with bounded re-runs (a resumed stage picks up its checkpoint)."""

from prefect import Flow

from tasks.errors import UserError


def call(stage: Flow, retries: int, **params) -> str:
    """Run a stage subflow; run it again after an unexpected failure, never after an input error."""
    for attempt in range(retries + 1):
        try:
            return stage(**params)
        except UserError:
            raise
        except Exception as exc:
            if attempt == retries:
                raise
            print(f"{stage.name}: attempt {attempt + 1} failed ({type(exc).__name__}: {exc}); running it again")
    raise AssertionError("unreachable")
