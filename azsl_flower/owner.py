"""The data owner's side: teacher training, feedback on generated features, evaluation.

Everything here runs where the private features live. Replies carry only quantities
computed on *generated* features (teacher outputs, regulariser values and gradients) or
per-class counts; never a real feature row, a label of a real sample, or teacher weights
(except in the ``weights`` scenario, where the owner opts in to send them).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from azsl_flower.config import TEACHER_KEYS, resolve_cache_dir
from azsl_flower.data import OwnerData, load_owner_data
from azsl_flower.feedback import FeedbackOracle, make_regulariser
from azsl_flower.metrics import count_predictions
from azsl_flower.models import (
    classifier,
    fit,
    load_numpy_state,
    predict_logits,
    resolve_device,
    state_to_numpy,
)

__all__ = [
    "OwnerState",
    "owner_state",
    "evaluate_model",
]

# ---------------------------------------------------------------------------------------
# Owner state: data + teacher, trained once per (data, config) and cached
# ---------------------------------------------------------------------------------------


@dataclass
class OwnerState:
    data: OwnerData
    oracle: FeedbackOracle
    teacher_train_accuracy: float


_STATE: dict[str, OwnerState] = {}


def owner_state(settings: dict, partition_id: int, num_partitions: int) -> OwnerState:
    """Load this owner's data and teacher (train it once; reuse from memory or disk cache)."""
    data = load_owner_data(
        str(settings["dataset"]),
        str(settings.get("data-dir", "")),
        str(settings.get("feature-file", "res101.mat")),
        str(settings["teacher"]),
        partition_id,
        num_partitions,
        partition=str(settings.get("partition", "iid")),
        seed=int(settings.get("seed", 0)),
        dirichlet_beta=float(settings.get("dirichlet-beta", 0.5)),
        owner_classes=str(settings.get("owner-classes", "")),
        split=str(settings.get("split", "test")),
    )
    teacher_cfg = {k: settings.get(k) for k in TEACHER_KEYS}
    key = hashlib.sha256(
        json.dumps([data.fingerprint, teacher_cfg, partition_id], sort_keys=True).encode()
    ).hexdigest()[:24]
    reg_name = str(settings.get("regulariser", "kl"))
    state_key = f"{key}-{reg_name}"
    if state_key in _STATE:
        return _STATE[state_key]
    device = resolve_device(str(settings.get("device", "auto")))
    classes = data.covered_classes
    seed = int(settings.get("seed", 0)) + 7919 * partition_id
    path = resolve_cache_dir(settings.get("cache-dir")) / f"teacher-{key}.pt"
    # The teacher's initial weights and dropout draw from a generator seeded here, not from
    # whatever the process ran before: the same teacher under `flwr run`, the Python
    # launchers and in-process tests, and the process's own RNG left as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        teacher = _teacher(data, classes, device, path, settings, seed)
    teacher.eval()
    with torch.no_grad():
        pred = predict_logits(teacher, torch.from_numpy(data.train_x).to(device)).argmax(1)
    acc = float((classes[pred.cpu().numpy()] == data.train_y).mean())
    reg = make_regulariser(reg_name, data.train_x, data.train_y, int(settings.get("seed", 0)))
    oracle = FeedbackOracle(teacher, classes, data.num_classes, reg.to(device), device)
    while len(_STATE) >= 8:  # a simulation process may serve several owners: bound memory
        _STATE.pop(next(iter(_STATE)))
    _STATE[state_key] = OwnerState(data, oracle, acc)
    return _STATE[state_key]


def evaluate_model(
    model: nn.Module | None,
    data: OwnerData,
    unseen: np.ndarray,
    device: torch.device,
    oracle: FeedbackOracle | None = None,
    calibration: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-class counts of a global-label-space model (or of the teacher if model is None).

    ``calibration`` (model only; calibrated stacking, Chao et al. 2016): the first value is
    subtracted from the seen classes' logits (log-probabilities up to a per-sample
    constant) before the GZSL argmax; with more values, ``{seen,unseen}_curve`` hold the
    correct counts for each (one row each). Logits, not probabilities: a confident model
    puts ~1.0 on a seen class, and no shift of at most 1 in probability can move it.
    """
    gammas = np.zeros(1)
    if model is not None and calibration is not None and np.asarray(calibration).size:
        gammas = np.asarray(calibration, dtype=np.float64)
    seen_mask = np.ones(data.num_classes, dtype=bool)
    seen_mask[unseen] = False
    out: dict[str, np.ndarray] = {}
    for split, x, y, is_unseen in (
        ("seen", data.test_seen_x, data.test_seen_y, False),
        ("unseen", data.test_unseen_x, data.test_unseen_y, True),
    ):
        if model is not None:
            with torch.no_grad():
                scores = predict_logits(model, torch.from_numpy(x).to(device)).cpu().numpy()
        else:
            assert oracle is not None
            scores = oracle.probs(x) if x.shape[0] else np.zeros((0, data.num_classes))
            uncovered = np.setdiff1d(np.arange(data.num_classes), oracle.classes)
            scores[:, uncovered] = -np.inf
        pred_zsl = None
        if is_unseen and unseen.size and x.shape[0]:
            pred_zsl = unseen[scores[:, unseen].argmax(1)]
        counted = []  # (correct, total, zsl) per calibration value
        for gamma in gammas:
            shifted = scores - gamma * seen_mask if gamma else scores
            pred_all = shifted.argmax(1) if x.shape[0] else np.zeros(0, dtype=np.int64)
            counted.append(count_predictions(pred_all, pred_zsl, y, is_unseen, data.num_classes))
        correct, total, zsl = counted[0]
        out[f"{split}_correct"], out[f"{split}_total"] = correct, total
        if is_unseen:
            out["zsl_correct"] = zsl
        if gammas.size > 1:
            out[f"{split}_curve"] = np.stack([c[0] for c in counted])
    return out


def model_from_weights(weights: dict[str, np.ndarray], device: torch.device) -> nn.Module:
    """Rebuild a classifier MLP from its weights (shapes give the sizes)."""
    in_dim = int(weights["0.weight"].shape[1])
    out_dim = int(weights["6.weight"].shape[0])
    return load_numpy_state(classifier(in_dim, out_dim), weights).to(device).eval()


def teacher_weights(state: OwnerState) -> dict[str, np.ndarray]:
    return state_to_numpy(state.oracle.teacher)


def _teacher(
    data: OwnerData,
    classes: np.ndarray,
    device: torch.device,
    path: Path,
    settings: dict,
    seed: int,
) -> torch.nn.Module:
    """The owner's teacher from its disk cache, or trained on its data and cached."""
    teacher = classifier(data.dim, classes.size).to(device)
    if path.is_file():
        teacher.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return teacher
    local = np.searchsorted(classes, data.train_y)
    x = torch.from_numpy(data.train_x).to(device)
    fit(
        teacher,
        x,
        torch.from_numpy(local).to(device),
        F.cross_entropy,
        epochs=int(settings.get("teacher-epochs", 40)),
        lr=float(settings.get("lr-teacher", 1e-3)),
        batch_size=128,
        seed=seed,
        weight_decay=1e-5,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(teacher.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a concurrent owner never reads half a file
    return teacher
