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

from azsl_flower.data import OwnerData, load_owner_data
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
    "Regulariser",
    "KLRegulariser",
    "MMDRegulariser",
    "make_regulariser",
    "FeedbackOracle",
    "OwnerState",
    "owner_state",
    "evaluate_model",
]

REGULARISERS = ("none", "kl", "mmd")


class Regulariser:
    """R(x̃ | y): distance between generated and the owner's real per-class distributions."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())

    def to(self, device: torch.device) -> Regulariser:
        return self


class KLRegulariser(Regulariser):
    """Mean over classes in the batch of KL(N(gen) || N(real)), per-class diagonal Gaussians.

    Averaged over feature dimensions so alpha does not scale with the feature size.
    """

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, classes: torch.Tensor) -> None:
        self.mean, self.var = mean, var
        self.index = {int(c): i for i, c in enumerate(classes.tolist())}

    @classmethod
    def from_features(cls, x: np.ndarray, y: np.ndarray) -> KLRegulariser:
        classes = np.unique(y)
        mean = np.stack([x[y == c].mean(0) for c in classes])
        var = np.stack([x[y == c].var(0) for c in classes])
        floor = 1e-2 * float(var.mean()) + 1e-8  # ReLU features: many near-constant dims
        return cls(
            torch.from_numpy(mean).float(),
            torch.from_numpy(np.maximum(var, floor)).float(),
            torch.from_numpy(classes),
        )

    def stats(self) -> dict[str, np.ndarray]:
        classes = np.array(sorted(self.index, key=self.index.get), dtype=np.int64)
        return {"mean": self.mean.cpu().numpy(), "var": self.var.cpu().numpy(), "classes": classes}

    def to(self, device: torch.device) -> KLRegulariser:
        self.mean, self.var = self.mean.to(device), self.var.to(device)
        return self

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = []
        for c in torch.unique(y).tolist():
            i = self.index.get(int(c))
            xc = x[y == c]
            if i is None or xc.shape[0] < 2:
                continue
            m, v = xc.mean(0), xc.var(0, unbiased=False) + 1e-6
            mr, vr = self.mean[i], self.var[i]
            kl = 0.5 * (torch.log(vr / v) + (v + (m - mr) ** 2) / vr - 1.0)
            terms.append(kl.mean())
        return torch.stack(terms).mean() if terms else x.sum() * 0.0


class MMDRegulariser(Regulariser):
    """Per-class squared MMD with a sum of RBF kernels (bandwidths around the median distance)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, per_class: int = 64, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.real: dict[int, torch.Tensor] = {}
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            idx = rng.choice(idx, size=min(per_class, idx.size), replace=False)
            self.real[int(c)] = torch.from_numpy(x[idx]).float()
        sample = torch.cat(list(self.real.values()))[:512]
        d2 = torch.cdist(sample, sample).pow(2)
        self.scales = [float(d2[d2 > 0].median()) * f for f in (0.25, 1.0, 4.0)]

    def to(self, device: torch.device) -> MMDRegulariser:
        self.real = {c: r.to(device) for c, r in self.real.items()}
        return self

    def _k(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / s) for s in self.scales) / len(self.scales)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = []
        for c in torch.unique(y).tolist():
            r = self.real.get(int(c))
            g = x[y == c]
            if r is None or g.shape[0] < 2:
                continue
            terms.append(self._k(g, g).mean() + self._k(r, r).mean() - 2 * self._k(g, r).mean())
        return torch.stack(terms).mean() if terms else x.sum() * 0.0


def make_regulariser(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0) -> Regulariser:
    if name == "kl":
        return KLRegulariser.from_features(x, y)
    if name == "mmd":
        return MMDRegulariser(x, y, seed=seed)
    if name == "none":
        return Regulariser()
    raise ValueError(f"unknown regulariser {name!r}; choose one of {REGULARISERS}.")


