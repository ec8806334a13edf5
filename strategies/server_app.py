"""AI service = Flower ServerApp: composes the run, runs its method, writes results.

Thin on purpose: configuration in :mod:`azsl_flower.common`, the protocol in
:mod:`strategies`, learning in :mod:`azsl_flower.service`.
"""

from __future__ import annotations

import shutil
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from azsl_flower.common.config import RunConfig
from azsl_flower.common.models import resolve_device, seed_everything
from azsl_flower.common.presets import resolve_run_config
from azsl_flower.common.semantics import load_class_side
from azsl_flower.service.results import format_table, write_run
from azsl_flower.service.tracking import LogEvents, open_observer
from azsl_flower.wire.channels import ServiceSecurity, provision_simulation_keys
from strategies.methods import Method, method_class

app = ServerApp()


def _security(grid: Grid, cfg: RunConfig, run_id: int) -> tuple[ServiceSecurity, Path | None]:
    """Keys from files (deployment) or generated for this run (simulation)."""
    if cfg.encryption == "none":
        log(WARNING, "encryption=none: payloads cross Flower in the clear (for measurements only)")
        return ServiceSecurity("none", run_id), None
    if cfg.service_key:
        return ServiceSecurity.from_files(
            cfg.encryption, run_id, cfg.service_key, cfg.owner_keys
        ), None
    folder = provision_simulation_keys(cfg.cache_dir, run_id, len(list(grid.get_node_ids())))
    owners = ",".join(str(p) for p in sorted(folder.glob("owner-*.pub")))
    sec = ServiceSecurity.from_files(cfg.encryption, run_id, str(folder / "service.key"), owners)
    return sec, folder


def run_azsl(
    grid: Grid, cfg: RunConfig, run_id: int = 0, strategy_kind: type[Method] | None = None
) -> tuple[dict[str, Any], str]:
    """Train and evaluate; return results.json's content and the run folder.

    ``strategy_kind``: the method's class (default: run-config ``method``,
    :func:`strategies.methods.method_class`); benchmarks pass a subclass that observes more
    of the run."""
    t0 = time.monotonic()
    kind = strategy_kind or method_class(cfg)  # a bad method fails before anything is sent
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    classes = load_class_side(cfg.dataset, cfg.data_dir, cfg.semantics)
    security, key_folder = _security(grid, cfg, run_id)
    observer = open_observer(cfg, forward=LogEvents())
    try:
        strategy = kind(cfg, classes, device, security)
        result = strategy.start(grid=grid, events=observer or LogEvents(), started=t0)
    except BaseException:
        if observer is not None:
            observer.discard()
        raise
    finally:
        if key_folder is not None:
            shutil.rmtree(key_folder, ignore_errors=True)
    results = result.to_json()
    staged = {"tb": observer.dir} if observer is not None and observer.staged else None
    folder = write_run(cfg.output_dir, results, result.models, move_in=staged)
    if observer is not None:
        tb = folder / "tb" if observer.staged else observer.dir
        log(INFO, "TensorBoard logs in %s: tensorboard --logdir %s", tb, tb)
    strategy.checkpoint.finish()  # the models are in the run folder now
    results["output_dir"] = str(folder)
    return results, str(folder)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, owners = resolve_run_config(dict(context.run_config))
    connected = len(list(grid.get_node_ids()))
    if owners is not None and owners != connected:
        log(
            WARNING,
            "experiment %r is meant for %d owner(s) but %d are connected; start it with "
            '--federation-config "num-supernodes=%d" to match',
            cfg.experiment,
            owners,
            connected,
            owners,
        )
    results, folder = run_azsl(grid, cfg, context.run_id)
    print(format_table(results), flush=True)
    log(INFO, "results written to %s/results.json", folder)
