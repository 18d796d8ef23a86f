"""The Prefect server of `make ui` and `make stack` on a fresh home: seconds until it answers, with its database copied
from the migrated template (tasks/dbtemplate.py) against migrating it itself, alternating, in the same run.

    .venv/bin/python benchmarks/server_start.py [--repeat 3]

Each start gets a fresh home; "migrating" points MULTISTEP_CACHE at an empty folder, so there is no template to copy.
Prints each start and the ratio of the medians:  server_start: template/migrating X  (lower is better).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows import stack, ui  # noqa: E402
from tasks import dbtemplate  # noqa: E402


def start_s(home: Path, cache: str | None) -> float:
    """Seconds from ui.start to the server's first healthy answer."""
    if cache:
        os.environ["MULTISTEP_CACHE"] = cache
    else:
        os.environ.pop("MULTISTEP_CACHE", None)
    t0 = time.perf_counter()
    server = ui.start(home, "prefect", stack.free_ports().prefect)
    try:
        ui.wait_ready(server)
        return time.perf_counter() - t0
    finally:
        ui.stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not dbtemplate.path("prefect").exists():
        sys.exit(f"no template at {dbtemplate.path('prefect')}: run `multistep run` once on any home to make it")
    times = {"migrating": [], "template": []}
    for i in range(args.repeat):
        for name, cache in (("migrating", tempfile.mkdtemp()), ("template", None)):
            seconds = start_s(Path(tempfile.mkdtemp(prefix="multistep-server-")), cache)
            times[name].append(seconds)
            print(f"round {i + 1}: {name}: answering after {seconds:.1f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"server_start: template/migrating {medians['template'] / medians['migrating']:.2f} "
        f"({medians['template']:.1f} s vs {medians['migrating']:.1f} s, medians)"
    )


if __name__ == "__main__":
    main()
