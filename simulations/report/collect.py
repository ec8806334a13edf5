"""Collect many runs' results.json into one Markdown and one CSV table (mean ± std over seeds).

    python -m simulations.report.collect outputs/multirun/20260101-120000 --out docs/results/table3
    python -m simulations.report.collect 'outputs/**/results.json' --group-by scenario,teacher
    python -m simulations.report.collect outputs/multirun/<sweep with split=val> --select student.h

Arguments are results.json files, folders (searched recursively) or glob patterns. Runs
are grouped by the settings that differ between them, apart from the seed and keys that
do not change what a run computes (paths, device, time-outs, keys); each group is one
row with the number of seeds and mean ± sample std of every metric.

``--select METRIC`` names the group with the best mean METRIC: the way to choose a
setting (alpha, noise-dim...) for the test runs. It only accepts runs made with
``split=val`` (xlsa17's validation classes), so nothing is ever chosen on test classes.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Run-config keys added after runs were filed, with the value those runs used.
LATE_KEYS: dict[str, Any] = {"calibration": 0.0, "method": "auto"}
# Keys that do not define a setting: what a run is repeated over (seed) or how it ran.
NOT_SETTINGS = frozenset(
    {
        "seed",
        "calibration-grid",  # only what a split=val run also reports (its curve)
        "output-dir",
        "cache-dir",
        "checkpoint-dir",
        "checkpoint-every",
        "resume",
        "device",
        "poll-interval",
        "timeout",
        "max-retries",
        "service-key",
        "owner-keys",
        "tensorboard",
        "tensorboard-dir",
    }
)
FALLBACK_GROUP = ("dataset", "scenario", "teacher")  # shown when no setting differs


@dataclass(frozen=True)
class Metric:
    path: tuple[str, ...]  # where it is in results.json
    header: str
    scale: float = 1.0  # fractions are shown in percent
    digits: int = 1


METRICS: dict[str, Metric] = {
    "student.zsl": Metric(("student", "zsl"), "T1", 100),
    "student.u": Metric(("student", "u"), "u", 100),
    "student.s": Metric(("student", "s"), "s", 100),
    "student.h": Metric(("student", "h"), "H", 100),
    "teacher.zsl": Metric(("teacher", "zsl"), "teacher T1", 100),
    "teacher.u": Metric(("teacher", "u"), "teacher u", 100),
    "teacher.s": Metric(("teacher", "s"), "teacher s", 100),
    "teacher.h": Metric(("teacher", "h"), "teacher H", 100),
    "verification.pass_rate": Metric(("verification", "pass_rate"), "verified %", 100),
    "round_trips": Metric(("round_trips",), "round trips", 1, 0),
    "bytes_sent": Metric(("bytes_sent",), "sent MB", 1e-6),
    "wall_seconds": Metric(("wall_seconds",), "wall s", 1, 0),
}
DEFAULT_METRICS = (
    "student.zsl",
    "student.u",
    "student.s",
    "student.h",
    "teacher.h",
    "verification.pass_rate",
    "wall_seconds",
)


class CollectError(ValueError):
    """No runs found, an unreadable results.json, or an unknown metric / key."""


@dataclass
class Run:
    path: Path
    settings: dict[str, Any]
    seed: Any
    results: dict[str, Any]


def find_results(items: Iterable[str]) -> list[Path]:
    """results.json files named, under named folders, or matched by glob patterns."""
    found: set[Path] = set()
    for item in items:
        matches = [Path(p) for p in glob.glob(item, recursive=True)] or [Path(item)]
        for m in matches:
            if m.is_file():
                found.add(m.resolve())
            elif m.is_dir():
                found |= {p.resolve() for p in m.rglob("results.json")}
    runs = sorted(p for p in found if not any(s.startswith(".incomplete") for s in p.parts))
    if not runs:
        raise CollectError(f"no results.json found in {list(items)}")
    return runs


def load_run(path: Path) -> Run:
    try:
        results = json.loads(path.read_text())
        config = dict(results["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CollectError(f"{path}: not a results.json of this app ({exc!r})") from None
    settings = {k: v for k, v in config.items() if k not in NOT_SETTINGS}
    for key, default in LATE_KEYS.items():  # runs made before the key existed used its default
        settings.setdefault(key, default)
    settings["owners"] = results.get("num_owners", 1)
    if "rounds" in results and "round_trips" not in results:  # filed before the rename
        results["round_trips"] = results.pop("rounds")
    return Run(path, settings, config.get("seed", results.get("seed")), results)


def _value(results: dict[str, Any], metric: Metric) -> float | None:
    node: Any = results
    for part in metric.path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) * metric.scale if isinstance(node, int | float) else None


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Settings whose value is not the same in every run (a key a run lacks counts)."""
    keys = sorted({k for r in runs for k in r.settings})
    return [k for k in keys if len({json.dumps(r.settings.get(k)) for r in runs}) > 1]


@dataclass
class Row:
    group: dict[str, Any]
    seeds: list[Any]
    stats: dict[str, tuple[float, float | None, int]]  # metric -> (mean, std, n)


