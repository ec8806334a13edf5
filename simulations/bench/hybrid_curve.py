"""H against round trips: AZSL alone vs AZSL warm-started from DFZSL (issue 14, the hybrid).

Each arm is one in-process run (Caltech-101, inductive teacher by default). At chosen
generator rounds the run is scored as if it stopped there: verification, student and
classifier C, evaluation (the same code as the end of a run), with the generator's and the
process's random state put back afterwards so the run goes on as it would have. A point's
``round_trips`` is what a run stopped there would have used: round trips so far, less
earlier points' scoring, plus its own two (verification, evaluation).

``--split val`` keeps each point's calibration curve; ``--split test`` scores every point at
the calibration its arm's val run chose (best H at the last point, seed-averaged), never one
chosen on test classes. Rows accumulate in ``--out``; ``--plot`` draws the PNG from it.

    python -m simulations.bench.hybrid_curve --split val --seeds 0
    python -m simulations.bench.hybrid_curve --split test --seeds 0
    python -m simulations.bench.hybrid_curve --plot
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import RunConfig, parse_run_config
from azsl_flower.common.metrics import zsl_gzsl
from azsl_flower.service.generator import GeneratorTrainer
from azsl_flower.service.results import RunResult
from azsl_flower.service.tracking import OwnerTotals, RunEvents
from simulations.run.inprocess import InProcessGrid
from strategies.azsl import AZSLStrategy
from strategies.methods import method_class
from strategies.server_app import run_azsl
from strategies.sources import FeedbackSource

__all__ = ["ARMS", "CurveStrategy", "plot", "run_arm"]

DEFAULT_OUT = "docs/benchmarks/hybrid-caltech.json"
DEFAULT_PNG = "docs/benchmarks/hybrid-caltech.png"
ARMS: dict[str, dict[str, Any]] = {
    "azsl": {"warm-start": "none"},
    "hybrid": {"warm-start": "dfzsl"},
}
FIXED = {
    "dataset": "xlsa17",
    "feature-file": "effnetlite0.mat",
    "alpha": 50.0,  # the Caltech preset (configs/dataset/caltech101.yaml)
    "teacher": "inductive",
    "tensorboard": False,
}


class _Points(RunEvents):
    """Forwards a run's events and scores the run at the chosen rounds."""

    def __init__(self, strategy: CurveStrategy, forward: RunEvents) -> None:
        self.strategy, self.forward = strategy, forward

    def round_done(self, r: int, total: int, stats: dict[str, float], owners: OwnerTotals) -> None:
        self.forward.round_done(r, total, stats, owners)
        if r in self.strategy.eval_at and r < total:  # the last point is the run's own
            self.strategy.score(r)

    def epoch_done(self, phase: str, epoch: int, total: int, loss: float) -> None:
        self.forward.epoch_done(phase, epoch, total, loss)

    def finished(self, result: RunResult) -> None:
        self.forward.finished(result)


class CurveStrategy(AZSLStrategy):
    """AZSLStrategy that also scores its generator at the rounds in ``eval_at`` (mixed in
    before the arm's method: AZSL's or the hybrid's)."""

    eval_at: frozenset[int] = frozenset()

    def start(
        self, *, grid: Grid, events: RunEvents | None = None, started: float | None = None
    ) -> RunResult:
        self._grid, self.points, self.scoring_trips = grid, [], 0
        result = super().start(grid=grid, events=events, started=started)
        last = {"round": self.cfg.rounds, **result.student, "final": True}
        last["round_trips"] = result.traffic.round_trips - self.scoring_trips
        last["curve"] = result.calibration.get("curve", [])
        self.points.append(last)
        return result

    def _train_generator(
        self, source: FeedbackSource, trainer: GeneratorTrainer, events: RunEvents
    ) -> tuple[list[dict[str, float]], int | None]:
        self._source_now, self._trainer = source, trainer
        if 0 in self.eval_at and self.cfg.rounds > 0:
            self.score(0)
        return super()._train_generator(source, trainer, _Points(self, events))

    def score(self, r: int) -> None:
        """Verification, student and C, evaluation, as if the run ended after round r."""
        trainer, traffic = self._trainer, self.transport.traffic
        rng, torch_rng, np_rng = (
            trainer.rng.get_state(),
            torch.get_rng_state(),
            np.random.get_state(),
        )
        before = traffic.round_trips
        trainable = self.roster.declarations().trainable
        verified = self.aggregate_verify(self._source_now.verify(trainer, trainable), trainable)
        models = self._train_models(trainer, verified, self.roster.declarations(), RunEvents())
        declared = self.roster.declarations()
        request = self.configure_evaluate(models, declared.unseen)
        evaluation = self.aggregate_evaluate(self._grid_ask(request), list(models))
        main = next(iter(models))
        spent = traffic.round_trips - before
        point = {"round": r, **zsl_gzsl(evaluation.models[main], self.cfg.teacher.zsl_space)}
        point["round_trips"] = before - self.scoring_trips + spent
        point["curve"] = evaluation.curves[main]
        self.scoring_trips += spent
        self.points.append(point)
        trainer.rng.set_state(rng)
        torch.set_rng_state(torch_rng)
        np.random.set_state(np_rng)

    def _grid_ask(self, request: Any) -> Any:
        return self.delivery.ask(self._grid, request)


