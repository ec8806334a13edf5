"""Is an owner's authentic reply an answer to what was asked? Checked before any use.

The schema (:mod:`azsl_flower.wire.schema`) checks dtypes, dimensions and finiteness; here
each reply is checked against its request and against what its owner declared at set-up:
shapes (one row per generated sample, one column per class), value ranges (probabilities
in [0, 1] that sum to 1 over the classes the owner covers, class ids in range, magnitudes
that cannot overflow a sum), and evaluation counts no larger than the test samples the
owner declared. A reply that fails raises :class:`ReplyError`; the transport counts it as
``invalid-reply`` and the delivery re-sends, then drops that owner: one broken or hostile
owner never stops the run.

What cannot be checked is whether an owner answers honestly within those bounds (a
teacher that says what it likes, counts that claim a perfect score): the README's threat
model states that trust.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping

import numpy as np

from azsl_flower.common.models import teacher_network_of
from azsl_flower.common.regularisers import regulariser_kind
from azsl_flower.service.dfzsl.directions import match_directions
from azsl_flower.wire import schema

__all__ = [
    "MAX_COUNT",
    "MAX_MAGNITUDE",
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "Check",
    "ReplyError",
    "check_evaluate",
    "check_feedback",
    "check_probe",
    "check_setup",
    "check_verify",
]

Check = Callable[[int, list[schema.Payload]], None]  # (node, its answers) -> raises ReplyError
MAX_MAGNITUDE = 1e20  # |value| of a gradient, loss or log-sum-exp: sums over owners stay finite
MAX_DIM = 1 << 20
# Test samples one owner may declare for one class: no test split holds more rows (2^31 - 1,
# the most a 32-bit index reaches), and 2^32 owners of such counts still sum inside int64.
# Evaluation counts are bounded by the declared ones (check_evaluate), so no sum overflows.
MAX_COUNT = (1 << 31) - 1
# A cosine teacher's logits are cosines / T: its temperature keeps them inside MAX_MAGNITUDE
# (T >= 1 / MAX_MAGNITUDE) and inside the owners' own accepted range (owner/policy.py, <= 10)
MIN_TEMPERATURE = 1 / MAX_MAGNITUDE
MAX_TEMPERATURE = 10.0
_TOL = 1e-3
_MAX_DECLARATION = 65536
_ROUNDING = 0.05  # row sums of probabilities an owner rounded (its answer-decimals)
_LOGIT_ROUNDING = 0.5  # the most an owner's answer-decimals (>= 0) moves one logit


class ReplyError(ValueError):
    """An authentic reply that does not answer the request (shape, range, class id, count)."""


def _shape(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    if a.shape != shape:
        raise ReplyError(f"{name} has shape {a.shape}, expected {shape}")


def _bounded(name: str, a: np.ndarray, lo: float = -MAX_MAGNITUDE) -> None:
    if a.size and (float(a.min()) < lo or float(np.abs(a).max()) > MAX_MAGNITUDE):
        raise ReplyError(f"{name} holds values outside [{lo:g}, {MAX_MAGNITUDE:g}]")


def _counts(name: str, a: np.ndarray) -> None:
    """Per-class sample counts: whole numbers in [0, MAX_COUNT] (sums cannot overflow)."""
    if a.dtype.kind not in "iu":
        raise ReplyError(f"{name} must hold whole numbers, not {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) > MAX_COUNT):
        raise ReplyError(
            f"{name} holds counts outside [0, {MAX_COUNT}] (largest {int(a.max())}): no test "
            "split holds that many samples of one class"
        )


def _classes(name: str, a: np.ndarray, num_classes: int) -> None:
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise ReplyError(f"{name} names classes outside 0..{num_classes - 1}")
    if np.unique(a).size != a.size:
        raise ReplyError(f"{name} names a class twice")


def _probs(name: str, p: np.ndarray, covered: np.ndarray | None, full: bool = True) -> None:
    """Probabilities: in [0, 1]; rows sum to 1 for a whole softmax (``full``), to at most 1
    for top-K or a label; an owner's answer-decimals rounding moves sums a little."""
    if p.size and (float(p.min()) < 0 or float(p.max()) > 1 + _TOL):
        raise ReplyError(f"{name} holds values outside [0, 1]")
    sums = p.sum(1)
    if p.size and (sums.max() > 1 + _ROUNDING or (full and sums.min() < 1 - _ROUNDING)):
        raise ReplyError(f"{name} rows do not sum to 1")
    if covered is not None:
        outside = np.ones(p.shape[1], dtype=bool)
        outside[covered] = False
        if p.size and float(np.abs(p[:, outside]).max(initial=0.0)) > _TOL:
            raise ReplyError(f"{name} gives probability to classes its owner does not cover")


