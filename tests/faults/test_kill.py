"""kill -9 of `multistep run` mid-pretraining leaves nothing running: the embedded Prefect server dies with its parent."""

import os
import signal

import psutil


def test_sigkill_of_the_cli_leaves_no_process_of_the_run(tmp_path, corpus, tiny_overrides, start_cli, processes_of):
    home = tmp_path / "home"
    args = ["run", "configs/default.yaml", *sum((["--set", o] for o in tiny_overrides(corpus)), [])]
    cli = start_cli(args, home, MULTISTEP_FAULT_HOLD_AT_STEP="3")
    cli.wait_for("fault injection: holding after checkpoint-3")
    others = [p for p in processes_of(home) if p.pid != cli.proc.pid]
    assert [p.pid for p in others] == [c.pid for c in psutil.Process(cli.proc.pid).children()]  # its Prefect server

    os.kill(cli.proc.pid, signal.SIGKILL)  # the CLI alone: no clean-up runs, its child is reparented
    assert cli.proc.wait() == -signal.SIGKILL
    _, alive = psutil.wait_procs(others, timeout=30)  # returns as soon as they are gone
    assert alive == []
    assert processes_of(home) == []
