"""docs/results.md from archived runs: the paper's Tables 3, 4, 5 and Fig. 3 on Caltech-101.

    python -m simulations.paper                                   # rebuild docs/results.md
    python -m simulations.paper --archive outputs/multirun/<name>  # file new runs, then rebuild

A finished run's ``results.json`` (about 10 kB: config, scores, curves) is filed under
``docs/results/runs/<experiment>/<setting hash>-seed<N>.json``, so the page is rebuilt from
what is committed, not from an ``outputs/`` folder that may be gone. Filing the same
setting and seed twice with different numbers is refused unless ``--replace`` (a rerun
replaces the old one on purpose, never silently). Runs are placed in tables by their
``experiment`` preset and settings; runs with ``split=val`` only appear in the selection
section, never in a table. Missing rows are listed with the command that produces them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.collect import (
    DEFAULT_METRICS,
    LATE_KEYS,
    METRICS,
    CollectError,
    Row,
    Run,
    find_results,
    load_run,
    select,
    summarise,
    to_markdown,
    write_csv,
)

RUNS = Path("docs/results/runs")
PAGE = Path("docs/results.md")
LAUNCH = "AZSL_RUNNER=inprocess python -m simulations.launch -m"
TABLE_METRICS = DEFAULT_METRICS  # T1, u, s, H, teacher H, verified %, wall s
FIG_METRICS = ("student.u", "student.s", "student.h")
BASE = "table3_whitebox_transductive"  # Fig. 3 and Table 5 vary one setting of this row


@dataclass(frozen=True)
class Table:
    """One table: which runs go in which row (label), in the paper's row order."""

    name: str  # file stem under docs/results/
    title: str
    column: str  # header of the row-label column
    rows: dict[str, str]  # label -> command producing its runs
    label: Callable[[Run], str | None]
    about: str


def _experiment(run: Run) -> str:
    return str(run.settings.get("experiment", ""))


def _table3(run: Run) -> str | None:
    if not _experiment(run).startswith("table3_"):
        return None
    label = f"{run.settings.get('scenario')}, {run.settings.get('teacher')}"
    return label + ", calibrated" if float(run.settings.get("calibration", 0.0)) else label


ABLATIONS = {
    "table3_blackbox_transductive": "full (attributes)",
    "ablation_onehot": "label-conditioned (one-hot)",
    "ablation_text": "text-conditioned",
    "ablation_no_verification": "without verification",
    "ablation_no_regulariser": "without regulariser",
}
LOSSES = {"none": "CE", "mmd": "CE + MMD", "kl": "CE + KL"}


def _table5(run: Run) -> str | None:
    if _experiment(run) not in ("table5_losses", BASE):
        return None
    return LOSSES.get(str(run.settings.get("regulariser")))


