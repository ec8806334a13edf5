"""The paper's layout: which filed run goes in which row of Tables 3-5, which panel of
Fig. 3 and which calibration curve, by its ``experiment`` preset and settings."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from simulations.report.collect import DEFAULT_METRICS, LATE_KEYS, Row, Run, summarise

LAUNCH = "AZSL_RUNNER=inprocess python -m simulations.run.launch -m"
TABLE_METRICS = DEFAULT_METRICS  # T1, u, s, H, teacher H, verified %, wall s
FIG_METRICS = ("student.u", "student.s", "student.h")
CURVE_METRICS = FIG_METRICS  # a calibration curve: u, s, H per value
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


def experiment(run: Run) -> str:
    return str(run.settings.get("experiment", ""))


def _table3(run: Run) -> str | None:
    if not experiment(run).startswith("table3_"):
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
    if experiment(run) not in ("table5_losses", BASE):
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
        "`python -m simulations.report.plots <run folder> --stats` "
        "(owner side, simulation only) shows "
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
        lambda run: ABLATIONS.get(experiment(run)),
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


def signature(run: Run, drop: Sequence[str] = ()) -> str:
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


def labelled(runs: Sequence[Run], label: Callable[[Run], str | None], column: str) -> list[Run]:
    """Runs that belong to a table, each once per (setting, seed), with its row label."""
    out: dict[tuple[str, str], Run] = {}
    for run in runs:
        name = label(run)
        if name is None:
            continue
        key = (signature(run, ("experiment",)), str(run.seed))
        out.setdefault(key, Run(run.path, {**run.settings, column: name}, run.seed, run.results))
    return list(out.values())


def table_rows(
    runs: Sequence[Run], column: str, order: Sequence[Any]
) -> tuple[list[str], list[Row]]:
    """One table's rows (mean ± std over seeds) in the paper's row order, others last."""
    keys, rows = summarise(runs, [column], TABLE_METRICS)
    rank = {str(v): i for i, v in enumerate(order)}
    rows.sort(key=lambda r: (rank.get(str(r.group[column]), len(rank)), str(r.group[column])))
    return keys, rows


def fig3_runs(runs: Sequence[Run], key: str) -> list[Run]:
    """Runs that differ from the base row (white-box transductive) in ``key`` alone."""
    base = [r for r in runs if experiment(r) == BASE]
    if not base:
        return []
    ref = signature(base[0], ("experiment", key))
    return labelled(
        [r for r in runs if signature(r, ("experiment", key)) == ref],
        lambda r: r.settings.get(key),
        key,
    )


def calibration_runs(runs: Sequence[Run]) -> list[Run]:
    """One pseudo-run per (run, calibration value) of split=val runs' calibration curves,
    so the curve is averaged over seeds and selected like any other setting."""
    out = []
    for run in runs:
        for point in (run.results.get("calibration") or {}).get("curve", []):
            settings = {"calibration": point["calibration"], "split": "val"}
            out.append(Run(run.path, settings, run.seed, {"student": point}))
    return out
