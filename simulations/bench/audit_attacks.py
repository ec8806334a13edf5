"""The leakage audit's attacks on one owner in one mode (``simulations/bench/audit.py`` runs them).

Each attack plays the honest-but-curious service against answers built by the owner's own
code (``azsl_flower/owner/answers.py``), and is scored against the ground truth the
simulation knows: statistics recovery, the prototype attack, model extraction and
inversion (:func:`audit_mode` runs them all). A new attack goes here and into
:func:`audit_mode`'s result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from azsl_flower.common.metrics import ClassCounts, zsl_gzsl
from azsl_flower.common.models import Generator, classifier, fit, predict_logits
from azsl_flower.common.semantics import load_class_side
from azsl_flower.owner.answers import feedback_answer, verify_answer
from azsl_flower.owner.evaluation import evaluate_model
from azsl_flower.owner.oracle import KLRegulariser
from azsl_flower.owner.privacy import OwnerPrivacy
from azsl_flower.owner.state import OwnerState
from azsl_flower.service.baseline import KLStatsFit, ncm_classifier

__all__ = ["audit_mode", "extract", "recover_statistics"]


def recover_statistics(
    st: OwnerState,
    policy: OwnerPrivacy,
    settings: dict[str, Any],
    rng: np.random.Generator,
    value_classes: int = 5,
    per_class: int = 8,
) -> dict[str, Any] | None:
    """The strongest simple statistics attack the mode allows; None when it allows none."""
    asked = settings["regulariser-answer"]
    classes = st.data.covered_classes
    d = st.data.dim
    if settings["scenario"] == "weights" or asked == "statistics":
        # sent at set-up (owner/handlers.py sends the state's regulariser's statistics:
        # exact, or its stats-epsilon release): nothing to attack, the release itself
        reg = st.oracle.regulariser
        if asked == "none" or not isinstance(reg, KLRegulariser):
            return None
        s = reg.stats()
        return {"mean": s["mean"], "var": s["var"], "classes": s["classes"], "samples": 0}
    if asked == "gradient":
        # crafted features: every dimension varies inside each class's group of samples
        y = np.repeat(classes, per_class)
        x = rng.uniform(0.0, 1.0, (y.size, d)).astype(np.float32)
        bs = 32 * per_class
        fit = KLStatsFit(st.data.num_classes, d)
        alpha = float(settings["alpha"])
        g = feedback_answer(st.oracle, x, y, bs, settings, policy)["grad"]
        samples = y.size
        if settings["scenario"] == "whitebox":
            # the same batch with alpha = 0: only the teacher's gradient; the difference
            # is alpha ∇R exactly (alpha is the service's run setting)
            zero = feedback_answer(st.oracle, x, y, bs, dict(settings, alpha=0.0), policy)
            g = g - zero["grad"]
            samples *= 2
        fit.add(x, y, g, alpha, bs, classes)
        mean, var, got = fit.estimate()
        return {"mean": mean, "var": var, "classes": got, "samples": samples}
    if asked == "value":
        return _value_attack(st, policy, settings, classes[:value_classes])
    return None


def _value_attack(
    st: OwnerState, policy: OwnerPrivacy, settings: dict[str, Any], classes: np.ndarray
) -> dict[str, Any]:
    """R for batches of two: base, and one dimension moved by ±δ: 2D+1 batches per class
    give every dimension's mean and variance (R is a sum of per-dimension terms)."""
    d, delta = st.data.dim, 0.5
    base_m, spread = np.full(d, 0.2, np.float32), np.full(d, 0.3, np.float32)
    pair = np.stack([base_m + spread, base_m - spread])
    shifts = [np.zeros(d, np.float32)]
    for k in range(d):
        for sign in (1.0, -1.0):
            e = np.zeros(d, np.float32)
            e[k] = sign * delta
            shifts.append(e)
    xs = np.concatenate([pair + s for s in shifts]).astype(np.float32)
    means, variances = [], []
    for c in classes:
        y = np.full(xs.shape[0], c, dtype=np.int64)
        r = feedback_answer(st.oracle, xs, y, 2, settings, policy)["reg"].astype(np.float64)
        r0, rp, rm = r[0], r[1::2], r[2::2]
        var = delta**2 / (d * (rp + rm - 2 * r0))
        means.append(base_m - (rp - rm) * d * var / (2 * delta))
        variances.append(var)
    return {
        "mean": np.stack(means).astype(np.float32),
        "var": np.stack(variances).astype(np.float32),
        "classes": classes,
        "samples": int(xs.shape[0] * classes.size),
        "samples_per_class": int(xs.shape[0]),
    }


def _rel_err(est: np.ndarray, true: np.ndarray) -> float:
    est = np.where(np.isfinite(est), est, 0.0)
    return float(np.median(np.linalg.norm(est - true, axis=1) / np.linalg.norm(true, axis=1)))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.where(np.isfinite(a), a, 0.0)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def _h(model: torch.nn.Module, st: OwnerState) -> dict[str, float]:
    c = evaluate_model(model, st.data, st.data.unseen_classes, torch.device("cpu"))
    counts = ClassCounts(*(c[k] for k in ClassCounts.__dataclass_fields__))
    return zsl_gzsl(counts, "all")


