"""A fresh home's MLflow and Prefect databases start as copies of migrated templates, never of a used database."""

import sqlite3
from contextlib import closing

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows import embedded
from tasks import backend, dbtemplate


def rows(db, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(sql).fetchall()


def mark(db) -> None:
    """A table no migration makes: a database that holds it was copied from this one."""
    with closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE copied_from_the_template (x INTEGER)")
        con.commit()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MULTISTEP_CACHE", str(path))
    backend._create_sqlite_store.cache_clear()
    yield path
    backend._create_sqlite_store.cache_clear()


def test_the_first_mlflow_store_leaves_a_template_without_its_experiments_and_the_next_starts_as_its_copy(
    tmp_path, monkeypatch, cache
):
    first = tmp_path / "first"
    monkeypatch.setenv("MULTISTEP_HOME", str(first))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    backend.configure("multistep")
    template = dbtemplate.path("mlflow")
    assert template.parent == cache and template.name == f"mlflow-{mlflow.__version__}.db"
    # migrated, and nothing of the first home in it: MLflow's Default experiment named a path of that home's
    assert rows(template, "SELECT count(*) FROM alembic_version") == [(1,)]
    assert rows(template, "SELECT count(*) FROM experiments") == [(0,)]
    assert rows(first / "mlflow.db", "SELECT name FROM experiments ORDER BY experiment_id") == [
        ("Default",),
        ("multistep",),
    ]

    mark(template)
    second = tmp_path / "second"
    monkeypatch.setenv("MULTISTEP_HOME", str(second))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # mlflow.set_tracking_uri exported the first home's
    experiment = backend.configure("multistep")
    assert rows(second / "mlflow.db", "SELECT count(*) FROM copied_from_the_template") == [(0,)]
    # the copy is a working store of its own: MLflow made its Default experiment, and runs land in this home
    assert mlflow.get_experiment(experiment).artifact_location == (second / "artifacts").as_uri()
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("x", 1.0)
    assert MlflowClient().get_run(run.info.run_id).data.metrics == {"x": 1.0}
    assert [e.name for e in MlflowClient().search_experiments()] == ["multistep", "Default"]


def test_a_database_that_exists_is_never_replaced(tmp_path, cache):
    template = dbtemplate.path("prefect")
    template.parent.mkdir(parents=True)
    mark(template)
    used = tmp_path / "used" / "prefect.db"
    used.parent.mkdir()
    used.write_bytes(b"a home's own database")
    assert not embedded.seed_database(used.parent)
    assert used.read_bytes() == b"a home's own database"

    fresh = tmp_path / "fresh"
    assert embedded.seed_database(fresh)
    assert rows(fresh / "prefect.db", "SELECT count(*) FROM copied_from_the_template") == [(0,)]


def test_no_template_no_copy_and_a_database_set_elsewhere_is_left_to_its_setting(tmp_path, monkeypatch, cache):
    assert not embedded.seed_database(tmp_path / "a")  # nothing kept yet
    assert not (tmp_path / "a" / "prefect.db").exists()
    dbtemplate.path("prefect").parent.mkdir(parents=True)
    mark(dbtemplate.path("prefect"))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://team/prefect")
    assert not embedded.seed_database(tmp_path / "b")
    assert not (tmp_path / "b" / "prefect.db").exists()


def test_make_ui_starts_its_prefect_server_on_a_copy_of_the_template(tmp_path, monkeypatch, cache):
    from flows import stack, ui

    dbtemplate.path("prefect").parent.mkdir(parents=True)
    mark(dbtemplate.path("prefect"))
    started = []
    monkeypatch.setattr(ui.subprocess, "Popen", lambda cmd, **kw: started.append(cmd))  # no server: only its database
    ui.start(tmp_path / "home", "prefect", stack.free_ports().prefect)
    db = tmp_path / "home" / "prefect" / "prefect.db"
    assert started and rows(db, "SELECT count(*) FROM copied_from_the_template") == [(0,)]
