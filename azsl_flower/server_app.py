"""AI service = Flower ServerApp: composes the run and hands it to AZSLStrategy."""

from __future__ import annotations

import shutil
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from azsl_flower.config import RunConfig
from azsl_flower.experiments import resolve_run_config
from azsl_flower.models import resolve_device, seed_everything
from azsl_flower.results import format_table, write_run
from azsl_flower.secure import ServiceSecurity, provision_simulation_keys
from azsl_flower.semantics import load_class_side
from azsl_flower.tracking import open_observer
from strategies.azsl import AZSLStrategy

app = ServerApp()


def _progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
    if phase != "generator" and step % 10 and step != total:  # student epochs: every 10th
        return
    shown = " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in stats.items()
        if k != "round"
    )
    log(INFO, "[%s %d/%d] %s", phase, step, total, shown)


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


def run_azsl(grid: Grid, cfg: RunConfig, run_id: int = 0) -> tuple[dict[str, Any], str]:
    """Train and evaluate; return results.json's content and the run folder."""
    t0 = time.monotonic()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    classes = load_class_side(cfg.dataset, cfg.data_dir, cfg.semantics)
    security, key_folder = _security(grid, cfg, run_id)
    observer = None
    try:
        strategy = AZSLStrategy(cfg, classes, device, security)
        observer = open_observer(cfg, strategy, forward=_progress)
        out = strategy.start(grid, progress=observer or _progress)
        if observer is not None:
            observer.finish(out)
    except BaseException:
        if observer is not None:
            observer.discard()
        raise
    finally:
        if key_folder is not None:
            shutil.rmtree(key_folder, ignore_errors=True)
    crypto = security.stats
    results: dict[str, Any] = {
        "dataset": cfg.dataset if cfg.dataset == "digits" else cfg.data_dir,
        "scenario": cfg.scenario,
        "teacher_setting": cfg.teacher,
        "regulariser": cfg.regulariser,
        "semantics": cfg.semantics,
        "num_owners": len(strategy.node_ids),
        "seed": cfg.seed,
        "device": str(device),
        "teacher": out.teacher,
        "per_owner_teacher": out.per_owner_teacher,
        "student": out.student,
        "other_models": out.extra_models,
        "calibration": out.calibration,
        "wall_seconds": time.monotonic() - t0,
        "phase_seconds": out.phases,
        "rounds": out.traffic.rounds,
        "messages": out.traffic.messages,
        "bytes_sent": out.traffic.bytes_sent,
        "bytes_received": out.traffic.bytes_received,
        "bytes_per_owner": {
            str(n): {"sent": b, "received": out.traffic.received_by_node.get(n, 0)}
            for n, b in out.traffic.sent_by_node.items()
        },
        "encryption": {
            "suite": security.suite,
            "plaintext_bytes": crypto.plaintext_bytes,
            "ciphertext_bytes": crypto.ciphertext_bytes,
            "seconds": crypto.seconds,
        },
        "rejected_messages": out.traffic.rejected,
        "rejections": out.traffic.rejections,
        "retries": out.traffic.retries,
        "faults_injected": strategy.faults.injected if strategy.faults else {},
        "verification": out.verification,
        "federation": out.federation,
        "history": out.history,
        "resumed_from_round": strategy.resumed_from,
        "config": cfg.as_dict(),
    }
    staged = {"tb": observer.dir} if observer is not None and observer.staged else None
    folder = write_run(
        cfg.output_dir,
        results,
        {"generator": out.generator, "student": out.student_model},
        move_in=staged,
    )
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
    table = format_table(results)
    print(table, flush=True)
    log(INFO, "results written to %s/results.json", folder)