TABLES = (
    Table(
        "table3",
        "Table 3: white-/black-box, transductive/inductive teacher",
        "scenario, teacher",
        {
            label: f"{LAUNCH} experiment=table3_{s}_{t}{extra}"
            for s in ("whitebox", "blackbox")
            for t, extra, label in (
                ("transductive", "", f"{s}, transductive"),
                ("inductive", "", f"{s}, inductive"),
                (
                    "inductive",
                    " calibration=<selected on split=val>",
                    f"{s}, inductive, calibrated",
                ),
            )
        },
        _table3,
        "T1 is ZSL per-class top-1 (over all classes for a transductive teacher, as the paper "
        "reports it; over the unseen classes for an inductive one); u, s, H are GZSL. With an "
        "inductive teacher the scored model is classifier C (Eq. 7) trained on generated "
        "features of all classes; the teacher's own H is 0 by construction (it cannot name an "
        "unseen class), and features generated for unseen classes get no teacher feedback. "
        "`python -m simulations.plots <run folder> --stats` (owner side, simulation only) shows "
        "what that costs: on the white-box inductive runs of 2026-11-26 (seeds 0-2) the "
        "generated unseen-class means are nearly parallel to each other (mean cosine 0.89 "
        "between classes, real means 0.52), and nearest-generated-mean classification of real "
        "unseen features reaches 12-13 % (50 classes). For scale: Caltech-101's semantics are "
        "sentence embeddings of the class names, and a classical linear ZSL method (ESZSL) "
        "trained on the *real* seen features reaches about 9-11 % per-class top-1 on these 50 "
        "unseen classes (`../shared/data/README.md`); chance is 2 %. Classifier C is also "
        "strongly seen-biased (s far above u); the 'calibrated' rows score the same training "
        "with calibrated stacking (Chao et al. 2016: the `calibration` value subtracted from "
        "the seen classes' logits), the value chosen on validation classes (last section).",
    ),
    Table(
        "table4",
        "Table 4: ablations (black-box, transductive)",
        "generator / pipeline",
        {label: f"{LAUNCH} experiment={exp}" for exp, label in ABLATIONS.items()},
        lambda run: ABLATIONS.get(_experiment(run)),
        "'full' is the black-box transductive row of Table 3. One-hot: the generator is "
        "conditioned on class codes instead of attributes; text: on all-MiniLM-L6-v2 "
        "embeddings of the class names; without verification: the student learns from every "
        "generated sample; without regulariser: teacher cross-entropy only. On Caltech-101 "
        "the 'attributes' in att_splits.mat are themselves all-MiniLM-L6-v2 embeddings of "
        '"a photo of a {class name}.", the same prompt and model semantics=text uses (cosine '
        "1.0000 for every class), so the text row repeats the full row up to float rounding "
        "and measures run-to-run spread only; it differs on datasets with real attributes. "
        "Likewise, verification can only matter when it rejects samples: where the verified % "
        "column is near 100, the row without it trains on the same samples.",
    ),
    Table(
        "table5",
        "Table 5: generator losses (white-box, transductive)",
        "loss",
        {
            "CE": f"{LAUNCH} experiment=table5_losses regulariser=none",
            "CE + MMD": f"{LAUNCH} experiment=table5_losses regulariser=mmd",
            "CE + KL": f"{LAUNCH} experiment={BASE}",
        },
        _table5,
        "CE + KL is the white-box transductive row of Table 3 (the default regulariser).",
    ),
)
FIG3 = {  # swept key -> command (the base row supplies the default value's point)
    "noise-dim": f"{LAUNCH} experiment=fig3_noise_dim",
    "alpha": f"{LAUNCH} experiment=fig3_alpha",
}


def _signature(run: Run, drop: Sequence[str] = ()) -> str:
    """The run's setting (not its seed or how it ran) as a stable string.

    A key added later is left out at its default, so a run filed before it existed and a
    rerun of the same setting share one name.
    """
    kept = {
        k: v
        for k, v in run.settings.items()
        if k not in drop and not (k in LATE_KEYS and v == LATE_KEYS[k])
    }
    return json.dumps(kept, sort_keys=True, default=str)


def archive_name(run: Run) -> Path:
    digest = hashlib.sha256(_signature(run).encode()).hexdigest()[:10]
    return Path(_experiment(run) or "no-experiment") / f"{digest}-seed{run.seed}.json"


def archive(items: Sequence[str], runs_dir: Path, replace: bool = False) -> list[Path]:
    """Copy finished runs' results.json into ``runs_dir``; refuse to overwrite other numbers."""
    found = [load_run(p) for p in find_results(items)]
    plan: list[tuple[Path, Path]] = []
    clashes = []
    planned: dict[Path, Path] = {}
    for run in found:
        dest = runs_dir / archive_name(run)
        twin = planned.get(dest)
        if twin is not None and twin.read_bytes() != run.path.read_bytes():
            clashes.append(f"{twin} and {run.path} are both {dest.name} of {dest.parent.name}")
        elif dest.exists() and dest.read_bytes() != run.path.read_bytes() and not replace:
            clashes.append(f"{run.path} -> {dest}")
        planned[dest] = run.path
        plan.append((run.path, dest))
    if clashes:  # checked before anything is copied: all or nothing
        raise CollectError(
            "these runs repeat a setting and seed already filed (or given twice) with other "
            "numbers; pass --replace to file a rerun instead of the filed run, or give one of "
            "two runs: " + "; ".join(clashes[:5])
        )
    for src, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return [dest for _, dest in plan]