@dataclass
class FeedbackOracle:
    """Teacher + regulariser: answers feedback and verification queries on generated features.

    ``classes`` maps the teacher's outputs to global class ids. Used by the owner, and by
    the service only in the ``weights`` scenario (where the owner sent weights and stats).
    """

    teacher: nn.Module
    classes: np.ndarray
    num_classes: int
    regulariser: Regulariser
    device: torch.device

    def _global_probs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.new_zeros(logits.shape[0], self.num_classes)
        probs[:, torch.as_tensor(self.classes, device=logits.device)] = logits.softmax(1)
        return probs

    def feedback(
        self, x: np.ndarray, y: np.ndarray, batch_size: int, whitebox: bool, alpha: float
    ) -> dict[str, np.ndarray]:
        """Per batch: teacher softmax, CE and R values, and the gradient w.r.t. x̃.

        White-box: grad of CE(T(x̃), y) + alpha*R(x̃). Black-box: grad of alpha*R(x̃) only,
        which depends on the owner's feature statistics and never on the teacher.
        """
        self.teacher.eval()
        local = np.full(self.num_classes, -1, dtype=np.int64)
        local[self.classes] = np.arange(self.classes.size)
        xs = torch.from_numpy(np.ascontiguousarray(x)).float().to(self.device)
        ys = torch.from_numpy(np.ascontiguousarray(y)).long().to(self.device)
        ys_local = torch.from_numpy(local[y]).to(self.device)
        probs, grads, ces, regs = [], [], [], []
        for i in range(0, xs.shape[0], batch_size):
            xb = xs[i : i + batch_size].clone().requires_grad_(True)
            yb, yl = ys[i : i + batch_size], ys_local[i : i + batch_size]
            known = yl >= 0
            logits = self.teacher(xb)
            ce = (
                F.cross_entropy(logits[known], yl[known], reduction="sum") / xb.shape[0]
                if known.any()
                else xb.sum() * 0.0
            )
            reg = self.regulariser(xb, yb)
            if whitebox:
                (g,) = torch.autograd.grad(ce + alpha * reg, xb)
            elif reg.requires_grad:
                (g,) = torch.autograd.grad(alpha * reg, xb)
            else:
                g = torch.zeros_like(xb)
            probs.append(self._global_probs(logits.detach()))
            grads.append(g.detach())
            ces.append(float(ce.detach()))
            regs.append(float(reg.detach()))
        return {
            "probs": torch.cat(probs).cpu().numpy().astype(np.float32),
            "grad": torch.cat(grads).cpu().numpy().astype(np.float32),
            "ce": np.asarray(ces, dtype=np.float32),
            "reg": np.asarray(regs, dtype=np.float32),
        }

    @torch.no_grad()
    def probs(self, x: np.ndarray) -> np.ndarray:
        xs = torch.from_numpy(np.ascontiguousarray(x)).float().to(self.device)
        return self._global_probs(predict_logits(self.teacher, xs)).cpu().numpy()


# ---------------------------------------------------------------------------------------
# Owner state: data + teacher, trained once per (data, config) and cached
# ---------------------------------------------------------------------------------------


@dataclass
class OwnerState:
    data: OwnerData
    oracle: FeedbackOracle
    teacher_train_accuracy: float


_STATE: dict[str, OwnerState] = {}

TEACHER_KEYS = (
    "dataset",
    "data-dir",
    "feature-file",
    "teacher",
    "teacher-epochs",
    "lr-teacher",
    "seed",
)


def _cache_dir(settings: dict) -> Path:
    raw = settings.get("cache-dir") or os.environ.get("AZSL_CACHE_DIR") or "~/.cache/azsl-flower"
    return Path(str(raw)).expanduser()


def owner_state(settings: dict, partition_id: int, num_partitions: int) -> OwnerState:
    """Load this owner's data and teacher (train it once; reuse from memory or disk cache)."""
    data = load_owner_data(
        str(settings["dataset"]),
        str(settings.get("data-dir", "")),
        str(settings.get("feature-file", "res101.mat")),
        str(settings["teacher"]),
        partition_id,
        num_partitions,
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
    teacher = classifier(data.dim, classes.size).to(device)
    path = _cache_dir(settings) / f"teacher-{key}.pt"
    if path.is_file():
        teacher.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    else:
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
            seed=int(settings.get("seed", 0)) + 7919 * partition_id,
            weight_decay=1e-5,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(teacher.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: a concurrent owner never reads half a file
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
) -> dict[str, np.ndarray]:
    """Per-class counts of a global-label-space model (or of the teacher if model is None)."""
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
        pred_all = scores.argmax(1) if x.shape[0] else np.zeros(0, dtype=np.int64)
        pred_zsl = None
        if is_unseen and unseen.size and x.shape[0]:
            pred_zsl = unseen[scores[:, unseen].argmax(1)]
        correct, total, zsl = count_predictions(pred_all, pred_zsl, y, is_unseen, data.num_classes)
        out[f"{split}_correct"], out[f"{split}_total"] = correct, total
        if is_unseen:
            out["zsl_correct"] = zsl
    return out


def model_from_weights(weights: dict[str, np.ndarray], device: torch.device) -> nn.Module:
    """Rebuild a classifier MLP from its weights (shapes give the sizes)."""
    in_dim = int(weights["0.weight"].shape[1])
    out_dim = int(weights["6.weight"].shape[0])
    return load_numpy_state(classifier(in_dim, out_dim), weights).to(device).eval()


def teacher_weights(state: OwnerState) -> dict[str, np.ndarray]:
    return state_to_numpy(state.oracle.teacher)
