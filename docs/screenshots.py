"""The README's screenshots: the Prefect run form of the pipeline deployment and the MLflow registry page of a model.

    make demo && .venv/bin/python docs/screenshots.py [--home .multistep] [--model demo-base]

Starts the servers of `make ui` on free ports over the stores of a home where a pipeline ran, registers the deployment
`llm-pipeline/default` there (what `make deploy` registers on a team stack; here without a pool, for its form), and
drives Debian's chromium headless. Writes docs/prefect-run-form.png and docs/mlflow-registry.png (1280×800).
"""

import argparse
import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # run as a script from anywhere: the repository's packages

from flows import stack, ui  # noqa: E402
from tasks import links  # noqa: E402

VIEWPORT = {"width": 1280, "height": 800}


def register_form(prefect_ui: str) -> str:
    """The deployment llm-pipeline/default with the demo preset as its parameters; returns its id."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import llm_pipeline
    from flows.spec import load

    spec = load(str(DOCS.parent / "configs" / "default.yaml"), [])
    with temporary_settings(updates={PREFECT_API_URL: f"{prefect_ui}/api"}):
        deployment = llm_pipeline.to_deployment(
            "default",
            description="The demo preset (configs/default.yaml).",
            parameters={"spec": spec.model_dump(mode="json")},
        )
        return str(deployment.apply())


def shoot(home: Path, model: str, out: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    ports = stack.free_ports()
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    written = []
    with ui.serve(home, ports.prefect, ports.mlflow) as served:
        prefect_ui, mlflow_ui = served["prefect"].url, served["mlflow"].url
        deployment = register_form(prefect_ui)  # before Playwright's event loop: Prefect's sync calls turn async in one
        playwright = sync_playwright().start()
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport=VIEWPORT)
        expect.set_options(timeout=60_000)

        page.goto(f"{prefect_ui}/deployments/deployment/{deployment}/run")
        expect(page.get_by_text("Add item").first).to_be_visible()  # the spec's fields render after its schema arrives
        written.append(out / "prefect-run-form.png")
        page.screenshot(path=written[-1])

        page.goto(links.model(model).replace(links.LOCAL_MLFLOW_UI, mlflow_ui))
        expect(page.get_by_text("@ champion", exact=True)).to_be_visible()
        close = page.get_by_role("button", name="Close")  # the assistant panel takes a quarter of the page
        if close.count():
            close.first.click()
        written.append(out / "mlflow-registry.png")
        page.screenshot(path=written[-1])
        browser.close()
        playwright.stop()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".multistep"), help="where the pipeline ran (MULTISTEP_HOME)")
    parser.add_argument("--model", default="demo-base", help="the registered model to show")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    for path in shoot(args.home.resolve(), args.model, args.out):
        print(f"{path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
