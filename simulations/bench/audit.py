"""Leakage audit: what an honest-but-curious service learns from each feedback mode.

Simulation only: it plays the owner too, so it knows the ground truth (the owner's real
class statistics, its teacher, its test features) and scores each attack against it. The
service may send any request the protocol and the owner's policy allow: crafted features,
its own labels and batch sizes, any ``alpha``, repeated queries. Every answer attacked is
built by the owner's own code (``azsl_flower/owner/answers.py``) after its policy check.

Per mode (and owner ε) it reports:

- statistics recovery: median relative error of the recovered class means and variances
  (gradient modes: the closed-form KL fit of ``azsl_flower/service/baseline.py``; white-box
  sends one batch twice with two alphas and fits the difference; ``value``: three queries
  per dimension and class; ``weights`` and ``statistics``: the statistics are sent);
- prototype attack: GZSL H of a nearest-class-mean classifier on the recovered means,
  scored on the owner's real test features;
- model extraction: a surrogate trained only on the answers to generated (and, where
  statistics were recovered, statistics-shaped) queries: its top-1 agreement with the
  teacher on real test features, and its own H;
- inversion: cosine between the best class-mean reconstruction and the real class mean;
- beside each row: the student H the mode buys (a full run per seed, in-process grid),
  the NCM baseline of that run, and the samples queried.

    python -m simulations.bench.audit --data-dir ../shared/data/caltech101 \\
        --modes whitebox,strict --epsilons inf,8,4,1 --seeds 0 \\
        --out docs/benchmarks/privacy-audit.json
    python -m simulations.bench.audit --markdown docs/privacy.md \\
        --out docs/benchmarks/privacy-audit.json

Rows are keyed by (mode, ε): a later invocation replaces or adds rows in ``--out``, so
the sweep can be run in parts. The attacks are :mod:`simulations.bench.audit_attacks`; this module
holds the modes, the owners' DP node configs, the student runs and the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from azsl_flower.common.config import CHOICES, parse_run_config
from azsl_flower.common.models import TEACHER_NETWORKS
from azsl_flower.owner import dp
from azsl_flower.owner.data import load_owner_data
from azsl_flower.owner.privacy import OwnerPrivacy, owner_privacy
from azsl_flower.owner.state import owner_state
from simulations.bench.audit_attacks import _generated, audit_mode, recover_statistics

__all__ = ["MODES", "budget_split", "dp_node_config", "recover_statistics"]


# name -> (what the service asks, a one-line description of what is on the wire)
MODES: dict[str, tuple[dict[str, str], str]] = {
    "weights": (
        {"scenario": "weights", "teacher-answer": "logits", "regulariser-answer": "gradient"},
        "teacher weights + KL statistics, once",
    ),
    "whitebox": (
        {"scenario": "whitebox", "teacher-answer": "logits", "regulariser-answer": "gradient"},
        "softmax + lse, ∇ₓ[CE + αR]",
    ),
    "whitebox-probs": (
        {"scenario": "whitebox", "teacher-answer": "probs", "regulariser-answer": "gradient"},
        "softmax, ∇ₓ[CE + αR]",
    ),
    "whitebox-noreg": (
        {"scenario": "whitebox", "teacher-answer": "logits", "regulariser-answer": "none"},
        "softmax + lse, ∇ₓ[CE]",
    ),
    "blackbox": (
        {"scenario": "blackbox", "teacher-answer": "logits", "regulariser-answer": "gradient"},
        "softmax + lse, ∇ₓ[αR]",
    ),
    "blackbox-statistics": (
        {"scenario": "blackbox", "teacher-answer": "probs", "regulariser-answer": "statistics"},
        "KL statistics once at set-up; softmax only per query",
    ),
    "blackbox-value": (
        {"scenario": "blackbox", "teacher-answer": "probs", "regulariser-answer": "value"},
        "softmax, R per batch (no gradient)",
    ),
    "strict": (
        {"scenario": "blackbox", "teacher-answer": "probs", "regulariser-answer": "none"},
        "softmax only",
    ),
    "strict-top5": (
        {"scenario": "blackbox", "teacher-answer": "topk:5", "regulariser-answer": "none"},
        "5 largest probabilities",
    ),
    "strict-label": (
        {"scenario": "blackbox", "teacher-answer": "label", "regulariser-answer": "none"},
        "argmax label only",
    ),
}
# the owners' DP-SGD settings in this audit (node config), the owner policy's defaults:
# selected on validation classes by simulations/bench/dp_settings.py
# (docs/benchmarks/dp-settings-val.json; teacher-model=auto gives the linear teacher)
_OWNER = OwnerPrivacy()
DP_EPOCHS, DP_BATCH, DP_LR = _OWNER.dp_epochs, _OWNER.dp_batch_size, _OWNER.dp_lr


def budget_split(epsilon: float, delta: float, n: int, stats: bool) -> float:
    """Per-mechanism ε such that teacher (and statistics) compose to ``epsilon`` (Opacus RDP).

    Simulation helper: the owner's node config then sets teacher-epsilon (and
    stats-epsilon) to it; what the run spends is what the owner's accountant reports.
    """
    if not stats:
        return epsilon

    def total(s: float) -> float:
        teacher = dp.planned_teacher(s, delta, n, DP_BATCH, DP_EPOCHS)
        stats = dp.stats_mechanism(dp.stats_noise_multiplier(s, delta), 1.0)
        return dp.epsilon_of([teacher, stats], delta)

    lo, hi = epsilon / 4, epsilon
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= epsilon else (lo, mid)
    return lo


def dp_node_config(
    epsilon: float, asked: dict[str, str], n: int, stats_clip: float
) -> dict[str, Any]:
    """An owner's node config for a total ε (inf: not private) in the mode asked."""
    if not math.isfinite(epsilon):
        return {}
    stats = asked["regulariser-answer"] != "none"
    delta = 1.0 / (10 * n)
    s = budget_split(epsilon, delta, n, stats)
    node: dict[str, Any] = {
        "teacher-epsilon": s,
        "dp-epochs": DP_EPOCHS,
        "dp-batch-size": DP_BATCH,
        "dp-lr": DP_LR,
    }
    if stats:
        node |= {"stats-epsilon": s, "stats-clip": stats_clip}
    return node


