"""Several owners with class-disjoint data on Caltech-101: student quality and wall time vs N.

    python -m simulations.bench.owners --data-dir ../shared/data/caltech101 --owners 1,2,5,10

Each N is one white-box, transductive simulated run (default steps, same seed) with
``partition=class-disjoint``: every class, seen and unseen, belongs to exactly one owner, and
each owner trains its own teacher on its own classes only. With N = 1 the single owner holds
all the data, so that run's teacher is the *union teacher*, the upper bound each N is
compared with (issue 4 target: student H >= 0.85 x union-teacher H at 5 owners; 10 owners'
wall time <= 2 x one owner's). Figures are printed and saved as JSON, never overwritten.

``--runner ray`` (default) runs each N in Flower's simulation runtime, owners in parallel
Ray workers on this machine's cores; ``--runner inprocess --device cuda`` runs service and
owners in one process (simulations/run/inprocess.py) on one device, owners one after another,
so its wall time is the *sum* of the owners' work: an upper bound on a deployment, where
each owner answers on its own machine at the same time. For that deployment the in-process
rows also give ``parallel_wall_seconds``: the wall time with, in each round trip, only the
slowest owner's answering time instead of all owners' (timed per owner by the grid).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from azsl_flower.common.config import DEFAULTS, TEACHER_KEYS
from simulations.bench.common import FiguresFile, caltech_run_config, job_device, run_case, run_job
from simulations.run.simulate import RUNNERS, parse_overrides

TARGET_H_RATIO = {5: 0.85}
TARGET_TIME_RATIO = {10: 2.0}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--feature-file", default="effnetlite0.mat")
    ap.add_argument("--owners", default="1,2,5,10", help="comma list; must start with 1")
    ap.add_argument("--partition", default="class-disjoint")
    ap.add_argument("--weighting", default="coverage", help="ensemble-weighting")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=50.0)
    ap.add_argument("--output-dir", default="outputs/benchmark-owners")
    ap.add_argument("--out", default="docs/benchmarks/owners.json")
    ap.add_argument("--runner", choices=RUNNERS, default="ray")
    ap.add_argument("--device", default="auto", help="with --runner inprocess: cpu, cuda...")
    ap.add_argument(
        "--one-owner-from",
        default="",
        help="a saved figures JSON whose 1-owner row (the union teacher) to reuse; its teacher "
        "settings must match; --owners then may skip 1",
    )
    ap.add_argument("overrides", nargs="*", help="extra run-config key=value, e.g. rounds=5")
    args = ap.parse_args()
    counts = [int(n) for n in args.owners.split(",") if n]
    base = caltech_run_config(
        args,
        scenario="whitebox",
        teacher="transductive",
        partition=args.partition,
        **{"ensemble-weighting": args.weighting},
        **parse_overrides(args.overrides),
    )
    if args.runner != "ray":
        try:  # a device name no job accepts fails before the first run, not after it
            job_device(args.device)
        except ValueError as exc:
            raise SystemExit(f"--device: {exc}") from None
    rows: list[dict] = []
    out = FiguresFile(args.out)

    def figures(complete: bool) -> dict:
        return {
            "union_teacher": rows[0]["ensemble_teacher"],
            "targets": {"h_ratio": TARGET_H_RATIO, "wall_ratio": TARGET_TIME_RATIO},
            "config": base,
            "runner": args.runner,
            "device": rows[0]["device"],
            "rows": rows,
            "complete": complete,  # false: written after a run, more were to come
        }

    if args.one_owner_from:
        rows.append(_one_owner_row(Path(args.one_owner_from), base, args.runner))
        counts = [n for n in counts if n != 1]
    elif not counts or counts[0] != 1:
        raise SystemExit("--owners must start with 1: that run's teacher is the union upper bound")
    for n in counts:
        t0 = time.monotonic()
        if args.runner == "ray":
            r = run_case(base, owners=n)
        else:
            r, _, _ = run_job(args.device, base, owners=n)
        rows.append(
            {
                "owners": n,
                "student": r["student"],
                "ensemble_teacher": r["teacher"],
                "per_owner_teacher": r["per_owner_teacher"],
                "round_trips": r["round_trips"],
                "messages": r["messages"],
                "wall_seconds": r["wall_seconds"],
                "process_seconds": time.monotonic() - t0,
                "phase_seconds": r["phase_seconds"],
                "bytes_sent": r["bytes_sent"],
                "bytes_received": r["bytes_received"],
                "verification_pass_rate": r["verification"]["pass_rate"],
                "orphaned_classes": r["federation"]["orphaned_classes"],
                "output_dir": r["output_dir"],
                "device": r["device"],
            }
        )
        if "owner_seconds" in r:  # in-process: owners timed one by one
            spent = r["owner_seconds"]
            rows[-1]["owner_seconds"] = spent
            rows[-1]["parallel_wall_seconds"] = (
                r["wall_seconds"] - spent["total"] + spent["critical"]
            )
        h, wall = r["student"]["h"], r["wall_seconds"]
        print(f"{n} owner(s): student H {h:.3f}, {wall:.0f} s", flush=True)
        print("ROW " + json.dumps(rows[-1]), flush=True)  # survives a run cut off later
        print(f"figures so far saved to {out.write(figures(complete=False))}", flush=True)
    union_h, one_wall = rows[0]["ensemble_teacher"]["h"], rows[0]["wall_seconds"]
    one_parallel = rows[0].get("parallel_wall_seconds")
    print(
        "| owners | student T1 / u / s / H | H / union-teacher H | wall s | wall / 1 owner "
        "| parallel-owner wall / 1 owner |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        r["h_ratio_to_union_teacher"] = r["student"]["h"] / union_h if union_h > 0 else None
        r["wall_ratio_to_one_owner"] = r["wall_seconds"] / one_wall
        if one_parallel and "parallel_wall_seconds" in r:
            r["parallel_wall_ratio_to_one_owner"] = r["parallel_wall_seconds"] / one_parallel
        s = r["student"]
        ratio = r["h_ratio_to_union_teacher"]
        par = r.get("parallel_wall_ratio_to_one_owner")
        print(
            f"| {r['owners']} | {' / '.join(f'{100 * s[k]:.1f}' for k in ('zsl', 'u', 's', 'h'))} "
            f"| {'n/a' if ratio is None else f'{ratio:.2f}'} | {r['wall_seconds']:.0f} "
            f"| {r['wall_ratio_to_one_owner']:.2f} | {'n/a' if par is None else f'{par:.2f}'} |"
        )
    print(f"figures saved to {out.write(figures(complete=True))}")


def _one_owner_row(path: Path, base: dict, runner: str) -> dict:
    """The 1-owner row of an earlier benchmark whose union teacher is this run's: same data
    and teacher settings. Other settings may differ (its student and wall time are then
    of other settings: the row records ``reused_from`` and what differed)."""
    try:
        saved = json.loads(path.read_text())
        row = saved["rows"][0]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise SystemExit(f"--one-owner-from {path}: not a benchmark_owners JSON ({exc})") from None
    config = saved.get("config", {})
    keys = (*TEACHER_KEYS, "split")  # the split picks the teacher's data too
    teacher = [k for k in keys if base.get(k, DEFAULTS[k]) != config.get(k, DEFAULTS[k])]
    if row.get("owners") != 1 or teacher or saved.get("runner") != runner:
        raise SystemExit(
            f"--one-owner-from {path}: its union teacher differs (keys {teacher}, runner "
            f"{saved.get('runner')}); rerun with --owners 1,..."
        )
    other = sorted(k for k in set(base) | set(config) if base.get(k) != config.get(k))
    return {**row, "reused_from": str(path), "reused_row_differs_in": other}


if __name__ == "__main__":
    main()