def summarise(
    runs: Sequence[Run], group_by: Sequence[str] | None = None, metrics: Sequence[str] = ()
) -> tuple[list[str], list[Row]]:
    """Group runs and compute mean ± sample std (None for a single run) per metric."""
    metrics = list(metrics or DEFAULT_METRICS)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CollectError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    keys = list(group_by) if group_by else varying_keys(runs)
    if not keys:
        keys = [k for k in FALLBACK_GROUP if k in runs[0].settings]
    missing = [k for k in keys if all(k not in r.settings for r in runs)]
    if missing:
        raise CollectError(f"no run has setting(s) {missing}; settings: {sorted(runs[0].settings)}")
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(json.dumps([r.settings.get(k) for k in keys]), []).append(r)
    rows = []
    for members in groups.values():
        seeds = [r.seed for r in members]
        dup = sorted({str(s) for s in seeds if seeds.count(s) > 1})
        if dup:
            where = ", ".join(str(r.path.parent) for r in members if str(r.seed) in dup)
            print(f"warning: seed(s) {dup} appear twice in one group ({where})", file=sys.stderr)
        stats: dict[str, tuple[float, float | None, int]] = {}
        for name in metrics:
            vals = [v for r in members if (v := _value(r.results, METRICS[name])) is not None]
            if vals:
                std = statistics.stdev(vals) if len(vals) > 1 else None
                stats[name] = (statistics.fmean(vals), std, len(vals))
        rows.append(Row({k: members[0].settings.get(k) for k in keys}, seeds, stats))
    rows.sort(key=lambda row: [_order(v) for v in row.group.values()])
    return keys, rows


def _order(value: Any) -> tuple[int, float, str]:
    """Numbers in numeric order (20 before 100), then everything else by its text."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _fmt(stat: tuple[float, float | None, int] | None, digits: int) -> str:
    if stat is None:
        return "–"
    mean, std, _ = stat
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(keys: Sequence[str], rows: Sequence[Row], metrics: Sequence[str] = ()) -> str:
    metrics = list(metrics or DEFAULT_METRICS)
    head = [*keys, "seeds", *(METRICS[m].header for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row.group[k]) if row.group[k] != "" else "–" for k in keys]
        cells.append(str(len(row.seeds)))
        cells += [_fmt(row.stats.get(m), METRICS[m].digits) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    note = "mean ± sample std over seeds; T1, u, s, H and verified in %"
    return "\n".join(lines) + f"\n\n{note}\n"


def write_csv(
    path: Path, keys: Sequence[str], rows: Sequence[Row], metrics: Sequence[str] = ()
) -> None:
    metrics = list(metrics or DEFAULT_METRICS)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*keys, "n", "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])
        for row in rows:
            cells: list[Any] = [row.group[k] for k in keys]
            cells += [len(row.seeds), ";".join(str(s) for s in row.seeds)]
            for m in metrics:
                mean, std, _ = row.stats.get(m, (None, None, 0))
                cells += ["" if mean is None else mean, "" if std is None else std]
            w.writerow(cells)


def select(runs: Sequence[Run], rows: Sequence[Row], metric: str) -> tuple[Row, str]:
    """The row with the best mean ``metric`` and a line saying so; validation runs only."""
    if metric not in METRICS:
        raise CollectError(f"unknown metric {metric!r} for --select; choose from {list(METRICS)}")
    on_test = [str(r.path) for r in runs if r.settings.get("split", "test") != "val"]
    if on_test:
        raise CollectError(
            "--select chooses settings by their scores, so it only takes runs on validation "
            f"classes (run-config split=val); these ran on test classes: {on_test[:3]}"
        )
    scored = [row for row in rows if metric in row.stats]
    if not scored:
        raise CollectError(f"no run has a value for {metric}")
    ranked = sorted(scored, key=lambda row: row.stats[metric][0], reverse=True)
    best, m = ranked[0], METRICS[metric]
    line = (
        f"Selected on validation classes by {m.header}: **{_setting(best)}** "
        f"({_fmt(best.stats[metric], m.digits)} over {len(best.seeds)} seed(s))"
    )
    if len(ranked) > 1:  # a pick is only as good as its margin over the runner-up
        second = ranked[1]
        margin = best.stats[metric][0] - second.stats[metric][0]
        stds = [s for s in (best.stats[metric][1], second.stats[metric][1]) if s is not None]
        line += (
            f"; next {_setting(second)} ({_fmt(second.stats[metric], m.digits)}), "
            f"{margin:.{m.digits}f} behind"
        )
        if stds:
            within = margin <= max(stds)
            line += ", within" if within else ", more than"
            line += " the seed-to-seed std"
    return best, line


def _setting(row: Row) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.group.items()) or "(one group)"


def collect(
    items: Sequence[str],
    out: Path,
    group_by: Sequence[str] | None = None,
    metrics: Sequence[str] = (),
    select_by: str | None = None,
) -> tuple[Path, Path, str]:
    """Write ``out``.md and ``out``.csv; return both paths and the Markdown."""
    runs = [load_run(p) for p in find_results(items)]
    keys, rows = summarise(runs, group_by, metrics)
    md = to_markdown(keys, rows, metrics)
    if select_by:
        md += "\n" + select(runs, rows, select_by)[1] + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.with_suffix("") if out.suffix in (".md", ".csv") else out
    md_path, csv_path = base.parent / f"{base.name}.md", base.parent / f"{base.name}.csv"
    md_path.write_text(md)
    write_csv(csv_path, keys, rows, metrics)
    return md_path, csv_path, md


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", help="results.json files, folders or glob patterns")
    ap.add_argument("--out", default="results", help="output path without suffix (.md, .csv)")
    ap.add_argument("--group-by", help="comma list of settings (default: those that differ)")
    ap.add_argument("--metrics", help=f"comma list from {', '.join(METRICS)}")
    ap.add_argument("--select", help="name the group with the best mean of this metric (split=val)")
    args = ap.parse_args(argv)
    try:
        md_path, csv_path, md = collect(
            args.runs,
            Path(args.out),
            _split(args.group_by),
            _split(args.metrics) or (),
            args.select,
        )
    except CollectError as exc:
        raise SystemExit(f"collect: {exc}") from None
    print(md)
    print(f"wrote {md_path} and {csv_path}")


if __name__ == "__main__":
    main()