# -- runs ------------------------------------------------------------------------------------


def _settings(cfg_raw: dict[str, Any], **over: Any) -> dict[str, Any]:
    return parse_run_config({**cfg_raw, **over}).owner_settings()


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row of a saved audit is replaced by a new one of the same mode, ε and teacher."""
    return (row["mode"], row["epsilon_target"], row.get("teacher_network", "mlp"))


def run_job(
    cfg_raw: dict[str, Any], node: dict[str, Any], seed: int, out_dir: str
) -> dict[str, Any]:
    """One AZSL run in-process (real Messages, real ClientApp) with this owner node config."""
    from azsl_flower.client_app import app as client_app
    from simulations.run.inprocess import InProcessGrid
    from strategies.server_app import run_azsl

    cfg = parse_run_config({**cfg_raw, "seed": seed, "output-dir": out_dir})
    grid = InProcessGrid(client_app, 1, cfg.as_dict(), node_config=node)
    results, _ = run_azsl(grid, cfg, run_id=grid.run_id)
    return results


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    other = results.get("other_models", {})
    priv = next(iter(results.get("privacy", {}).values()), {})
    q = next(iter(results["federation"]["queries"].values()), {})
    return {
        "seed": results["seed"],
        "student": results["student"],
        "teacher": results["teacher"],
        "ncm_released": other.get("ncm-released"),
        "ncm_generated": other.get("ncm-generated"),
        "released": results.get("baseline", {}).get("released"),
        "epsilon": priv.get("epsilon"),
        "delta": priv.get("delta"),
        "mechanisms": priv.get("mechanisms"),
        "queries_used": q.get("queries_used"),
        "wall_seconds": results["wall_seconds"],
        "output_dir": results["output_dir"],
    }


def _parser() -> argparse.ArgumentParser:
    """The command line (the module docstring is its help)."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--feature-file", default="effnetlite0.mat")
    ap.add_argument("--modes", default="whitebox,strict", help=f"comma list of {list(MODES)}")
    ap.add_argument("--epsilons", default="inf", help="owner's total ε per row, e.g. inf,8,4,1")
    ap.add_argument("--seeds", default="0", help="student runs per row (attacks use the first)")
    ap.add_argument("--no-runs", action="store_true", help="attacks only (no student H)")
    ap.add_argument(
        "--runs-from",
        default="",
        help="comma list of run folders (results.json) of this row, instead of running",
    )
    ap.add_argument(
        "--queries-from",
        default="",
        help="a run folder whose generator.pt "
        "gives the extraction queries (default: this row's first run)",
    )
    ap.add_argument(
        "--stats-clip",
        type=float,
        default=20.0,
        help="owners' stats-clip (L2 bound of a feature vector) under DP",
    )
    ap.add_argument(
        "--teacher-model",
        default="auto",
        choices=["auto", *TEACHER_NETWORKS],
        help="the owners' teacher-model (auto: linear under DP, mlp without)",
    )
    ap.add_argument(
        "--split",
        default="test",
        choices=CHOICES["split"],
        help="val: validation classes stand in for the test ones (for choosing defaults)",
    )
    ap.add_argument("--value-classes", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=50.0)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps-per-round", type=int, default=10)
    ap.add_argument("--samples-per-class", type=int, default=400)
    ap.add_argument("--student-epochs", type=int, default=30)
    ap.add_argument("--teacher-epochs", type=int, default=40)
    ap.add_argument(
        "--extract-per-class", type=int, default=100, help="extraction queries per class"
    )
    ap.add_argument("--cache-dir", default="outputs/audit-cache")
    ap.add_argument("--output-dir", default="outputs/audit")
    ap.add_argument("--out", default="docs/benchmarks/privacy-audit.json")
    ap.add_argument("--markdown", default="", help="only render this markdown page from --out")
    return ap