def check_setup(
    num_classes: int, weights: bool, dfzsl: bool = False, statistics: str = ""
) -> Check:
    """Set-up declarations: class ids in range, the service's class count, a sane feature
    size, per-class test counts; in scenario ``weights`` a teacher of the declared shape;
    in scenario ``dfzsl`` (``dfzsl``) a cosine teacher's temperature; ``statistics`` (a
    regulariser's name, ``regulariser-answer=statistics``): its class statistics, which
    the service computes the regulariser from. Statistics sent are checked in any case."""

    def check(node: int, answers: list[schema.Payload]) -> None:
        for r in answers:
            if int(r.scalars["num_classes"]) != num_classes:  # type: ignore[call-overload]
                raise ReplyError(
                    f"declared {r.scalars['num_classes']} classes, the service's class list "
                    f"has {num_classes}; use the same att_splits.mat on both sides"
                )
            dim = int(r.scalars["dim"])  # type: ignore[call-overload]
            if not 1 <= dim <= MAX_DIM:
                raise ReplyError(f"declared feature size {dim}")
            if int(r.scalars["query_budget"]) < 0:  # type: ignore[call-overload]
                raise ReplyError("declared a negative query budget")
            for key in ("covered", "seen", "unseen"):
                _classes(key, r.arrays[key], num_classes)
            if not r.arrays["covered"].size:
                raise ReplyError("declared no class its teacher covers")
            if np.intersect1d(r.arrays["seen"], r.arrays["unseen"]).size:
                raise ReplyError("declared classes both seen and unseen")
            for key in ("test_seen_counts", "test_unseen_counts"):
                _shape(key, r.arrays[key], (num_classes,))
                _counts(key, r.arrays[key])
            if weights:
                _check_teacher(r, dim, num_classes)
            if dfzsl and "cosine_temperature" not in r.arrays:
                raise ReplyError(
                    "scenario dfzsl: declared no cosine teacher (cosine_temperature); the "
                    "owner's ClientApp does not run scenario dfzsl (update it)"
                )
            if "cosine_temperature" in r.arrays:  # scenario dfzsl
                _check_cosine(r, dim)
            if statistics and not _has_statistics(r, statistics):
                raise ReplyError(
                    f"regulariser-answer=statistics: the owner sent no {statistics} class "
                    "statistics (reg_* arrays) at set-up; its ClientApp may predate the mode"
                )
            _check_statistics(r, dim, num_classes)
            privacy_declaration(r)

    return check


def privacy_declaration(reply: schema.Payload) -> dict[str, object]:
    """What an owner declared at set-up about its answers and their differential privacy
    (results.json ``privacy``); ReplyError when it is not a JSON object of sane size."""
    text = str(reply.scalars["privacy"])
    try:
        declared = json.loads(text) if len(text) <= _MAX_DECLARATION else None
    except (ValueError, RecursionError):
        declared = None
    if not isinstance(declared, dict):
        raise ReplyError("the privacy declaration is not a JSON object (of at most 64 KiB)")
    eps, delta = float(reply.scalars["epsilon"]), float(reply.scalars["delta"])  # type: ignore[arg-type]
    if not (math.isfinite(eps) and math.isfinite(delta) and 0 <= delta < 1):
        raise ReplyError("epsilon and delta must be finite numbers, delta in [0, 1)")
    declared["epsilon"] = None if eps < 0 else eps
    declared["delta"] = delta
    return declared


