"""Caltech-101 benchmark of the core AZSL loop (1 owner), run in Flower's simulation runtime.

Each case runs in its own process (`python -m simulations.run.simulate ...`) with the default
steps; figures are read back from each run's results.json and saved as JSON:

    python -m simulations.bench.caltech --data-dir ../shared/data/caltech101 \
        --out docs/benchmarks/caltech101.json

Targets (issue 2): white-box student H >= 0.90 x teacher H; black-box >= 0.50 x teacher H;
inductive white-box reported beside the transductive figures. ``--curve 10,20`` adds
white-box runs with fewer generator rounds, for H against round trips.
"""

from __future__ import annotations

import argparse
import time

from simulations.bench.common import FiguresFile, caltech_run_config, run_case

CASES = {
    "whitebox-transductive": {"scenario": "whitebox", "teacher": "transductive"},
    "blackbox-transductive": {"scenario": "blackbox", "teacher": "transductive"},
    "whitebox-inductive": {"scenario": "whitebox", "teacher": "inductive"},
    "weights-transductive": {"scenario": "weights", "teacher": "transductive"},
}
TARGETS = {"whitebox-transductive": 0.90, "blackbox-transductive": 0.50}


def row(name: str, r: dict) -> dict:
    t, s = r["teacher"], r["student"]
    return {
        "case": name,
        "teacher": t,
        "student": s,
        "h_ratio": s["h"] / t["h"] if t["h"] > 0 else None,
        "target_ratio": TARGETS.get(name),
        "round_trips": r["round_trips"],
        "wall_seconds": r["wall_seconds"],
        "phase_seconds": r["phase_seconds"],
        "bytes_sent": r["bytes_sent"],
        "bytes_received": r["bytes_received"],
        "verification_pass_rate": r["verification"]["pass_rate"],
        "output_dir": r["output_dir"],
        "config": r["config"],
    }


def _four(m: dict) -> str:
    return " / ".join(f"{100 * m[k]:.1f}" for k in ("zsl", "u", "s", "h"))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | round trips | teacher T1 / u / s / H | student T1 / u / s / H | H ratio "
        "| wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r["h_ratio"] is None else f"{r['h_ratio']:.2f}"
        if r["target_ratio"]:
            ratio += f" (target ≥ {r['target_ratio']:.2f})"
        lines.append(
            f"| {r['case']} | {r['round_trips']} | {_four(r['teacher'])} | {_four(r['student'])} "
            f"| {ratio} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--feature-file", default="effnetlite0.mat")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list of {list(CASES)}")
    ap.add_argument(
        "--curve", default="", help="extra white-box runs with these rounds, e.g. 10,20"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--alpha", type=float, default=50.0, help="regulariser weight (Caltech setting)"
    )
    ap.add_argument("--output-dir", default="outputs/benchmark-caltech101")
    ap.add_argument("--out", default="docs/benchmarks/caltech101.json")
    args = ap.parse_args()
    base = caltech_run_config(args)
    rows: list[dict] = []
    out = FiguresFile(args.out)  # written after every run: a later failure loses none
    cases = [c for c in args.cases.split(",") if c]
    for name in cases:
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; choose from {list(CASES)}")
    for name in cases:
        t0 = time.monotonic()
        rows.append(row(name, run_case({**base, **CASES[name]})))
        out.write({"rows": rows})
        print(f"{name}: H ratio {rows[-1]['h_ratio']}, {time.monotonic() - t0:.0f} s", flush=True)
    for rounds in [int(r) for r in args.curve.split(",") if r]:
        rows.append(row(f"whitebox-transductive@{rounds}", run_case({**base, "rounds": rounds})))
        out.write({"rows": rows})
        print(f"whitebox@{rounds}: H ratio {rows[-1]['h_ratio']}", flush=True)
    print(markdown(rows))
    print(f"figures saved to {out.write({'rows': rows})}")


if __name__ == "__main__":
    main()