def _labelled(runs: Sequence[Run], label: Callable[[Run], str | None], column: str) -> list[Run]:
    """Runs that belong to a table, each once per (setting, seed), with its row label."""
    out: dict[tuple[str, str], Run] = {}
    for run in runs:
        name = label(run)
        if name is None:
            continue
        key = (_signature(run, ("experiment",)), str(run.seed))
        out.setdefault(key, Run(run.path, {**run.settings, column: name}, run.seed, run.results))
    return list(out.values())


def _table(runs: Sequence[Run], column: str, order: Sequence[Any]) -> tuple[list[str], list[Row]]:
    keys, rows = summarise(runs, [column], TABLE_METRICS)
    rank = {str(v): i for i, v in enumerate(order)}
    rows.sort(key=lambda r: (rank.get(str(r.group[column]), len(rank)), str(r.group[column])))
    return keys, rows


def fig3_runs(runs: Sequence[Run], key: str) -> list[Run]:
    """Runs that differ from the base row (white-box transductive) in ``key`` alone."""
    base = [r for r in runs if _experiment(r) == BASE]
    if not base:
        return []
    ref = _signature(base[0], ("experiment", key))
    return _labelled(
        [r for r in runs if _signature(r, ("experiment", key)) == ref],
        lambda r: r.settings.get(key),
        key,
    )


