"""The owner's state: its data and teacher, trained once per (data, settings) and cached.

Everything here runs where the private features live. The teacher is trained on first use
and kept on the owner's disk (keyed by its data and teacher settings) and in memory, so a
SuperNode that answers each message in a new process does not retrain it.
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

from azsl_flower.common.config import TEACHER_KEYS, resolve_cache_dir
from azsl_flower.common.models import classifier, fit, resolve_device, state_to_numpy
from azsl_flower.owner.data import OwnerData, load_owner_data
from azsl_flower.owner.dfzsl import train_cosine_teacher
from azsl_flower.owner.oracle import FeedbackOracle, make_regulariser

__all__ = ["OwnerState", "owner_state", "prune_teachers", "teacher_weights"]


@dataclass
class OwnerState:
    data: OwnerData
    oracle: FeedbackOracle
    teacher_file: Path | None = None


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
    cosine = str(settings.get("scenario")) == "dfzsl"  # DFZSL's cosine teacher, not the MLP
    if cosine:  # only then in the key: cached MLP teachers keep their keys
        teacher_cfg["cosine-temperature"] = float(settings["dfzsl-temperature"])
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
        if cosine:
            teacher = train_cosine_teacher(
                data.train_x,
                np.searchsorted(classes, data.train_y),
                classes.size,
                float(settings["dfzsl-temperature"]),
                device,
                path,
                epochs=int(settings.get("teacher-epochs", 40)),
                lr=float(settings.get("lr-teacher", 1e-3)),
                seed=seed,
            )
        else:
            teacher = _teacher(data, classes, device, path, settings, seed)
    teacher.eval()
    reg = make_regulariser(reg_name, data.train_x, data.train_y, int(settings.get("seed", 0)))
    oracle = FeedbackOracle(teacher, classes, data.num_classes, reg.to(device), device)
    while len(_STATE) >= 8:  # a simulation process may serve several owners: bound memory
        _STATE.pop(next(iter(_STATE)))
    _STATE[state_key] = OwnerState(data, oracle, path)
    return _STATE[state_key]


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
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:  # owner-readable only: a teacher is private too
        torch.save(teacher.state_dict(), fh)
    os.replace(tmp, path)  # atomic: a concurrent owner never reads half a file
    return teacher


def prune_teachers(state: OwnerState, keep: int) -> None:
    """Keep the ``keep`` most recently used teacher files of this cache (0: keep all).

    Every new teacher setting a run asks for (epochs, learning rate, split) leaves a file;
    a bounded cache keeps that from filling the owner's disk. The teacher in use stays."""
    if not keep or state.teacher_file is None:
        return
    current = state.teacher_file
    if current.exists():
        os.utime(current)  # most recently used
    files = sorted(
        current.parent.glob("teacher-*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    for old in files[keep:]:
        if old != current:
            old.unlink(missing_ok=True)
