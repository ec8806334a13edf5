"""Run one AZSL job in Flower's simulation runtime from Python (same code as `flwr run .`).

    python -m simulations.run.simulate dataset=xlsa17 data-dir=../shared/data/caltech101 \
        feature-file=effnetlite0.mat scenario=blackbox --owners 1
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from azsl_flower.common.config import RunConfig

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


RUNNERS = ("ray", "inprocess")


def run(
    overrides: dict[str, Any] | RunConfig, owners: int | None = None, runner: str | None = None
) -> dict[str, Any]:
    """Simulate ``owners`` SuperNodes + the ServerApp; return results.json's content.

    ``overrides``: run-config keys (``experiment`` composes a preset, as the ServerApp
    does) or a RunConfig already composed (the Hydra launcher). ``owners`` defaults to
    the preset's, else 1. ``runner`` (default ``$AZSL_RUNNER``, else ``ray``): ``ray`` is
    Flower's simulation runtime, owners in Ray workers; ``inprocess`` serves the same
    ClientApp and ServerApp logic in this one process (simulations/run/inprocess.py), owners
    one after another: less overhead on a small machine, and what a sweep there wants.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from azsl_flower.client_app import app as client_app
    from azsl_flower.common.presets import resolve_run_config
    from azsl_flower.service.results import format_table
    from strategies.server_app import run_azsl

    if isinstance(overrides, RunConfig):
        cfg = overrides
    else:  # fail before starting Ray on a bad option
        cfg, preset_owners = resolve_run_config(overrides)
        owners = owners or preset_owners
    owners = owners or 1
    runner = runner or os.environ.get("AZSL_RUNNER", "ray")
    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r} (AZSL_RUNNER); choose one of {RUNNERS}")
    if runner == "inprocess":
        from simulations.run.inprocess import InProcessGrid

        grid = InProcessGrid(client_app, owners, cfg.as_dict())
        results, _ = run_azsl(grid, cfg, run_id=grid.run_id)
        print(format_table(results), flush=True)
        return results
    # run_simulation gives ClientApps no run config: tell the simulated owners (Ray workers
    # inherit the environment) which cipher suite and key folder this run uses.
    os.environ["AZSL_ENCRYPTION"] = cfg.encryption
    if cfg.cache_dir:
        os.environ["AZSL_CACHE_DIR"] = cfg.cache_dir
    box: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        results, _ = run_azsl(grid, cfg, context.run_id)
        print(format_table(results), flush=True)
        box.update(results)

    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}
    run_simulation(server, client_app, num_supernodes=owners, backend_config=backend)
    if not box:
        raise RuntimeError("the simulated run produced no results (see the log above)")
    return box


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("overrides", nargs="*", help="run-config key=value pairs")
    ap.add_argument("--owners", type=int, default=None, help="default: the preset's, else 1")
    ap.add_argument("--runner", choices=RUNNERS, default=None, help="default: $AZSL_RUNNER or ray")
    args = ap.parse_args()
    res = run(parse_overrides(args.overrides), args.owners, args.runner)
    print(
        json.dumps(
            {k: res[k] for k in ("teacher", "student", "round_trips", "output_dir")}, indent=1
        )
    )


if __name__ == "__main__":
    main()