def _render_markdown(markdown: str, out: str) -> None:
    """``--markdown``: only render the page from the saved audit files (no attacks)."""
    from simulations.report.privacy_doc import render

    page = Path(markdown)
    previous = page.read_text() if page.is_file() else ""
    merged: dict[str, Any] = {"rows": []}
    for part in out.split(","):  # several sweeps run in parallel, one file each
        audit = json.loads(Path(part).read_text())
        merged["rows"] += audit["rows"]
        first = {k: v for k, v in merged.get("settings", {}).items() if v is not None}
        merged["settings"] = {**audit.get("settings", {}), **first}  # first file wins
    page.write_text(render(merged, previous))
    print(f"wrote {markdown} from {out}")


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The raw run config every row starts from (each mode adds what it asks)."""
    return {
        "dataset": "xlsa17",
        "data-dir": str(Path(args.data_dir).resolve()),
        "feature-file": args.feature_file,
        "alpha": args.alpha,
        "rounds": args.rounds,
        "steps-per-round": args.steps_per_round,
        "samples-per-class": args.samples_per_class,
        "student-epochs": args.student_epochs,
        "teacher-epochs": args.teacher_epochs,
        "cache-dir": str(Path(args.cache_dir).resolve()),
        "tensorboard": False,
        "checkpoint-every": 0,
        "split": args.split,
    }


def _student_runs(
    args: argparse.Namespace,
    raw: dict[str, Any],
    node: dict[str, Any],
    seeds: list[int],
    name: str,
    eps: float,
) -> list[dict[str, Any]]:
    """The row's student runs: read from ``--runs-from``, else run (unless ``--no-runs``)."""
    runs = [
        _summary(json.loads((Path(f) / "results.json").read_text()))
        for f in args.runs_from.split(",")
        if f
    ]
    if not args.no_runs and not runs:
        for seed in seeds:
            runs.append(_summary(run_job(raw, node, seed, args.output_dir)))
            print(
                f"{name} ε={eps} seed {seed}: student H {runs[-1]['student']['h']:.3f}",
                flush=True,
            )
    return runs


