"""One real `flwr run .` simulation with 2 owners: Flower's CLI, managed SuperLink, Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from simulations.local_superlink import free_port, processes_of, stop

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_run_simulation_two_owners(tmp_path):
    flwr = Path(sys.executable).parent / "flwr"
    home = tmp_path / "flwr-home"  # outside the app folder: Flower bundles the app folder
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        PATH=f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        AZSL_CACHE_DIR=str(tmp_path / "cache"),
    )
    out = tmp_path / "out"
    run_config = (
        "rounds=2 steps-per-round=2 student-epochs=2 samples-per-class=30 teacher-epochs=3 "
        f"output-dir='{out}'"
    )
    try:
        proc = subprocess.run(
            [str(flwr), "run", str(ROOT), "--stream", "--run-config", run_config],
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        stop(str(home))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert not processes_of(str(home)), "local SuperLink still running"
    runs = list(out.glob("*/results.json"))
    assert len(runs) == 1, log[-4000:]
    results = json.loads(runs[0].read_text())
    assert results["num_owners"] == 2
    assert results["round_trips"] == 2 + 3
    assert "teacher (upper bound)" in log and "student" in log