def run_arm(
    data_dir: str, arm: str, split: str, seed: int, eval_at: list[int], extra: dict[str, Any]
) -> dict[str, Any]:
    """One curve: the arm's run with its points."""
    raw = {**FIXED, **ARMS[arm], **extra, "data-dir": data_dir, "split": split, "seed": seed}
    with tempfile.TemporaryDirectory() as tmp:
        raw["output-dir"] = str(Path(tmp) / "out")
        grid = InProcessGrid(client_app, 1, raw)
        cfg: RunConfig = parse_run_config(raw)
        holder: dict[str, CurveStrategy] = {}

        class _Strategy(CurveStrategy, method_class(cfg)):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.eval_at = frozenset(eval_at)
                holder["s"] = self

        t = time.monotonic()
        results, _ = run_azsl(grid, cfg, run_id=grid.run_id, strategy_kind=_Strategy)
    return {
        "arm": arm,
        "split": split,
        "seed": seed,
        "overrides": {**ARMS[arm], **extra},
        "points": holder["s"].points,
        "round_trips": results["round_trips"],
        "warm_start": results.get("method", {}).get("warm_start"),
        "calibration": results["calibration"].get("applied"),
        "wall_seconds": time.monotonic() - t,
    }


def chosen_calibration(doc: dict[str, Any], arm: str) -> float | None:
    """The calibration with the best seed-averaged H at the last point of the arm's val runs."""
    curves = [
        r["points"][-1]["curve"]
        for r in doc["runs"]
        if r["arm"] == arm and r["split"] == "val" and r["points"][-1].get("curve")
    ]
    if not curves:
        return None
    values = [p["calibration"] for p in curves[0]]
    mean_h = [np.mean([c[i]["h"] for c in curves]) for i in range(len(values))]
    return float(values[int(np.argmax(mean_h))])


def _mean_curve(
    runs: list[dict[str, Any]], value: Any
) -> tuple[list[float], list[float], list[float]]:
    rounds = sorted({p["round"] for r in runs for p in r["points"]})
    xs, ys, sd = [], [], []
    for rd in rounds:
        pts = [p for r in runs for p in r["points"] if p["round"] == rd]
        xs.append(float(np.mean([p["round_trips"] for p in pts])))
        vals = [100 * value(p) for p in pts]
        ys.append(float(np.mean(vals)))
        sd.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
    return xs, ys, sd


def plot(doc: dict[str, Any], out: Path) -> Path:
    """H (and ZSL T1) against round trips, one line per arm, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in ("val", "test") if any(r["split"] == s for r in doc["runs"])]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for arm, style in (("azsl", "o-"), ("hybrid", "s-")):
            runs = [r for r in doc["runs"] if r["arm"] == arm and r["split"] == split]
            if not runs:
                continue
            label = "AZSL alone" if arm == "azsl" else "warm-started from DFZSL"
            h = best_h if split == "val" else (lambda p: p["h"])
            xs, ys, sd = _mean_curve(runs, h)
            ax.errorbar(xs, ys, yerr=sd, fmt=style, capsize=3, label=f"{label}: H")
            xs, ys, _ = _mean_curve(runs, lambda p: p["zsl"])
            ax.plot(xs, ys, style.replace("-", ":"), alpha=0.6, label=f"{label}: ZSL T1")
        seeds = sorted({r["seed"] for r in doc["runs"] if r["split"] == split})
        cal = "best calibration per point" if split == "val" else "calibration chosen on val"
        title = f"Caltech-101 inductive, {split} classes\n{len(seeds)} seed(s), {cal}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round trips (set-up to evaluation)")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def best_h(point: dict[str, Any]) -> float:
    """A val point's H at its best calibration (its own H when it has no curve)."""
    return max([p["h"] for p in point.get("curve") or []] + [point["h"]])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--arms", default="azsl,hybrid")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--eval-at", default="0,2,5,10,20", help="rounds scored besides the last")
    ap.add_argument("--set", default="", help="extra run-config, k=v,k=v (both arms)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--png", default=DEFAULT_PNG)
    ap.add_argument("--plot", action="store_true", help="only draw the PNG from --out")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    command = " ".join(["python -m simulations.bench.hybrid_curve", *(argv or sys.argv[1:])])
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    if not args.plot:
        extra = dict(kv.split("=", 1) for kv in args.set.split(",") if kv)
        eval_at = [int(r) for r in args.eval_at.split(",") if r]
        data_dir = str(Path(args.data_dir).resolve())
        for arm in args.arms.split(","):
            arm_extra = dict(extra)
            if args.split == "test":
                cal = chosen_calibration(doc, arm)
                if cal is None:
                    raise SystemExit(f"run arm {arm} on --split val first: it chooses calibration")
                arm_extra["calibration"] = cal
            for seed in [int(s) for s in args.seeds.split(",")]:
                row = run_arm(data_dir, arm, args.split, seed, eval_at, arm_extra)
                row["command"] = command
                key = (arm, args.split, seed)
                doc["runs"] = [r for r in doc["runs"] if (r["arm"], r["split"], r["seed"]) != key]
                doc["runs"].append(row)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
                shown = [
                    f"{p['round_trips']}:{100 * (best_h(p) if args.split == 'val' else p['h']):.1f}"
                    for p in row["points"]
                ]
                print(
                    f"{arm} {args.split} seed {seed}: round trips:H {' '.join(shown)}", flush=True
                )
    if doc["runs"]:
        doc["plot_command"] = (
            f"python -m simulations.bench.hybrid_curve --plot --out {out} --png {args.png}"
        )
        out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        print(f"wrote {plot(doc, Path(args.png))}")


if __name__ == "__main__":
    main()
