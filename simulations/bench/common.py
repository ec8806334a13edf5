"""What the benchmark scripts share: the Caltech run config, one job per process or in-process,
and saving figures without overwriting, so no benchmark imports another.

A benchmark loops over runs, each minutes to hours long: it writes its figures after every
finished run (:class:`FiguresFile`), so a later run that fails loses nothing measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def caltech_run_config(args: argparse.Namespace, **extra: object) -> dict[str, object]:
    """The run config every Caltech benchmark starts from (its command-line arguments)."""
    return {
        "dataset": "xlsa17",
        "data-dir": str(Path(args.data_dir).resolve()),
        "feature-file": args.feature_file,
        "seed": args.seed,
        "alpha": args.alpha,
        "output-dir": args.output_dir,
        **extra,
    }


def run_case(overrides: dict[str, object], owners: int = 1) -> dict:
    """One simulated run in a fresh process; returns its results.json."""
    args = [f"{k}={v}" for k, v in overrides.items()]
    cmd = [sys.executable, "-m", "simulations.run.simulate", *args, "--owners", str(owners)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") :])
    return json.loads((Path(summary["output_dir"]) / "results.json").read_text())


def _forget_owner_state() -> None:
    """Empty the owners' per-process caches (teacher and feature table) between runs."""
    from azsl_flower.owner import data, state

    state._STATE.clear()
    data._TABLE_CACHE.clear()


def job_device(device: str) -> str:
    """The device a job asked for ``device`` runs on, named as the run config accepts it:
    ``auto`` becomes ``cuda`` or ``cpu``; ``cpu``, ``cuda`` and ``cuda:N`` stay (an
    absent GPU is then the job's error, not a silent CPU run); anything else is an error
    naming the accepted names, before any job starts."""
    from azsl_flower.common.config import is_device_name
    from azsl_flower.common.models import resolve_device

    if not is_device_name(device):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    return str(resolve_device("auto")) if device == "auto" else device


def run_job(
    device: str, overrides: dict[str, Any], owners: int = 1
) -> tuple[dict[str, Any], float, float]:
    """One whole job, service and owners on ``device`` (any name the run config accepts,
    ``auto`` included), through the in-process grid, with a fresh teacher cache:
    (results.json's content, process seconds, CUDA start-up seconds)."""
    import torch

    from azsl_flower.client_app import app as client_app
    from azsl_flower.common.config import parse_run_config
    from simulations.run.inprocess import InProcessGrid
    from strategies.server_app import run_azsl

    device = job_device(device)
    _forget_owner_state()
    gpu = device.startswith("cuda")
    init_seconds = 0.0
    if gpu:  # CUDA context creation is paid once per process: timed apart from the job
        t = time.monotonic()
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
        init_seconds = time.monotonic() - t
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory(prefix=f"azsl-gpu-bench-{device.replace(':', '')}-") as cache:
        raw = {**overrides, "device": device, "cache-dir": cache}
        grid = InProcessGrid(client_app, owners, raw)
        t0 = time.monotonic()
        results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
        if gpu:
            torch.cuda.synchronize(device)
        process_seconds = time.monotonic() - t0
        results["owner_seconds"] = grid.owner_time()  # for the benchmarks, not results.json
    if torch.device(results["device"]).type != torch.device(device).type:
        raise RuntimeError(f"asked for {device} but the job ran on {results['device']}")
    return results, process_seconds, init_seconds


def save_figures(path: str | Path, figures: dict) -> Path:
    """Write figures as JSON; an existing file is kept and the new one goes beside it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out = out.with_name(f"{out.stem}-{time.strftime('%Y%m%d-%H%M%S')}{out.suffix}")
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return out


class FiguresFile:
    """One benchmark's figures, written after every finished run: the first write picks a
    free name beside an existing file (:func:`save_figures`, never overwriting another
    benchmark's), later writes replace only this benchmark's own file, whole (written
    beside it, then renamed), so a run that fails or is cut off later loses nothing."""

    def __init__(self, path: str | Path) -> None:
        self.asked = Path(path)
        self.path: Path | None = None  # chosen by the first write

    def write(self, figures: dict) -> Path:
        if self.path is None:
            self.path = save_figures(self.asked, figures)
            return self.path
        part = self.path.with_name(f".{self.path.name}.part")
        part.write_text(json.dumps(figures, indent=2) + "\n")
        part.replace(self.path)
        return self.path
