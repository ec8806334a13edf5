"""The wire format, defined once: every message kind, its fields, shapes and dtypes.

Apps and strategies build and read payloads only through :func:`encode` and
:func:`decode`, which check every field both ways, so a malformed or unexpected payload
fails loudly at the boundary instead of deep inside training.

Layout of a payload ``RecordDict``: ``"arrays"`` (ArrayRecord of named numpy arrays),
``"weights"`` (ArrayRecord of a model's state dict, where the kind has one),
``"scalars"`` (ConfigRecord of numbers/strings/bools) and ``"settings"`` (ConfigRecord with
the run settings an owner needs to rebuild its state after a restart). How payloads travel
(bundled, serialised, sealed) is :mod:`azsl_flower.wire.codec`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from azsl_flower.common.regularisers import REGISTRY

__all__ = [
    "ProtocolError",
    "Spec",
    "Kind",
    "KINDS",
    "SETUP",
    "FEEDBACK",
    "FEEDBACK_AXES",
    "VERIFY",
    "EVALUATE",
    "DFZSL_PROBE",
    "Payload",
    "encode",
    "decode",
]


class ProtocolError(ValueError):
    """A payload does not match its kind's schema."""


@dataclass(frozen=True)
class Spec:
    """Schema of one direction of one message kind."""

    arrays: dict[str, tuple[str, int]]  # name -> (dtype, ndim)
    scalars: dict[str, type] = None  # type: ignore[assignment]
    optional_arrays: dict[str, tuple[str, int]] = None  # type: ignore[assignment]
    weights: str = "none"  # "none" | "required" | "optional"
    settings: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "scalars", self.scalars or {})
        object.__setattr__(self, "optional_arrays", self.optional_arrays or {})


@dataclass(frozen=True)
class Kind:
    message_type: str
    request: Spec
    reply: Spec
    # queries about service-made features: their rows (request array "x") count against
    # the owner's query budget, on both sides
    metered: bool = False

    def queried(self, arrays: dict[str, np.ndarray]) -> int:
        """Rows of a request payload an owner counts against its budget (0: not metered)."""
        return int(np.asarray(arrays["x"]).shape[0]) if self.metered else 0


F32, I64 = "float32", "int64"
# every registered regulariser's class statistics, as the set-up reply's reg_<name> arrays
REGULARISER_STATISTICS = {
    f"reg_{name}": (dtype, rank)
    for kind in REGISTRY.values()
    for name, dtype, rank in kind.statistics
}
_COUNTS = ("seen_correct", "seen_total", "unseen_correct", "unseen_total", "zsl_correct")

