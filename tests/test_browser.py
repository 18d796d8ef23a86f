"""Issue 14 in a browser: after a tiny pipeline run the way `make demo` runs one, the servers `make ui` starts show what it
printed. Debian's chromium, headless, driven by Playwright (`make install` installs both)."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from playwright.sync_api import Page, expect, sync_playwright

from flows import stack, ui
from tasks import links
from tasks.backend import _create_sqlite_store
from tests.conftest import _run_cli, _tiny_overrides

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))  # the Makefile's CHROMIUM
# The pages load in seconds; a loaded machine, two pytest workers and Chromium's first start make that tens of seconds.
expect.set_options(timeout=45_000)


@dataclass(frozen=True)
class Ran:
    summary: str
    """What the CLI printed."""
    run: Run
    """The pipeline's MLflow run."""
    mlflow: ui.Server
    prefect: ui.Server


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A tiny pipeline on a fresh home, as `make demo` runs one, and the two servers of `make ui` on that home."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("browser")
    home, corpus = root / "home", root / "corpus.txt"
    corpus.write_text("\n\n".join(topics[name] for name in sorted(topics)[:4])[:12_000], encoding="utf-8")
    ports = stack.free_ports()
    mlflow_ui, prefect_ui = f"http://127.0.0.1:{ports.mlflow}", f"http://127.0.0.1:{ports.prefect}"
    # No checkpoints (seconds on a loaded machine, and nothing here resumes). No baseline bar for the first promotion: a
    # few steps do not beat the unigram baseline, and this run is to be promoted so that the registry shows @champion.
    extra = ["pretrain.train.checkpoint_every=1000", "gate.baseline=false"]
    sets = sum((["--set", o] for o in [*_tiny_overrides(corpus, name="tiny"), *extra]), [])
    servers = []
    try:
        # MLflow's UI starts beside the run, on the store created first (two processes creating it at once collide);
        # Prefect's reads the database the run's own server writes, so it starts after, and the MLflow tests go first.
        _create_sqlite_store(f"sqlite:///{home / 'mlflow.db'}")
        servers.append(ui.start(home, "mlflow", ports.mlflow))
        # PREFECT_HOME unset, as for a user: the CLI keeps Prefect's database under the home, which `make ui` serves.
        done = _run_cli(
            ["run", "configs/default.yaml", *sets],
            home,
            PREFECT_HOME=None,
            PREFECT_API_URL=None,
            MULTISTEP_MLFLOW_UI=mlflow_ui,
            PREFECT_UI_URL=prefect_ui,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        servers.append(ui.start(home, "prefect", ports.prefect))
        pipeline_run_id = re.search(r"MLflow: +pipeline run (\w+)", done.stdout).group(1)
        run = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").get_run(pipeline_run_id)
        yield Ran(done.stdout, run, *servers)
    finally:
        ui.stop(*servers)


@pytest.fixture
def mlflow_ui(ran) -> str:
    ui.wait_ready(ran.mlflow)
    return ran.mlflow.url


@pytest.fixture
def prefect_ui(ran) -> str:
    ui.wait_ready(ran.prefect)
    return ran.prefect.url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(
            f"needs Chromium at {CHROMIUM}: `make install` installs Debian's chromium (or set CHROMIUM=<its path>)"
        )
    with sync_playwright() as playwright:
        # Playwright's own browser download is not reachable from here; Debian's chromium is.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


def printed_link(summary: str, what: str) -> str:
    """The URL on the summary's `  <what>  http://…` line under `browse:`."""
    return re.search(rf"^  {what} +(http\S+)$", summary, re.MULTILINE).group(1)


def test_the_printed_model_link_opens_the_registered_model_with_its_aliases(ran, mlflow_ui, page):
    url = printed_link(ran.summary, "model")
    assert url == links.model("tiny-base", "1").replace(links.LOCAL_MLFLOW_UI, mlflow_ui)
    page.goto(url)
    expect(page.get_by_role("heading", name="Version 1")).to_be_visible()
    expect(page.get_by_text("@ champion", exact=True)).to_be_visible()
    expect(page.get_by_text("@ challenger", exact=True)).to_be_visible()
    # Its description (markdown) says where it came from and what the gate decided.
    expect(page.get_by_text("Gate:", exact=True)).to_be_visible()
    expect(page.get_by_text("Pipeline (preset):", exact=True)).to_be_visible()
    # Up to the registered model: its versions table lists version 1 with both aliases.
    page.get_by_test_id("breadcrumbRegisteredModel").click()  # not the source logged model, named alike
    expect(page).to_have_title("Model: tiny-base - MLflow")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 1"))
    expect(row.get_by_text("@ champion", exact=True)).to_be_visible()
    expect(row.get_by_text("@ challenger", exact=True)).to_be_visible()


def test_the_pipeline_run_page_shows_the_spec_as_params_and_the_models_metrics(ran, mlflow_ui, page):
    page.goto(printed_link(ran.summary, "pipeline"))
    expect(page.get_by_role("heading", name=ran.run.info.run_name, exact=True)).to_be_visible()
    param = page.get_by_role("row").filter(has=page.get_by_text("pretrain.train.max_steps", exact=True))
    expect(param).to_have_text(re.compile(r"^pretrain\.train\.max_steps\s*6$"))
    metric = page.get_by_role("row").filter(has=page.get_by_text("test_perplexity", exact=True))
    expect(metric).to_have_text(re.compile(r"^test_perplexity\s*[\d.]+$"))
    shown = float(metric.inner_text().split()[-1])
    assert shown == pytest.approx(ran.run.data.metrics["test_perplexity"], rel=1e-4)


def test_the_pipeline_run_links_to_its_prefect_run_whose_summary_links_back(ran, mlflow_ui, prefect_ui, page):
    """Both ways: the MLflow run's description → the Prefect flow run → its `pipeline-summary` artifact → the MLflow run."""
    run_id, run_name = ran.run.info.run_id, ran.run.info.run_name  # the MLflow run is named like its Prefect flow run
    page.goto(printed_link(ran.summary, "pipeline"))
    with page.context.expect_page() as opened:  # both UIs open these links in a new tab
        page.get_by_role("link", name=run_name, exact=True).click()
    prefect = opened.value
    expect(prefect.get_by_text(f"mlflow-run:{run_id}", exact=True)).to_be_visible()  # the tag of this flow run
    prefect.get_by_text("Artifacts", exact=True).click()
    prefect.get_by_text("pipeline-summary", exact=True).click()
    expect(prefect.get_by_text("stages:")).to_be_visible()
    with prefect.context.expect_page() as opened:
        prefect.get_by_role("link", name=run_id, exact=True).click()
    back = opened.value
    # The page the link loads is the pipeline's run, not a stage's (`tiny/pretrain`, …).
    expect(back.get_by_role("heading", name=run_name, exact=True)).to_be_visible()
    expect(back).to_have_title(f"Run {run_id} - MLflow")
