"""Pick the DP-SGD teacher's optimiser settings on validation classes, never on test ones.

An owner with ``teacher-epsilon`` trains its teacher with DP-SGD (``owner/dp.py``); the
learning rate and expected batch (``dp-lr``, ``dp-batch-size``) decide how much accuracy
survives the noise. This script trains the DP teacher for each setting on the owner's
``split=val`` data (validation classes stand in for test classes; the test split is never
loaded) and scores its per-class top-1 on the validation split's held-out samples, for each
teacher network (``teacher-model``: the paper's MLP and a linear one).

    python -m simulations.bench.dp_settings --data-dir ../shared/data/caltech101 \
        --feature-file effnetlite0.mat --out docs/benchmarks/dp-settings-val.json
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from pathlib import Path

import numpy as np
import torch

from azsl_flower.common.models import TEACHER_NETWORKS, teacher_network
from azsl_flower.owner import dp
from azsl_flower.owner.data import load_owner_data

__all__ = ["main", "per_class_top1"]

DEFAULT_GRID = "0.2:512,0.5:1024,1.0:2048,2.0:2048"


def per_class_top1(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, classes: np.ndarray
) -> float:
    """Mean over classes of top-1 accuracy (Xian et al.), labels in ``classes`` order."""
    with torch.no_grad():
        pred = classes[model(torch.from_numpy(x)).argmax(1).numpy()]
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--feature-file", default="res101.mat")
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--grid", default=DEFAULT_GRID, help="lr:batch pairs, comma separated")
    ap.add_argument("--networks", default=",".join(TEACHER_NETWORKS), help="teacher-model values")
    ap.add_argument("--seed", type=int, default=0, help="initial weights (DP noise: the OS)")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # several small processes share the CPU better this way
    data = load_owner_data("xlsa17", args.data_dir, args.feature_file, split="val")
    classes = data.covered_classes
    x = torch.from_numpy(data.train_x)
    y = torch.from_numpy(np.searchsorted(classes, data.train_y))
    delta = 1.0 / (10.0 * len(y))
    rows = []
    trials = [(net, pair) for net in args.networks.split(",") for pair in args.grid.split(",")]
    for net, pair in trials:
        lr, batch = float(pair.split(":")[0]), int(pair.split(":")[1])
        torch.manual_seed(args.seed)
        teacher = teacher_network(net, data.dim, classes.size)
        t0 = time.monotonic()
        mech = dp.train_dp_teacher(
            teacher,
            x,
            y,
            epsilon=args.epsilon,
            delta=delta,
            epochs=args.epochs,
            batch_size=batch,
            max_grad_norm=args.clip,
            lr=lr,
            seed=secrets.randbits(63),
        )
        teacher.eval()
        row = {
            "teacher_model": net,
            "lr": lr,
            "batch_size": batch,
            "epsilon": dp.epsilon_of([mech], delta),
            "val_seen_top1": per_class_top1(teacher, data.test_seen_x, data.test_seen_y, classes),
            "val_unseen_top1": per_class_top1(
                teacher, data.test_unseen_x, data.test_unseen_y, classes
            ),
            "seconds": round(time.monotonic() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # after every trial: a later one that fails loses none of them
            Path(args.out).write_text(json.dumps(_doc(args, argv, delta, rows), indent=2) + "\n")
    doc = _doc(args, argv, delta, rows)
    best = doc["selected"]
    print(
        f"selected on validation classes: teacher-model={best['teacher_model']} "
        f"dp-lr={best['lr']} dp-batch-size={best['batch_size']}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _score(r: dict) -> float:
    return r["val_seen_top1"] + r["val_unseen_top1"]


def _doc(args: argparse.Namespace, argv: list[str] | None, delta: float, rows: list[dict]) -> dict:
    """The figures of the trials run so far and the settings they select."""
    best = max(rows, key=_score)
    per_network = {
        net: max((r for r in rows if r["teacher_model"] == net), key=_score)
        for net in dict.fromkeys(r["teacher_model"] for r in rows)
    }
    return {
        "command": "python -m simulations.bench.dp_settings "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "split": "val",
        "epsilon_target": args.epsilon,
        "delta": delta,
        "epochs": args.epochs,
        "clip": args.clip,
        "rows": rows,
        "selected": {k: best[k] for k in ("teacher_model", "lr", "batch_size")},
        "best_per_network": per_network,
    }


if __name__ == "__main__":
    raise SystemExit(main())