def plot_fig3(panels: dict[str, list[Row]], out: Path) -> Path:
    """Fig. 3: u, s, H (mean ± std over seeds) against each swept setting; each panel's
    rows come sorted by that setting's value."""
    from simulations.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, rows) in zip(axes.flat, panels.items(), strict=True):
        xs = [float(r.group[key]) for r in rows]
        for metric in FIG_METRICS:
            stats = [r.stats.get(metric, (float("nan"), None, 0)) for r in rows]
            ax.errorbar(
                xs,
                [s[0] for s in stats],
                yerr=[s[1] or 0.0 for s in stats],
                marker="o",
                capsize=3,
                label=METRICS[metric].header,
            )
        if key == "alpha":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("% (mean ± std over seeds)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Fig. 3, Caltech-101, white-box transductive", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _calibrations(members: Sequence[Run], table: Table) -> str:
    """Which calibration value each calibrated row's runs used."""
    used: dict[str, set[float]] = {}
    for run in members:
        value = float(run.settings.get("calibration", 0.0))
        if value:
            used.setdefault(str(run.settings[table.column]), set()).add(value)
    if not used:
        return ""
    said = "; ".join(f"{k}: {', '.join(f'{v:g}' for v in sorted(vs))}" for k, vs in used.items())
    return f"\nCalibration values used: {said}.\n"


def _seeds_note(rows: Sequence[Row], column: str) -> str:
    few = [f"{r.group[column]} ({len(r.seeds)})" for r in rows if len(r.seeds) < 3]
    return f"\nFewer than three seeds so far: {', '.join(few)}.\n" if few else ""


def _missing(table_rows: dict[str, str], present: set[str]) -> str:
    gone = [f"- {label}: `{cmd}`" for label, cmd in table_rows.items() if label not in present]
    return "\nNot produced yet:\n\n" + "\n".join(gone) + "\n" if gone else ""


def _prose(text: str) -> str:
    """A paragraph wrapped for the page (never inside a hyphenated word)."""
    return textwrap.fill(text, 92, break_on_hyphens=False)


def _machines(runs: Sequence[Run]) -> str:
    devices = sorted({str(r.results.get("device", "?")) for r in runs})
    return ", ".join(devices)


HEADER = """# Results on Caltech-101 (the paper's protocol)

Generated by `python -m simulations.paper` from the runs filed under `docs/results/runs/`
(one `results.json` per run); do not edit by hand. Caltech-101 EfficientNet-lite0 features
(`../shared/data/caltech101`, `effnetlite0.mat`, 50 seen / 50 unseen classes), one owner,
the defaults and the Caltech preset (`configs/dataset/caltech101.yaml`: `alpha=50`),
30 generator round trips, 400 generated samples per class, 30 student epochs; mean ± sample
std over seeds. T1 = ZSL per-class top-1; u, s, H = GZSL (Xian et al.), in %. Nothing here
was chosen on test classes: the settings are the defaults, and choosing one is done on
`split=val` (last section). Wall seconds are indicative (devices: {devices}; two CPU cores
are often shared between runs).

To produce runs and rebuild this page:

```bash
{launch} experiment=<preset>   # its sweep -> outputs/multirun/<time>
python -m simulations.paper --archive outputs/multirun/<time>   # file the runs, rebuild
```
"""


def build(runs_dir: Path = RUNS, page: Path = PAGE) -> str:
    """Write ``page`` (and per-table .csv, fig3.png beside the runs) from ``runs_dir``."""
    files = sorted(runs_dir.rglob("*.json")) if runs_dir.is_dir() else []
    runs = [load_run(p) for p in files]
    test = [r for r in runs if r.settings.get("split", "test") == "test"]
    out_dir = runs_dir.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [HEADER.format(devices=_machines(runs) or "none yet", launch=LAUNCH)]
    for table in TABLES:
        parts.append(f"## {table.title}\n\n{_prose(table.about)}\n")
        members = _labelled(test, table.label, table.column)
        if members:
            keys, rows = _table(members, table.column, list(table.rows))
            md = to_markdown(keys, rows, TABLE_METRICS)
            write_csv(out_dir / f"{table.name}.csv", keys, rows, TABLE_METRICS)
            parts.append(md + _seeds_note(rows, table.column) + _calibrations(members, table))
            present = {str(r.group[table.column]) for r in rows}
        else:
            present = set()
        parts.append(_missing(table.rows, present))
    fig3_about = (
        "Each panel varies one setting of the white-box transductive row of Table 3 (whose "
        "runs give the default value's point: noise-dim 20, alpha 50). 768 is the paper's "
        "768, kept below the 1280-d features. The class semantics are unit vectors while a "
        "d-dimensional N(0, I) noise vector has norm about sqrt(d) (4.5 at 20, 28 at 768): "
        "a large noise dimension drowns the class in the generator's input, which the "
        "verified % column shows (the teachers stop recognising the intended class within "
        "the default 30 round trips)."
    )
    parts.append(
        "## Fig. 3: noise dimension and regulariser weight alpha (white-box, transductive)\n\n"
        + _prose(fig3_about)
        + "\n"
    )
    panels: dict[str, list[Row]] = {}
    for key, cmd in FIG3.items():
        members = fig3_runs(test, key)
        values = {str(r.settings[key]) for r in members}
        if len(values) < 2:
            parts.append(f"\n{key}: not produced yet: `{cmd}`\n")
            continue
        keys, rows = summarise(members, [key], TABLE_METRICS)
        rows.sort(key=lambda r: float(r.group[key]))
        panels[key] = rows
        write_csv(out_dir / f"fig3-{key}.csv", keys, rows, TABLE_METRICS)
        parts.append(f"\n{to_markdown(keys, rows, TABLE_METRICS)}{_seeds_note(rows, key)}")
    if panels:
        plot_fig3(panels, out_dir / "fig3.png")
        rel = os.path.relpath(out_dir / "fig3.png", page.parent)
        parts.append(f"\n![Fig. 3]({Path(rel).as_posix()})\n")
    parts.append(_selection(runs))
    text = "\n".join(parts)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return text


def _selection(runs: Sequence[Run]) -> str:
    """One line per validation sweep (split=val): the setting it picks."""
    about = (
        "Sweep a setting with `split=val` (seen = xlsa17's `train_loc` classes, unseen = its "
        "`val_loc` classes; no test class or test image is loaded), file the runs, and the "
        "best mean H is named here (`python -m simulations.collect <runs> --select student.h` "
        "does the same for any folder), with the runner-up and whether the margin between "
        "them exceeds the seed-to-seed std: a default is worth changing only when it does. "
        "These runs are cheap enough for a GPU (below each table: the devices they ran on); "
        "a device changes the numbers a little, so one sweep is best run on one device."
    )
    head = (
        "## Choosing settings on validation classes\n\n"
        + _prose(about)
        + f"\n\n```bash\n{LAUNCH} experiment=fig3_alpha split=val "
        "alpha=0.01,0.1,0.5,1.0,10.0,50.0  # with the default's point\n"
        f"{LAUNCH} experiment=fig3_noise_dim split=val\n"
        "python -m simulations.paper --archive outputs/multirun/<time>\n```\n"
    )
    val = [r for r in runs if r.settings.get("split") == "val"]
    by_exp: dict[str, list[Run]] = {}
    for run in val:
        by_exp.setdefault(_experiment(run), []).append(run)
    lines = []
    for exp, members in sorted(by_exp.items()):
        keys, rows = summarise(members, None, TABLE_METRICS)
        table = to_markdown(keys, rows, TABLE_METRICS)
        lines.append(f"\n`{exp}` on validation classes (ran on: {_machines(members)}):\n\n{table}")
        if len(rows) > 1:
            lines.append(select(members, rows, "student.h")[1] + "\n")
        lines.append(_calibration(members))
    return head + ("".join(lines) if lines else "\nNo validation sweep has been filed yet.\n")


CURVE_METRICS = ("student.u", "student.s", "student.h")


def calibration_runs(runs: Sequence[Run]) -> list[Run]:
    """One pseudo-run per (run, calibration value) of split=val runs' calibration curves,
    so the curve is averaged over seeds and selected like any other setting."""
    out = []
    for run in runs:
        for point in (run.results.get("calibration") or {}).get("curve", []):
            settings = {"calibration": point["calibration"], "split": "val"}
            out.append(Run(run.path, settings, run.seed, {"student": point}))
    return out


def _calibration(members: Sequence[Run]) -> str:
    """The seed-averaged calibration curve of one setting's split=val runs, if any."""
    settings = {_signature(r) for r in members}
    points = calibration_runs(members)
    if not points or len(settings) != 1:  # a curve is per setting
        return ""
    keys, rows = summarise(points, ["calibration"], CURVE_METRICS)
    return (
        "\nCalibrated stacking on the same runs (the value subtracted from the seen classes' "
        f"logits, scored in their one evaluation round trip):\n\n"
        f"{to_markdown(keys, rows, CURVE_METRICS)}{select(points, rows, 'student.h')[1]}\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--archive", nargs="*", default=[], help="run folders to file first")
    ap.add_argument("--replace", action="store_true", help="refile a setting+seed already filed")
    ap.add_argument("--runs", type=Path, default=RUNS, help=f"filed runs (default {RUNS})")
    ap.add_argument("--out", type=Path, default=PAGE, help=f"page to write (default {PAGE})")
    args = ap.parse_args(argv)
    try:
        if args.archive:
            filed = archive(args.archive, args.runs, args.replace)
            print(f"filed {len(filed)} run(s) under {args.runs}")
        build(args.runs, args.out)
    except CollectError as exc:
        raise SystemExit(f"paper: {exc}") from None
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
