"""docs/privacy.md's tables, rendered from the audit's JSON (``simulations/bench/audit.py``).

python -m simulations.bench.audit --markdown docs/privacy.md \\
    --out docs/benchmarks/privacy-audit.json
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["render", "table"]


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _err(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.1e}" if v < 0.01 else f"{v:.2f}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * m:.1f} (1 seed)"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * m:.1f} ± {100 * sd:.1f} ({len(values)} seeds)"


def _eps(row: dict[str, Any]) -> str:
    declared = row.get("declared", {}).get("epsilon")
    target = row.get("epsilon_target")
    if target is None:
        return "∞"
    return f"{declared:.2f}" if declared is not None else f"{target:g} (not covered)"


def _teacher(row: dict[str, Any]) -> str:
    """The owner's teacher network, with its DP-SGD settings where it has them."""
    node = row.get("owner_node_config") or {}
    name = row.get("teacher_network", "mlp")
    if "dp-lr" in node:
        return f"{name} (DP-SGD lr {node['dp-lr']}, batch {node['dp-batch-size']})"
    return name


def table(rows: list[dict[str, Any]]) -> str:
    """Mode × leakage × student H × ε, one line per audited (mode, ε)."""
    head = (
        "| mode | teacher | ε (composed) | on the wire | means: rel. err | variances: rel. err "
        "| attack samples | prototype NCM H | extraction: agreement / H | inversion cos "
        "| student H | teacher H | NCM on released (run) | NCM on generated (run) "
        "| samples per run |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        a = r.get("attacks", {})
        stats = a.get("stats") or {}
        ext = a.get("extraction") or {}
        inv = a.get("inversion") or {}
        runs = r.get("runs") or []
        samples = stats.get("samples")
        if samples is not None and "samples_all_classes" in stats:
            samples = f"{samples} ({stats['classes']} classes; all: {stats['samples_all_classes']})"
        ncm = [x["ncm_released"]["h"] for x in runs if x.get("ncm_released")]
        gen = [x["ncm_generated"]["h"] for x in runs if x.get("ncm_generated")]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["mode"],
                    _teacher(r),
                    _eps(r),
                    r["wire"],
                    _err(stats.get("mean_rel_err")),
                    _err(stats.get("var_rel_err")),
                    "–" if samples is None else str(samples),
                    _pct(a.get("prototype_h")),
                    f"{_pct(ext.get('agreement'))} / {_pct(ext.get('h'))}" if ext else "–",
                    f"{inv['cosine']:.2f} ({inv['from']})" if inv else "–",
                    _mean_sd([x["student"]["h"] for x in runs]),
                    _mean_sd([x["teacher"]["h"] for x in runs]),
                    _mean_sd(ncm) if ncm else "–",
                    _mean_sd(gen) if gen else "–",
                    str(runs[0]["queries_used"]) if runs else "–",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


MARKER = "<!-- written by hand below this line; kept when the table is rebuilt -->"


def render(audit: dict[str, Any], previous: str = "") -> str:
    """docs/privacy.md: the generated table, then whatever ``previous`` (the page as it
    was) holds below :data:`MARKER` (the findings, written from the numbers)."""
    s = audit.get("settings", {})
    order = {
        m: i
        for i, m in enumerate(
            [
                "weights",
                "whitebox",
                "whitebox-probs",
                "whitebox-noreg",
                "blackbox",
                "blackbox-statistics",
                "blackbox-value",
                "strict",
                "strict-top5",
                "strict-label",
            ]
        )
    }
    rows = sorted(
        audit["rows"],
        key=lambda r: (
            order.get(r["mode"], 99),
            -(r["epsilon_target"] if r["epsilon_target"] is not None else math.inf),
            r.get("teacher_network", "mlp") != "linear",  # the default DP teacher first
        ),
    )
    kept = previous.split(MARKER, 1)[1] if MARKER in previous else "\n"
    return (
        PAGE.format(
            table=table(rows),
            rounds=s.get("rounds"),
            alpha=s.get("alpha"),
            clip=s.get("stats_clip"),
            dp_epochs=s.get("dp_epochs"),
            dp_batch=s.get("dp_batch"),
            dp_model=DP_MODELS.get(str(s.get("dp_teacher_model")), "the paper's MLP"),
            n=s.get("training_images"),
            protocol=s.get("protocol", "default steps"),
        )
        + f"\n{MARKER}{kept}"
    )


DP_MODELS = {
    "linear": "linear: `teacher-model=auto` under DP",
    "mlp": "the paper's MLP",
}

PAGE = """# Privacy: what an owner gives away, measured and bounded

Generated by `python -m simulations.bench.audit --markdown docs/privacy.md --out <json,...>` from
the audit's JSON files under `docs/benchmarks/` (`privacy-audit-*.json`; the commands that
made each are below the table); do not edit the table by hand. What each column means is
below the table, the findings after it.

Caltech-101 (`../shared/data/caltech101`, EfficientNet-lite0 features, 1280-d), one owner
with a transductive teacher ({n} training images), `alpha={alpha}`, {rounds} generator round
trips ({protocol}). ε is the owner's composed ε at δ = 1/(10 n), from Opacus's RDP
accountant over its DP-SGD teacher ({dp_model}, {dp_epochs} epochs, expected batch
{dp_batch}, clip 1) and, where the mode uses the regulariser, its Gaussian statistics
release (`stats-clip={clip}`); ∞: no DP. "–": the mode gives the attack nothing to work
with, or not measured.

{table}

Columns:

- **means / variances: rel. err**: median over classes of ‖recovered − real‖ / ‖real‖ of
  the owner's class means and variances (real: computed by the owner on its training
  features, the ground truth only a simulation has). Gradient modes: the closed-form fit of
  `azsl_flower/service/baseline.py` on crafted features (8 per class, one batch per 32
  classes); white-box sends the same batch twice, with the run's α and with α = 0, and fits
  the difference (α is the service's own setting). `value`: for a few classes, R of 2D+1
  two-sample batches per class (the sample count for all classes is in brackets).
  `weights`: the statistics come with the teacher.
- **prototype NCM H**: GZSL H of a nearest-class-mean classifier on the recovered means,
  scored on the owner's real test features: what the statistics alone are worth.
- **extraction**: a surrogate (the classifier MLP) trained only on the mode's answers to
  features from the run's generator (and, where statistics were recovered, Gaussian
  samples from them): top-1 agreement with the teacher on real test features, and its H.
- **inversion cos**: median over classes of the cosine between the best class-mean
  reconstruction (recovered statistics, or the mean of the generated features the teacher
  labels as intended) and the real class mean.
- **student H**: what the mode buys (the service's student, GZSL H on real test features),
  mean ± std over seeds; **NCM on released (run)**: the baseline every run now reports, an
  NCM classifier on the statistics the run's own answers released (`other_models.ncm-released`
  in results.json); **samples per run**: generated samples the owner answered.
"""