SETUP = Kind(
    "query.setup",
    request=Spec(arrays={}, settings=True),
    reply=Spec(
        arrays={
            "covered": (I64, 1),
            "seen": (I64, 1),
            "unseen": (I64, 1),
            # per-class test samples it will score (after its min-class-count): evaluation
            # counts are checked against them
            "test_seen_counts": (I64, 1),
            "test_unseen_counts": (I64, 1),
        },
        scalars={
            "dim": int,
            "num_classes": int,
            "simulated": bool,
            # generated samples (feedback + verification) it answers per run; 0 = unlimited
            "query_budget": int,
            # differential privacy of everything it answers: composed (epsilon, delta), or
            # epsilon -1 when some answer carries no guarantee
            "epsilon": float,
            "delta": float,
            # JSON: its response modes, rounding and DP mechanisms (azsl_flower/owner/dp.py)
            "privacy": str,
        },
        # weights scenario only: the teacher and the regulariser's per-class statistics
        # (reg_<name>: each registered regulariser's, common/regularisers.py; KL's mean, var,
        # classes); dfzsl only: the cosine teacher's temperature, and its head (unit class
        # directions, rows in `covered` order) where the owner's policy releases it
        optional_arrays={
            **REGULARISER_STATISTICS,
            "cosine_temperature": (F32, 1),
            "cosine_head": (F32, 2),
        },
        weights="optional",
    ),
)
FEEDBACK = Kind(
    "query.feedback",
    request=Spec(
        arrays={"x": (F32, 2), "y": (I64, 1)},
        # lse_grad: also return the input gradient of the logits' log-sum-exp (joint ensemble)
        scalars={"batch_size": int, "lse_grad": bool},
        settings=True,
    ),
    # what else comes depends on the response mode asked (azsl_flower/owner/answers.py):
    # strict black-box replies hold no gradient array at all
    reply=Spec(
        arrays={"probs": (F32, 2)},  # softmax, or its top-K / one-hot argmax
        optional_arrays={
            "grad": (F32, 2),  # white-box, or regulariser-answer=gradient
            "ce": (F32, 1),  # per batch; teacher-answer logits/probs or white-box
            "reg": (F32, 1),  # per batch; regulariser-answer value/gradient
            "lse": (F32, 1),  # log-sum-exp of the teacher's logits per sample; logits only
            "grad_lse": (F32, 2),  # asked with lse_grad, white-box with logits only
        },
    ),
    metered=True,
)
# The shape of each feedback reply array by its axes (samples: the pool's rows; batches: its
# batches of batch_size; classes, dim: the run's); the service holds every reply to it
# (strategies/checks.py), so a new array is checked once it has its line here.
FEEDBACK_AXES: dict[str, tuple[str, ...]] = {
    "probs": ("samples", "classes"),
    "grad": ("samples", "dim"),
    "grad_lse": ("samples", "dim"),
    "lse": ("samples",),
    "ce": ("batches",),
    "reg": ("batches",),
}
VERIFY = Kind(
    "query.verify",
    request=Spec(arrays={"x": (F32, 2), "y": (I64, 1)}, settings=True),
    reply=Spec(
        arrays={"pred": (I64, 1), "probs": (F32, 2)},
        optional_arrays={"lse": (F32, 1)},  # teacher-answer=logits only
    ),
    metered=True,
)
# dfzsl: the cosine teacher's logits (cosine / temperature, one column per covered class)
# on probe features the service made; what black-box direction recovery matches
DFZSL_PROBE = Kind(
    "query.dfzsl_probe",
    request=Spec(arrays={"x": (F32, 2)}, settings=True),
    reply=Spec(arrays={"logits": (F32, 2)}),
    metered=True,
)
EVALUATE = Kind(
    "evaluate",
    request=Spec(
        arrays={"unseen": (I64, 1)},
        # calibrated stacking: the first value scores the model; with more than one, the
        # reply also counts GZSL hits per value (a split=val run's calibration curve)
        optional_arrays={"calibration": (F32, 1)},
        weights="required",
        settings=True,
    ),
    reply=Spec(
        arrays={f"{who}_{c}": (I64, 1) for who in ("model", "teacher") for c in _COUNTS},
        # one row per calibration value: correct per class over all classes
        optional_arrays={"model_seen_curve": (I64, 2), "model_unseen_curve": (I64, 2)},
    ),
)
KINDS = {k.message_type: k for k in (SETUP, FEEDBACK, VERIFY, EVALUATE, DFZSL_PROBE)}


def _spec(kind: Kind, direction: str) -> Spec:
    if direction not in ("request", "reply"):
        raise ProtocolError(f"direction must be 'request' or 'reply', not {direction!r}")
    return kind.request if direction == "request" else kind.reply


