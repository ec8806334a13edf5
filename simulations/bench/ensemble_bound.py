"""What the owners' teachers reach *together* on real test data (simulation-only diagnostic).

    python -m simulations.bench.ensemble_bound --data-dir ../shared/data/caltech101 --owners 1,2,5

With several owners holding different classes, the student can at best learn what the
owners' teachers know between them. This scores that ensemble: each simulated owner's
teacher (trained, or taken from the owners' cache, exactly as a run with the same settings
does) on the *whole* test split, combined as ``ensemble-weighting=joint`` combines them
(one softmax over every owner's logits). It needs every owner's real test features in
one process, so it exists for simulations only, like the t-SNE plot; no run does this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from azsl_flower.common.config import parse_run_config
from azsl_flower.common.metrics import ClassCounts, count_predictions, zsl_gzsl
from azsl_flower.owner.data import load_owner_data
from azsl_flower.owner.oracle import FeedbackOracle
from azsl_flower.owner.state import owner_state
from azsl_flower.service.ensemble import joint_gates
from simulations.bench.common import FiguresFile
from simulations.run.simulate import parse_overrides


def joint_scores(oracles: list[FeedbackOracle], x: np.ndarray) -> np.ndarray:
    """Joint-ensemble probabilities of the owners' teachers (their oracles) on features x."""
    answers = [oracle.probs_lse(x) for oracle in oracles]
    gates = joint_gates([lse for _, lse in answers])
    return sum(gates[o][:, None] * probs for o, (probs, _) in enumerate(answers))


def ensemble_figures(raw: dict, owners: int) -> dict[str, float]:
    """ZSL/GZSL figures of the joint ensemble of ``owners`` teachers on the whole test split."""
    cfg = parse_run_config(raw)
    whole = load_owner_data(
        cfg.dataset, cfg.data_dir, cfg.feature_file, cfg.teacher, split=cfg.split
    )
    settings = cfg.owner_settings()
    oracles = [owner_state(settings, i, owners).oracle for i in range(owners)]
    parts = {}
    for name, x, y in (
        ("seen", whole.test_seen_x, whole.test_seen_y),
        ("unseen", whole.test_unseen_x, whole.test_unseen_y),
    ):
        scores = joint_scores(oracles, x)
        unseen = whole.unseen_classes
        pred_zsl = unseen[scores[:, unseen].argmax(1)] if name == "unseen" else None
        parts[name] = count_predictions(
            scores.argmax(1), pred_zsl, y, name == "unseen", whole.num_classes
        )
    (seen_ok, seen_n, _), (unseen_ok, unseen_n, zsl_ok) = parts["seen"], parts["unseen"]
    counts = ClassCounts(seen_ok, seen_n, unseen_ok, unseen_n, zsl_ok)
    return zsl_gzsl(counts, "all" if cfg.teacher == "transductive" else "unseen")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", default="../shared/data/caltech101")
    ap.add_argument("--feature-file", default="effnetlite0.mat")
    ap.add_argument("--owners", default="1,2,5,10")
    ap.add_argument("--partition", default="class-disjoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/benchmarks/ensemble-bound.json")
    ap.add_argument("overrides", nargs="*", help="extra run-config key=value (teacher settings)")
    args = ap.parse_args()
    raw = {
        "dataset": "xlsa17",
        "data-dir": str(Path(args.data_dir).resolve()),
        "feature-file": args.feature_file,
        "partition": args.partition,
        "seed": args.seed,
        **parse_overrides(args.overrides),
    }
    rows: list[dict] = []
    out = FiguresFile(args.out)  # written after every owner count: a later failure loses none
    for n in [int(v) for v in args.owners.split(",") if v]:
        figures = ensemble_figures(raw, n)
        rows.append({"owners": n, "joint_ensemble": figures})
        out.write({"config": raw, "rows": rows})
        print(f"{n} owner(s): joint ensemble of teachers H {figures['h']:.3f}", flush=True)
    print(json.dumps(rows, indent=1))
    print(f"figures saved to {out.write({'config': raw, 'rows': rows})}")


if __name__ == "__main__":
    main()