def _check_cosine(r: schema.Payload, dim: int) -> None:
    """A cosine teacher's temperature T: its logits are cosines / T, so T must be one
    finite number in [MIN_TEMPERATURE, MAX_TEMPERATURE]; a smaller T could not answer
    probes within MAX_MAGNITUDE, and the directions recovered from T x logits would
    underflow (match_directions finds no direction)."""
    t = r.arrays["cosine_temperature"]
    value = float(t.ravel()[0]) if t.size == 1 else math.nan
    lo = float(np.float32(MIN_TEMPERATURE))  # the owner sends float32: its nearest value
    if not (math.isfinite(value) and lo <= value <= MAX_TEMPERATURE):
        shown = ", ".join(f"{float(v):g}" for v in t.ravel()[:4])
        raise ReplyError(
            f"cosine_temperature [{shown}]: must be one number in "
            f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]"
        )
    if "cosine_head" in r.arrays:
        _shape("cosine_head", r.arrays["cosine_head"], (r.arrays["covered"].size, dim))
        _bounded("cosine_head", r.arrays["cosine_head"])


def check_probe(
    probes: np.ndarray, covered: Mapping[int, np.ndarray], temperatures: Mapping[int, float]
) -> Check:
    """Scenario dfzsl: one logit per probe and per class the owner covers; each a cosine
    over the temperature the owner declared (|logit| x T <= 1, plus rounding); and logits
    from which a direction per class can be recovered (else ``match_directions`` would fail
    in ``aggregate_probe``, and with it the run)."""
    samples = int(probes.shape[0])

    def check(node: int, answers: list[schema.Payload]) -> None:
        t = temperatures[node]
        for r in answers:
            logits = r.arrays["logits"]
            _shape("logits", logits, (samples, covered[node].size))
            _bounded("logits", logits)
            top = float(np.abs(logits).max(initial=0.0))
            if top > (1 + _TOL) / t + _LOGIT_ROUNDING:
                raise ReplyError(
                    f"logits reach {top:g}: a cosine teacher of temperature {t:g} answers "
                    f"cosines / {t:g}, at most {1 / t:g} (plus rounding)"
                )
            try:
                match_directions(probes, logits, t)
            except ValueError as exc:
                raise ReplyError(f"no class directions follow from these logits: {exc}") from None

    return check


def _check_teacher(r: schema.Payload, dim: int, num_classes: int) -> None:
    if r.weights is None:
        raise ReplyError("scenario weights: the owner sent no teacher weights")
    covered = r.arrays["covered"]
    if not teacher_network_of(r.weights, dim, covered.size):
        raise ReplyError(f"teacher weights are not a teacher network of {dim}-d features")
    for w in r.weights.values():
        _bounded("teacher weights", w)


def _has_statistics(r: schema.Payload, name: str) -> bool:
    """Whether a set-up reply holds every class statistic regulariser ``name`` is made from."""
    wanted = [f"reg_{stat}" for stat, _, _ in regulariser_kind(name).statistics]
    return all(key in r.arrays for key in wanted)


def _check_statistics(r: schema.Payload, dim: int, num_classes: int) -> None:
    """Class statistics sent at set-up (scenario weights, regulariser-answer=statistics):
    one row per named class, of the declared feature size, bounded, variances > 0."""
    if not any(key.startswith("reg_") for key in r.arrays):
        return
    if "reg_classes" not in r.arrays:
        raise ReplyError("class statistics sent without reg_classes (the classes they are of)")
    k = r.arrays["reg_classes"]
    _classes("reg_classes", k, num_classes)
    for key, arr in r.arrays.items():  # every registered statistic: one row per class
        if key.startswith("reg_") and key != "reg_classes":
            rank = schema.REGULARISER_STATISTICS[key][1]
            _shape(key, arr, (k.size, dim) if rank == 2 else (k.size,))
            _bounded(key, arr)
    if "reg_var" in r.arrays and r.arrays["reg_var"].size and r.arrays["reg_var"].min() <= 0:
        raise ReplyError("reg_var must be > 0")


