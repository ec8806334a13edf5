"""Which model a run should deliver: every candidate's H beside the teacher's and both NCM
baselines', per scenario, on digits or Caltech-101 (``--split val`` to choose the
``deliver=auto`` rule without touching test classes).

    python -m simulations.bench.delivered --dataset digits \\
        --out docs/benchmarks/delivered-digits.json
    python -m simulations.bench.delivered --dataset caltech --split val --rounds 10 \\
        --steps-per-round 5 --samples-per-class 100 --modes blackbox-statistics
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from simulations.bench.common import FiguresFile, caltech_run_config, run_job

# mode name -> what the run asks (every mode also trains the candidates)
MODES: dict[str, dict[str, object]] = {
    "whitebox": {"scenario": "whitebox"},
    "blackbox": {"scenario": "blackbox"},
    "blackbox-statistics": {"scenario": "blackbox", "regulariser-answer": "statistics"},
    "strict-blackbox": {"scenario": "blackbox", "regulariser-answer": "none"},
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("digits", "caltech"), default="digits")
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--feature-file", default="effnetlite0.mat")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=50.0, help="Caltech only (digits: 10)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps-per-round", type=int, default=10)
    ap.add_argument("--samples-per-class", type=int, default=400)
    ap.add_argument("--student-epochs", type=int, default=30)
    ap.add_argument("--teacher-epochs", type=int, default=40)
    ap.add_argument("--gaussian-samples", type=int, default=100)
    ap.add_argument("--kd-temperature", type=float, default=4.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--output-dir", default="outputs/delivered")
    ap.add_argument("--out", default="docs/benchmarks/delivered.json")
    return ap


def _row(mode: str, results: dict[str, Any]) -> dict[str, Any]:
    """One run: the delivered model's name and every model's H (rounded, in %)."""
    models = {"student": results["student"], **results["other_models"]}
    return {
        "mode": mode,
        "delivered": results["delivered"]["name"],
        "h": {n: round(100 * m["h"], 1) for n, m in models.items()}
        | {"teacher": round(100 * results["teacher"]["h"], 1)},
        "round_trips": results["round_trips"],
    }


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    base: dict[str, object] = {
        "rounds": args.rounds,
        "steps-per-round": args.steps_per_round,
        "samples-per-class": args.samples_per_class,
        "student-epochs": args.student_epochs,
        "teacher-epochs": args.teacher_epochs,
        "split": args.split,
        "seed": args.seed,
        "tensorboard": False,
        "checkpoint-every": 0,
        "output-dir": args.output_dir,
        "student-loss": "ce+kd",
        "kd-temperature": args.kd_temperature,
        "deliver": "auto",
    }
    if args.dataset == "caltech":
        base = caltech_run_config(args, **base)
    out = FiguresFile(args.out)
    figures: dict[str, Any] = {
        "command": " ".join(["python -m simulations.bench.delivered", *sys.argv[1:]]),
        "rows": [],
    }
    for mode in args.modes.split(","):
        raw = {**base, **MODES[mode]}
        if raw.get("regulariser-answer") != "none":
            raw["student-gaussian-samples"] = args.gaussian_samples
        t = time.monotonic()
        results, _, _ = run_job(args.device, raw)
        figures["rows"].append(_row(mode, results) | {"seconds": round(time.monotonic() - t)})
        print(figures["rows"][-1], flush=True)
        print(f"wrote {out.write(figures)}", flush=True)


if __name__ == "__main__":
    main()
