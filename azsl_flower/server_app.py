"""AI service = Flower ServerApp: composes the run and hands it to AZSLStrategy."""

from __future__ import annotations

import time
from logging import INFO
from typing import Any

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from azsl_flower.config import RunConfig, parse_run_config
from azsl_flower.models import resolve_device, seed_everything
from azsl_flower.results import format_table, write_run
from azsl_flower.semantics import load_class_side
from strategies.azsl import AZSLStrategy

app = ServerApp()


def _progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
    shown = " ".join(f"{k}={v:.3f}" for k, v in stats.items() if k != "round")
    log(INFO, "[%s %d/%d] %s", phase, step, total, shown)


def run_azsl(grid: Grid, cfg: RunConfig) -> tuple[dict[str, Any], str]:
    """Train and evaluate; return results.json's content and the run folder."""
    t0 = time.monotonic()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    classes = load_class_side(cfg.dataset, cfg.data_dir, cfg.semantics)
    strategy = AZSLStrategy(cfg, classes, device)
    out = strategy.start(grid, progress=_progress)
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
        "student": out.student,
        "other_models": out.extra_models,
        "wall_seconds": time.monotonic() - t0,
        "phase_seconds": out.phases,
        "rounds": out.traffic.rounds,
        "messages": out.traffic.messages,
        "bytes_sent": out.traffic.bytes_sent,
        "bytes_received": out.traffic.bytes_received,
        "verification": out.verification,
        "federation": out.federation,
        "history": out.history,
        "config": cfg.as_dict(),
    }
    folder = write_run(
        cfg.output_dir, results, {"generator": out.generator, "student": out.student_model}
    )
    results["output_dir"] = str(folder)
    return results, str(folder)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(dict(context.run_config))
    results, folder = run_azsl(grid, cfg)
    table = format_table(results)
    print(table, flush=True)
    log(INFO, "results written to %s/results.json", folder)