def _audit_row(
    args: argparse.Namespace,
    cfg_raw: dict[str, Any],
    name: str,
    mode: tuple[dict[str, str], str],
    eps: float,
    n: int,
    seeds: list[int],
) -> tuple[dict[str, Any], OwnerPrivacy]:
    """One row of the audit: the mode's student runs and every attack, with the owner's
    privacy (the saved settings name its DP teacher)."""
    asked, wire = mode  # MODES[name]
    t0 = time.monotonic()
    node = dp_node_config(eps, asked, n, args.stats_clip)
    if args.teacher_model != "auto":
        node["teacher-model"] = args.teacher_model
    raw = {**cfg_raw, **asked}
    runs = _student_runs(args, raw, node, seeds, name, eps)
    settings = _settings(raw, seed=seeds[0])
    policy = owner_privacy(node)
    st = owner_state(settings, 0, 1, policy)
    qdir = (
        Path(args.queries_from)
        if args.queries_from
        else (Path(runs[0]["output_dir"]) if runs else None)
    )
    generated = _generated(qdir, st, cfg_raw["data-dir"], args.extract_per_class, seeds[0])
    row = {
        "mode": name,
        "wire": wire,
        "asked": asked,
        "epsilon_target": eps if math.isfinite(eps) else None,
        "owner_node_config": node,
        "teacher_network": policy.teacher_network,
        "declared": st.spend(settings).to_json(),
        "attacks": audit_mode(
            st,
            policy,
            settings,
            generated,
            seeds[0],
            args.value_classes,
            args.extract_per_class,
        ),
        "runs": runs,
        "queries_from": str(qdir) if qdir else None,
        "seconds": time.monotonic() - t0,
    }
    return row, policy


def _saved_settings(
    args: argparse.Namespace, cfg_raw: dict[str, Any], policy: OwnerPrivacy, n: int
) -> dict[str, Any]:
    """The audit file's settings: the run config (less the cache) and the protocol."""
    return {k: v for k, v in cfg_raw.items() if k != "cache-dir"} | {
        "stats_clip": args.stats_clip,
        "dp_epochs": DP_EPOCHS,
        "dp_batch": DP_BATCH,
        "dp_teacher_model": policy.teacher_network if policy.dp_teacher else None,
        "training_images": n,
        "protocol": f"{args.steps_per_round} batches of 256 per round trip, "
        f"{args.samples_per_class} verified samples per class, "
        f"{args.student_epochs} student epochs, {args.teacher_epochs} teacher epochs",
    }


def main() -> None:
    args = _parser().parse_args()
    if args.markdown:
        _render_markdown(args.markdown, args.out)
        return
    out = Path(args.out)
    saved = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    cfg_raw = _run_config(args)
    data = load_owner_data(
        "xlsa17", cfg_raw["data-dir"], args.feature_file, "transductive", 0, 1, split=args.split
    )
    n = int(data.train_y.size)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    for name in [m for m in args.modes.split(",") if m]:
        mode = MODES[name]
        for eps in [float(e) for e in args.epsilons.split(",") if e]:
            row, policy = _audit_row(args, cfg_raw, name, mode, eps, n, seeds)
            saved["rows"] = [r for r in saved["rows"] if _row_key(r) != _row_key(row)] + [row]
            saved["settings"] = _saved_settings(args, cfg_raw, policy, n)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(saved, indent=1, default=float) + "\n")
            print(json.dumps(row["attacks"], default=float), flush=True)


if __name__ == "__main__":
    main()