def _teacher_pred(st: OwnerState, x: np.ndarray) -> np.ndarray:
    return st.oracle.probs(x).argmax(1)


def extract(
    st: OwnerState, policy: OwnerPrivacy, settings: dict[str, Any], queries: np.ndarray, seed: int
) -> dict[str, Any]:
    """A surrogate trained only on the mode's answers to ``queries``; scored on real data."""
    ans = verify_answer(st.oracle, queries, settings, policy)["probs"].astype(np.float32)
    target = ans / np.maximum(ans.sum(1, keepdims=True), 1e-12)
    torch.manual_seed(seed)
    model = classifier(queries.shape[1], st.data.num_classes)

    def soft_ce(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return -(p * F.log_softmax(logits, 1)).sum(1).mean()

    fit(
        model,
        torch.from_numpy(queries),
        torch.from_numpy(target),
        soft_ce,
        epochs=5,
        lr=1e-3,
        seed=seed,
    )
    x = np.concatenate([st.data.test_seen_x, st.data.test_unseen_x])
    agree = predict_logits(model, torch.from_numpy(x)).argmax(1).numpy() == _teacher_pred(st, x)
    return {
        "agreement": float(agree.mean()),
        "h": _h(model, st)["h"],
        "queries": int(queries.shape[0]),
    }


def _generated(run_dir: Path | None, st: OwnerState, data_dir: str, per_class: int, seed: int):
    """Features from a run's trained generator (the service's own queries), or None."""
    if run_dir is None or not (run_dir / "generator.pt").is_file():
        return None
    sem = load_class_side("xlsa17", data_dir, "att").semantics
    state = torch.load(run_dir / "generator.pt", weights_only=True)
    noise = state["net.0.weight"].shape[1] - sem.shape[1]
    gen = Generator(sem.shape[1], noise, st.data.dim)
    gen.load_state_dict(state)
    gen.eval()
    classes = st.data.covered_classes
    y = np.repeat(classes, per_class)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = gen(torch.from_numpy(sem[y]), torch.randn(y.size, noise, generator=g)).numpy()
    return x.astype(np.float32), y


def audit_mode(
    st: OwnerState,
    policy: OwnerPrivacy,
    settings: dict[str, Any],
    generated: tuple[np.ndarray, np.ndarray] | None,
    seed: int,
    value_classes: int,
    per_class: int = 100,
) -> dict[str, Any]:
    """Every attack of the audit against one owner in one mode."""
    policy.check(settings)  # the service only asks what the owner allows
    rng = np.random.default_rng(seed)
    truth = KLRegulariser.from_features(st.data.train_x, st.data.train_y).stats()
    true_mean = dict(zip(truth["classes"].tolist(), truth["mean"], strict=True))
    true_var = dict(zip(truth["classes"].tolist(), truth["var"], strict=True))
    out: dict[str, Any] = {}
    rec = recover_statistics(st, policy, settings, rng, value_classes)
    candidates: dict[str, np.ndarray] = {}
    classes = st.data.covered_classes
    queries = []
    if rec is not None:
        cls = rec["classes"]
        tm = np.stack([true_mean[int(c)] for c in cls])
        tv = np.stack([true_var[int(c)] for c in cls])
        out["stats"] = {
            "mean_rel_err": _rel_err(rec["mean"], tm),
            "var_rel_err": _rel_err(rec["var"], tv),
            "classes": int(cls.size),
            "samples": rec["samples"],
        }
        if cls.size == classes.size:
            model = ncm_classifier(rec["mean"], cls, st.data.num_classes)
            out["prototype_h"] = _h(model, st)["h"] if model is not None else None
            candidates["recovered statistics"] = rec["mean"]
            std = np.sqrt(np.clip(np.nan_to_num(rec["var"]), 0, None))
            y = np.repeat(np.arange(cls.size), per_class)
            x = rec["mean"][y] + std[y] * rng.standard_normal((y.size, st.data.dim))
            queries.append(np.clip(x, 0, None).astype(np.float32))
        else:
            out["prototype_h"] = None
            out["stats"]["samples_all_classes"] = int(rec["samples"] / cls.size * classes.size)
    if generated is not None:
        gx, gy = generated
        queries.append(gx)
        keep = _teacher_pred(st, gx) == gy
        means = np.stack(
            [
                gx[(gy == c) & keep].mean(0) if ((gy == c) & keep).any() else gx[gy == c].mean(0)
                for c in classes
            ]
        )
        candidates["verified generated features"] = means
    if queries:
        out["extraction"] = extract(st, policy, settings, np.concatenate(queries), seed)
    tm = np.stack([true_mean[int(c)] for c in classes])
    cos = {k: float(np.median(_cos(v, tm))) for k, v in candidates.items()}
    if cos:
        best = max(cos, key=cos.get)  # type: ignore[arg-type]
        out["inversion"] = {"cosine": cos[best], "from": best, "all": cos}
    return out
