"""The wire format, defined once: every message kind, its fields, shapes and dtypes.

Apps and strategies build and read Flower ``RecordDict``s only through :func:`encode` and
:func:`decode`, which check every field both ways, so a malformed or unexpected payload
fails loudly at the boundary instead of deep inside training.

Layout of a ``RecordDict``: ``"arrays"`` (ArrayRecord of named numpy arrays),
``"weights"`` (ArrayRecord of a model's state dict, where the kind has one),
``"scalars"`` (ConfigRecord of numbers/strings/bools) and ``"settings"`` (ConfigRecord with
the run settings an owner needs to rebuild its state after a restart).

On the wire, the payloads one owner gets in one round trip travel together: :func:`bundle`
numbers them into one ``RecordDict``; :func:`to_bytes` serialises that (a JSON table of
contents, then the arrays' bytes) so :mod:`azsl_flower.crypto` can seal it;
:func:`envelope` is the only thing Flower then sees: header and ciphertext as raw bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

__all__ = [
    "ProtocolError",
    "Spec",
    "KINDS",
    "SETUP",
    "FEEDBACK",
    "VERIFY",
    "EVALUATE",
    "encode",
    "decode",
    "payload_nbytes",
    "bundle",
    "unbundle",
    "to_bytes",
    "from_bytes",
    "envelope",
    "open_envelope",
    "ENVELOPE",
    "REJECTED_CODE",
    "rejection",
    "parse_rejection",
    "BUDGET_CODE",
    "budget_refusal",
    "parse_budget_refusal",
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


F32, I64 = "float32", "int64"
_COUNTS = ("seen_correct", "seen_total", "unseen_correct", "unseen_total", "zsl_correct")

SETUP = Kind(
    "query.setup",
    request=Spec(arrays={}, settings=True),
    reply=Spec(
        arrays={"covered": (I64, 1), "seen": (I64, 1), "unseen": (I64, 1)},
        scalars={
            "dim": int,
            "num_classes": int,
            "train_size": int,
            "teacher_train_acc": float,
            "simulated": bool,
            # generated samples (feedback + verification) it answers per run; 0 = unlimited
            "query_budget": int,
        },
        # weights scenario only: the teacher and the KL regulariser's per-class statistics
        optional_arrays={"reg_mean": (F32, 2), "reg_var": (F32, 2), "reg_classes": (I64, 1)},
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
    reply=Spec(
        arrays={
            "probs": (F32, 2),
            "grad": (F32, 2),
            "ce": (F32, 1),
            "reg": (F32, 1),
            "lse": (F32, 1),  # log-sum-exp of the teacher's logits, per sample
        },
        optional_arrays={"grad_lse": (F32, 2)},  # asked with lse_grad, white-box only
    ),
)
VERIFY = Kind(
    "query.verify",
    request=Spec(arrays={"x": (F32, 2), "y": (I64, 1)}, settings=True),
    reply=Spec(arrays={"pred": (I64, 1), "probs": (F32, 2), "lse": (F32, 1)}),
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
KINDS = {k.message_type: k for k in (SETUP, FEEDBACK, VERIFY, EVALUATE)}


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


def decode(kind: Kind, direction: str, rd: RecordDict) -> Payload:
    """Unpack and validate a RecordDict; raises ProtocolError naming the bad field."""
    spec, where = _spec(kind, direction), f"{kind.message_type} {direction}"
    known = {"arrays", "scalars", "weights", "settings"}
    if set(rd.keys()) - known:
        raise ProtocolError(f"{where}: unknown records {sorted(set(rd.keys()) - known)}")
    if "arrays" not in rd or "scalars" not in rd:
        raise ProtocolError(f"{where}: missing 'arrays' or 'scalars' record")
    raw = {n: a.numpy() for n, a in rd.array_records["arrays"].items()}
    allowed = {**spec.arrays, **spec.optional_arrays}
    if set(raw) - set(allowed) or set(spec.arrays) - set(raw):
        raise ProtocolError(
            f"{where}: arrays {sorted(raw)} do not match the schema {sorted(spec.arrays)}"
        )
    arrays = {n: _check_array(where, n, a, *allowed[n]) for n, a in raw.items()}
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
        weights = {n: a.numpy() for n, a in rd.array_records["weights"].items()}
        for n, w in weights.items():
            if w.dtype.kind != "f" or not np.isfinite(w).all():
                raise ProtocolError(f"{where}: weight {n!r} must be finite floats")
    elif spec.weights == "required":
        raise ProtocolError(f"{where}: model weights missing")
    settings = dict(rd.config_records["settings"]) if "settings" in rd else None
    if spec.settings and settings is None:
        raise ProtocolError(f"{where}: run settings missing")
    return Payload(arrays, scalars, weights, settings)


def payload_nbytes(rd: RecordDict) -> int:
    """Bytes of array data in a RecordDict (what dominates the wire)."""
    return sum(
        int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
        for rec in rd.array_records.values()
        for a in rec.values()
    )


# -- transport: several payloads per message, serialised, sealed -------------------------------

ENVELOPE = "sealed"  # the one record of an encrypted message
RAW_BYTES = "raw-bytes"  # Array stype of its header and ciphertext fields


def bundle(parts: list[RecordDict]) -> RecordDict:
    """Number several encoded payloads into one RecordDict (one message per owner)."""
    rd = RecordDict()
    for i, part in enumerate(parts):
        for name, record in part.items():
            rd[f"{i}.{name}"] = record
    return rd


def unbundle(rd: RecordDict) -> list[RecordDict]:
    """Inverse of :func:`bundle`; ProtocolError on keys it did not write."""
    parts: dict[int, RecordDict] = {}
    for key, record in rd.items():
        idx, _, name = key.partition(".")
        if not idx.isdigit() or not name:
            raise ProtocolError(f"record {key!r} is not part of a bundle")
        parts.setdefault(int(idx), RecordDict())[name] = record
    if sorted(parts) != list(range(len(parts))):
        raise ProtocolError(f"bundle parts {sorted(parts)} are not numbered 0..n-1")
    return [parts[i] for i in range(len(parts))]


def to_bytes(rd: RecordDict) -> bytes:
    """Serialise a RecordDict of ArrayRecords and ConfigRecords for sealing.

    A JSON table of contents, then every Array's bytes as Flower already holds them: one
    copy in all (Flower's protobuf codec costs three, which showed in the wall time).
    """
    toc: list[dict[str, object]] = []
    blobs: list[bytes] = []
    for key, record in rd.items():
        if isinstance(record, ArrayRecord):
            items = []
            for name, arr in record.items():
                items.append([name, arr.dtype, list(arr.shape), arr.stype, len(arr.data)])
                blobs.append(arr.data)
            toc.append({"key": key, "arrays": items})
        elif isinstance(record, ConfigRecord):
            try:
                json.dumps(dict(record))
            except TypeError as exc:
                raise ProtocolError(f"record {key!r}: {exc}") from None
            toc.append({"key": key, "config": dict(record)})
        else:
            raise ProtocolError(f"record {key!r} of type {type(record).__name__} is not sent")
    head = json.dumps(toc).encode()
    return b"".join([len(head).to_bytes(8, "big"), head, *blobs])


def from_bytes(raw: bytes) -> RecordDict:
    """Inverse of :func:`to_bytes`; ProtocolError on anything it did not write."""
    try:
        n = int.from_bytes(raw[:8], "big")
        toc = json.loads(raw[8 : 8 + n].decode())
        view, offset, rd = memoryview(raw), 8 + n, RecordDict()
        for entry in toc:
            if "arrays" in entry:
                arrays = {}
                for name, dtype, shape, stype, size in entry["arrays"]:
                    if offset + size > len(raw):
                        raise ValueError("truncated")
                    data = bytes(view[offset : offset + size])
                    offset += size
                    arrays[name] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)
                rd[entry["key"]] = ArrayRecord(arrays)
            else:
                rd[entry["key"]] = ConfigRecord(entry["config"])
        if offset != len(raw):
            raise ValueError(f"{len(raw) - offset} trailing bytes")
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"payload is not a serialised RecordDict: {exc}") from None
    return rd


def _raw(data: bytes) -> Array:
    # bytes as they are: a numpy-typed Array would copy them twice more (np.save/np.load)
    return Array(dtype="uint8", shape=(len(data),), stype=RAW_BYTES, data=data)


def envelope(parts: list[tuple[bytes, bytes]]) -> RecordDict:
    """Header/ciphertext pairs (several only when the recipient's key is not yet known)."""
    arrays: dict[str, Array] = {}
    for i, (header, body) in enumerate(parts):
        arrays[f"header.{i}"] = _raw(header)
        arrays[f"body.{i}"] = _raw(body)
    rd = RecordDict()
    rd[ENVELOPE] = ArrayRecord(arrays)
    return rd


def open_envelope(rd: RecordDict) -> list[tuple[bytes, bytes]]:
    if set(rd.keys()) != {ENVELOPE} or ENVELOPE not in rd.array_records:
        raise ProtocolError(f"expected one {ENVELOPE!r} record, got {sorted(rd.keys())}")
    rec = rd.array_records[ENVELOPE]
    n = len(rec) // 2
    names = {f"{w}.{i}" for i in range(n) for w in ("header", "body")}
    if set(rec.keys()) != names:
        raise ProtocolError(f"envelope fields {sorted(rec.keys())} are not header/body pairs")
    out = []
    for i in range(n):
        h, b = rec[f"header.{i}"], rec[f"body.{i}"]
        if (h.dtype, h.stype, b.dtype, b.stype) != ("uint8", RAW_BYTES, "uint8", RAW_BYTES):
            raise ProtocolError("envelope fields must be raw uint8 bytes")
        out.append((bytes(h.data), bytes(b.data)))
    return out


REJECTED_CODE = 4100  # Flower Error code of an owner's "I rejected your message" reply
_REJECTED = "azsl-rejected:"


def rejection(reason: str, detail: str) -> str:
    """Error text an owner returns for a message it refused (names no secret)."""
    return f"{_REJECTED}{reason}: {detail}"


def parse_rejection(code: int, text: str) -> str | None:
    """The reason of an owner's rejection reply, or None for any other error."""
    if code != REJECTED_CODE or not text.startswith(_REJECTED):
        return None
    return text[len(_REJECTED) :].split(":", 1)[0]


BUDGET_CODE = 4101  # Flower Error code of an owner's "over my query budget" reply
_BUDGET = "azsl-budget-exceeded:"


def budget_refusal(budget: int, used: int, asked: int) -> str:
    """Error text of an owner refusing a request that would exceed its query budget."""
    return (
        f"{_BUDGET}{budget}:{used}:{asked}: this owner answers at most {budget} generated "
        f"samples per run (node-config query-budget); {used} are used and this request asks "
        f"{asked} more. The service should plan within the query_budget declared at set-up"
    )


def parse_budget_refusal(code: int, text: str) -> tuple[int, int, int] | None:
    """(budget, used, asked) of an owner's budget refusal, or None for any other error."""
    if code != BUDGET_CODE or not text.startswith(_BUDGET):
        return None
    fields = text[len(_BUDGET) :].split(":", 3)[:3]
    try:
        budget, used, asked = (int(f) for f in fields)
    except ValueError:
        return None
    return budget, used, asked