def _check_array(where: str, name: str, arr: np.ndarray, dtype: str, ndim: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype != np.dtype(dtype) or arr.ndim != ndim:
        raise ProtocolError(
            f"{where}: field {name!r} must be {dtype} with {ndim} dim(s), got {arr.dtype} "
            f"with shape {arr.shape}"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ProtocolError(f"{where}: field {name!r} holds NaN/inf")
    return arr


def encode(
    kind: Kind,
    direction: str,
    arrays: dict[str, np.ndarray] | None = None,
    scalars: dict[str, object] | None = None,
    weights: dict[str, np.ndarray] | None = None,
    settings: dict[str, object] | None = None,
) -> RecordDict:
    """Validate a payload against its schema and pack it into a RecordDict."""
    spec, where = _spec(kind, direction), f"{kind.message_type} {direction}"
    arrays, scalars = arrays or {}, scalars or {}
    allowed = {**spec.arrays, **spec.optional_arrays}
    extra = set(arrays) - set(allowed)
    missing = set(spec.arrays) - set(arrays)
    if extra or missing:
        raise ProtocolError(
            f"{where}: unexpected arrays {sorted(extra)}, missing {sorted(missing)}"
        )
    if set(scalars) != set(spec.scalars):
        raise ProtocolError(f"{where}: scalars {sorted(scalars)}, expected {sorted(spec.scalars)}")
    rd = RecordDict()
    rd["arrays"] = ArrayRecord(
        {
            n: Array(np.ascontiguousarray(_check_array(where, n, a, *allowed[n])))
            for n, a in arrays.items()
        }
    )
    rd["scalars"] = ConfigRecord({n: spec.scalars[n](v) for n, v in scalars.items()})
    if weights is not None:
        if spec.weights == "none":
            raise ProtocolError(f"{where}: this kind carries no model weights")
        for n, w in weights.items():
            if not np.isfinite(w).all():
                raise ProtocolError(f"{where}: weight {n!r} holds NaN/inf")
        rd["weights"] = ArrayRecord({n: Array(np.ascontiguousarray(w)) for n, w in weights.items()})
    elif spec.weights == "required":
        raise ProtocolError(f"{where}: model weights are required")
    if settings is not None and not spec.settings:
        raise ProtocolError(f"{where}: this kind carries no run settings")
    if spec.settings:
        if settings is None:
            raise ProtocolError(f"{where}: run settings are required")
        rd["settings"] = ConfigRecord(dict(settings))  # type: ignore[arg-type]
    return rd


@dataclass
class Payload:
    arrays: dict[str, np.ndarray]
    scalars: dict[str, object]
    weights: dict[str, np.ndarray] | None
    settings: dict[str, object] | None


def _numpy(where: str, record: ArrayRecord | None) -> dict[str, np.ndarray]:
    """The arrays of a record; any array numpy cannot read (unknown dtype, object arrays,
    a bad header) is a ProtocolError, never another exception."""
    if record is None:
        raise ProtocolError(f"{where}: expected an array record")
    out = {}
    for name, arr in record.items():
        try:
            out[name] = arr.numpy()
        except Exception as exc:  # hostile input: nothing but ProtocolError leaves
            raise ProtocolError(
                f"{where}: array {name!r} is unreadable ({type(exc).__name__})"
            ) from None
    return out


def decode(kind: Kind, direction: str, rd: RecordDict) -> Payload:
    """Unpack and validate a RecordDict; raises ProtocolError naming the bad field."""
    spec, where = _spec(kind, direction), f"{kind.message_type} {direction}"
    known = {"arrays", "scalars", "weights", "settings"}
    if set(rd.keys()) - known:
        raise ProtocolError(f"{where}: unknown records {sorted(set(rd.keys()) - known)}")
    if "arrays" not in rd or "scalars" not in rd:
        raise ProtocolError(f"{where}: missing 'arrays' or 'scalars' record")
    raw = _numpy(where, rd.array_records.get("arrays"))
    allowed = {**spec.arrays, **spec.optional_arrays}
    if set(raw) - set(allowed) or set(spec.arrays) - set(raw):
        raise ProtocolError(
            f"{where}: arrays {sorted(raw)} do not match the schema {sorted(spec.arrays)}"
        )
    arrays = {n: _check_array(where, n, a, *allowed[n]) for n, a in raw.items()}
    if "scalars" not in rd.config_records or (
        "settings" in rd and "settings" not in rd.config_records
    ):
        raise ProtocolError(f"{where}: 'scalars' and 'settings' must be config records")
    scalars = dict(rd.config_records["scalars"])
    if set(scalars) != set(spec.scalars):
        raise ProtocolError(f"{where}: scalars {sorted(scalars)}, expected {sorted(spec.scalars)}")
    for n, typ in spec.scalars.items():
        value = scalars[n]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = scalars[n] = float(value)
        if not isinstance(value, typ) or isinstance(value, bool) != (typ is bool):
            raise ProtocolError(f"{where}: scalar {n!r} must be {typ.__name__}, got {value!r}")
    weights = None
    if "weights" in rd:
        if spec.weights == "none":
            raise ProtocolError(f"{where}: unexpected model weights")
        weights = _numpy(where, rd.array_records.get("weights"))
        for n, w in weights.items():
            if w.dtype.kind != "f" or not np.isfinite(w).all():
                raise ProtocolError(f"{where}: weight {n!r} must be finite floats")
    elif spec.weights == "required":
        raise ProtocolError(f"{where}: model weights missing")
    settings = dict(rd.config_records["settings"]) if "settings" in rd else None
    if spec.settings and settings is None:
        raise ProtocolError(f"{where}: run settings missing")
    return Payload(arrays, scalars, weights, settings)
