"""What a run produced, typed: :class:`RunResult` becomes results.json in one place.

The strategy fills a RunResult (its transport the traffic, its roster the federation);
:func:`write_run` writes it, with the models, to a fresh run folder that never replaces an
earlier run's; :func:`format_table` is the table printed at the end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from azsl_flower.common.config import RunConfig
from azsl_flower.wire.channels import CryptoStats

__all__ = [
    "FederationReport",
    "RunResult",
    "TrafficStats",
    "format_table",
    "write_run",
]


@dataclass
class TrafficStats:
    """What crossed Flower: round trips, messages, payload bytes, refusals and re-sends."""

    round_trips: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retries: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    rejections: list[dict[str, object]] = field(default_factory=list)
    sent_by_node: dict[int, int] = field(default_factory=dict)  # payload bytes per owner
    received_by_node: dict[int, int] = field(default_factory=dict)
    # per round trip: kind, phase, pushed (epoch s), replies [{node, message id, seconds}]
    timings: list[dict[str, object]] = field(default_factory=list)

    def per_owner(self) -> dict[str, dict[str, int]]:
        return {
            str(n): {"sent": b, "received": self.received_by_node.get(n, 0)}
            for n, b in self.sent_by_node.items()
        }


@dataclass
class FederationReport:
    """Who took part and how: coverage, drops, failures, budgets (results.json ``federation``)."""

    node_ids: list[int]
    owners_at_setup: int
    quorum: float
    dropped: list[dict[str, object]]  # {node, phase, reason}
    failures: list[dict[str, object]]  # {node, phase, kind, reason}
    contributors: dict[str, list[int]]  # phase -> nodes that answered
    generator_answers: dict[int, int]  # node -> generator round trips answered
    orphaned_classes: list[int]
    queries: dict[int, dict[str, object]]  # node -> query_budget, queries_used, skipped
    coverage: list[list[int]]
    seen_classes: list[int]
    unseen_classes: list[int]
    feature_dim: int
    evaluated_model: str
    zsl_label_space: str
    partition: str
    ensemble_weighting: str

    def to_json(self) -> dict[str, Any]:
        return {
            "node_ids": self.node_ids,
            "owners_at_setup": self.owners_at_setup,
            "quorum": self.quorum,
            "dropped_node_ids": [int(d["node"]) for d in self.dropped],  # type: ignore[call-overload]
            "dropped": self.dropped,
            "failures": self.failures,
            "contributors": self.contributors,
            "generator_answers": {str(n): k for n, k in self.generator_answers.items()},
            "orphaned_classes": self.orphaned_classes,
            "queries": {str(n): q for n, q in self.queries.items()},
            "coverage": self.coverage,
            "seen_classes": self.seen_classes,
            "unseen_classes": self.unseen_classes,
            "feature_dim": self.feature_dim,
            "evaluated_model": self.evaluated_model,
            "zsl_label_space": self.zsl_label_space,
            "partition": self.partition,
            "ensemble_weighting": self.ensemble_weighting,
        }


@dataclass
class RunResult:
    """Everything a finished run reports; :meth:`to_json` is results.json."""

    config: RunConfig
    device: str
    teacher: dict[str, float]
    student: dict[str, float]
    other_models: dict[str, dict[str, float]]
    per_owner_teacher: dict[str, dict[str, float]]
    calibration: dict[str, object]
    verification: dict[str, object]
    federation: FederationReport
    history: list[dict[str, float]]
    traffic: TrafficStats
    crypto: CryptoStats
    suite: str
    faults_injected: dict[str, int]
    phase_seconds: dict[str, float]
    wall_seconds: float
    resumed_from_round: int | None
    models: dict[str, torch.nn.Module]  # saved beside results.json (generator, student)
    # what a method adds (scenario dfzsl: kappa, alignment misfit, ...); results.json "method"
    method: dict[str, Any] = field(default_factory=dict)
    # per owner: its response modes and (ε, δ), DP mechanisms and spend, as declared
    privacy: dict[str, dict[str, object]] = field(default_factory=dict)
    # the nearest-class-mean baseline: what it was built from (other_models ncm-*)
    baseline: dict[str, object] = field(default_factory=dict)
    # the model the run delivers (run-config deliver): its name and figures (empty: student)
    delivered: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "dataset": cfg.dataset if cfg.dataset == "digits" else cfg.data_dir,
            "scenario": str(cfg.scenario),
            "teacher_setting": str(cfg.teacher),
            "regulariser": cfg.regulariser,
            "semantics": cfg.semantics,
            "num_owners": len(self.federation.node_ids),
            "seed": cfg.seed,
            "device": self.device,
            "teacher": self.teacher,
            "per_owner_teacher": self.per_owner_teacher,
            "delivered": self.delivered
            or {"name": self.federation.evaluated_model, **self.student},
            "student": self.student,
            "other_models": self.other_models,
            "calibration": self.calibration,
            "wall_seconds": self.wall_seconds,
            "phase_seconds": self.phase_seconds,
            "round_trips": self.traffic.round_trips,
            "messages": self.traffic.messages,
            "bytes_sent": self.traffic.bytes_sent,
            "bytes_received": self.traffic.bytes_received,
            "bytes_per_owner": self.traffic.per_owner(),
            "encryption": {
                "suite": self.suite,
                "plaintext_bytes": self.crypto.plaintext_bytes,
                "ciphertext_bytes": self.crypto.ciphertext_bytes,
                "seconds": self.crypto.seconds,
            },
            "rejected_messages": self.traffic.rejected,
            "rejections": self.traffic.rejections,
            "retries": self.traffic.retries,
            "round_trip_timings": self.traffic.timings,
            "faults_injected": self.faults_injected,
            "verification": self.verification,
            "federation": self.federation.to_json(),
            "history": self.history,
            "resumed_from_round": self.resumed_from_round,
            "privacy": self.privacy,
            "baseline": self.baseline,
            "config": cfg.as_dict(),
        } | ({"method": self.method} if self.method else {})


def _fresh_dir(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        cand = root / (stamp if i == 0 else f"{stamp}-{i}")
        if not cand.exists():
            return cand
    raise FileExistsError(f"no free run folder under {root}")


def write_run(
    output_dir: str,
    results: dict[str, Any],
    checkpoints: dict[str, torch.nn.Module],
    move_in: dict[str, Path] | None = None,
) -> Path:
    """Write everything to a temporary folder, then rename it into place in one step.

    A failed run leaves no folder that looks like a run, and an existing folder is never
    reused (rename fails rather than overwrite). ``move_in`` {name: folder}: folders the
    run wrote elsewhere meanwhile (TensorBoard logs), moved in before the rename.
    """
    root = Path(output_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".incomplete-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    for name, model in checkpoints.items():
        torch.save(model.state_dict(), tmp / f"{name}.pt")
    for name, folder in (move_in or {}).items():
        shutil.move(str(folder), str(tmp / name))
    final = _fresh_dir(root)
    results = dict(results, output_dir=str(final.resolve()))
    (tmp / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    while True:
        try:
            os.rename(tmp, final)  # fails if final appeared meanwhile (non-empty dir)
            return final
        except OSError:
            if not final.exists():
                raise
            final = _fresh_dir(root)


def format_table(results: dict[str, Any]) -> str:
    """The teacher-vs-student table printed at the end of a run."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{'DFZSL' if results['scenario'] == 'dfzsl' else 'AZSL'} on {results['dataset']} "
        f"({results['scenario']}, "
        f"{results['teacher_setting']} teacher, {results['num_owners']} owner(s))"
    )
    for col in ("model", "ZSL T1", "u", "s", "H"):
        table.add_column(col, justify="right" if col != "model" else "left")
    labels = {
        "ncm-released": "NCM on released statistics (baseline)",
        "ncm-generated": "NCM on generated class means",
        "lda-released": "LDA on released statistics",
        "student-kd": "student, CE + KD",
    }
    rows = []
    if "delivered" in results:  # results.json from before deliver had none
        d = results["delivered"]
        rows.append((f"delivered: {labels.get(d['name'], d['name'])}", d))
    rows += [("teacher (upper bound)", results["teacher"]), ("student", results["student"])]
    rows += [(labels.get(name, name), m) for name, m in results.get("other_models", {}).items()]
    for name, m in rows:
        table.add_row(name, *(f"{100 * m[k]:.1f}" for k in ("zsl", "u", "s", "h")))
    console = Console(width=100, record=True, file=io.StringIO(), force_terminal=False)
    console.print(table)
    footer = (
        f"round trips={results['round_trips']} messages={results['messages']} "
        f"sent={results['bytes_sent'] / 1e6:.1f} MB "
        f"received={results['bytes_received'] / 1e6:.1f} MB "
        f"wall={results['wall_seconds']:.1f} s"
    )
    base = results.get("baseline") or {}
    if base.get("released"):
        footer += f"\nowners released: {base['released']}"
    for node, p in (results.get("privacy") or {}).items():
        eps = p.get("epsilon")
        dp = f"(ε={eps:.2f}, δ={p.get('delta'):.1e})-DP" if eps is not None else "no DP guarantee"
        if eps is not None and not p.get("covered"):  # e.g. exact evaluation counts
            dp += f" answers; not covered: {'; '.join(p.get('not_covered') or [])}"
        footer += (
            f"\nowner {node}: allows teacher-answer {p.get('teacher_answer')}, "
            f"regulariser-answer {p.get('regulariser_answer')}; {dp}"
        )
    cal = results.get("calibration") or {}
    if cal.get("curve"):  # a split=val run: the value to use in the test run
        best = next(p for p in cal["curve"] if p["calibration"] == cal["selected"])
        footer += (
            f"\ncalibration on validation classes: best {best['calibration']} "
            f"(u {100 * best['u']:.1f}, s {100 * best['s']:.1f}, H {100 * best['h']:.1f}); "
            f"use calibration={best['calibration']} for the test run"
        )
    return console.export_text() + footer