def check_feedback(
    samples: int,
    batch_size: int,
    dim: int,
    num_classes: int,
    covered: Mapping[int, np.ndarray],
    fields: frozenset[str],
    full: bool = True,
) -> Check:
    """Feedback on one pool of ``samples`` generated features: exactly the arrays of the
    asked response mode (:func:`azsl_flower.common.modes.feedback_fields`); ``full``: the
    mode answers a whole softmax (not top-K or a label)."""
    batches = -(-samples // batch_size)
    sizes = {"samples": samples, "batches": batches, "classes": num_classes, "dim": dim}
    shapes = {k: tuple(sizes[axis] for axis in axes) for k, axes in schema.FEEDBACK_AXES.items()}

    def check(node: int, answers: list[schema.Payload]) -> None:
        for r in answers:
            a = r.arrays
            if set(a) != fields:
                raise ReplyError(f"feedback holds {sorted(a)}; the mode asked for {sorted(fields)}")
            for key in fields:
                _shape(key, a[key], shapes[key])
                _bounded(key, a[key], **({"lo": 0} if key == "ce" else {}))
            _probs("probs", a["probs"], covered.get(node), full=full)

    return check


def check_verify(
    samples: int,
    num_classes: int,
    covered: Mapping[int, np.ndarray],
    fields: frozenset[str] = frozenset({"pred", "probs", "lse"}),
    full: bool = True,
) -> Check:
    """Verification answers for ``samples`` generated features, in the asked mode
    (``full``: a whole softmax, not top-K or a label)."""

    def check(node: int, answers: list[schema.Payload]) -> None:
        for r in answers:
            a = r.arrays
            if set(a) != fields:
                raise ReplyError(
                    f"verification holds {sorted(a)}; the mode asked for {sorted(fields)}"
                )
            _shape("pred", a["pred"], (samples,))
            _shape("probs", a["probs"], (samples, num_classes))
            if a["pred"].size and (a["pred"].min() < 0 or a["pred"].max() >= num_classes):
                raise ReplyError("pred names classes outside the label space")
            _probs("probs", a["probs"], covered.get(node), full=full)
            if "lse" in fields:
                _shape("lse", a["lse"], (samples,))
                _bounded("lse", a["lse"])

    return check


def check_evaluate(
    num_classes: int,
    values: int,
    declared: Mapping[int, tuple[np.ndarray, np.ndarray]],
) -> Check:
    """Per-class counts of each model (and the owner's teacher): the shapes asked for, and
    totals equal to the test samples the owner declared at set-up, correct <= total."""

    def check(node: int, answers: list[schema.Payload]) -> None:
        seen, unseen = declared[node]
        for r in answers:
            a = r.arrays
            for name, arr in a.items():
                want = (values, num_classes) if name.endswith("_curve") else (num_classes,)
                _shape(name, arr, want)
                if arr.size and arr.min() < 0:
                    raise ReplyError(f"{name} holds negative counts")
            for who in ("model", "teacher"):
                if not np.array_equal(a[f"{who}_seen_total"], seen) or not np.array_equal(
                    a[f"{who}_unseen_total"], unseen
                ):
                    raise ReplyError(f"{who} totals differ from the test counts declared at set-up")
                for part, total in (("seen", seen), ("unseen", unseen)):
                    if np.any(a[f"{who}_{part}_correct"] > total):
                        raise ReplyError(f"{who}_{part}_correct exceeds the declared test counts")
                if np.any(a[f"{who}_zsl_correct"] > unseen):
                    raise ReplyError(f"{who}_zsl_correct exceeds the declared test counts")
            curves = {k for k in a if k.endswith("_curve")}
            if (values > 1) != bool(curves) or (curves and len(curves) != 2):
                raise ReplyError("calibration curves missing or not asked for")
            for part, total in (("seen", seen), ("unseen", unseen)):
                key = f"model_{part}_curve"
                if key in a and np.any(a[key] > total[None, :]):
                    raise ReplyError(f"{key} exceeds the declared test counts")

    return check
