"""How payloads travel: several per message, serialised in one copy, in a sealed envelope.

The payloads one owner gets in one round trip travel together: :func:`bundle` numbers them
into one ``RecordDict``; :func:`to_bytes` serialises that (a JSON table of contents, then
the arrays' bytes) so :mod:`azsl_flower.wire.crypto` can seal it; :func:`envelope` is the
only thing Flower then sees: header and ciphertext as raw bytes.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from azsl_flower.wire.schema import ProtocolError

__all__ = [
    "ENVELOPE",
    "RAW_BYTES",
    "payload_nbytes",
    "bundle",
    "unbundle",
    "to_bytes",
    "from_bytes",
    "envelope",
    "open_envelope",
]


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
    """Inverse of :func:`to_bytes`; ProtocolError on anything it did not write.

    Strict, because the other end may be hostile: every table-of-contents entry is checked
    for its types before it is used, and no input raises anything but ProtocolError.
    """
    try:
        n = int.from_bytes(raw[:8], "big")
        if n > len(raw) - 8:
            raise ValueError("truncated table of contents")
        toc = json.loads(raw[8 : 8 + n].decode())
        if not isinstance(toc, list):
            raise ValueError("the table of contents is not a list")
        view, offset, rd = memoryview(raw), 8 + n, RecordDict()
        for entry in toc:
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                raise ValueError("a table-of-contents entry is not a keyed object")
            if "arrays" in entry:
                arrays = {}
                for item in _items(entry["arrays"]):
                    name, dtype, shape, stype, size = item
                    if offset + size > len(raw):
                        raise ValueError("truncated")
                    data = bytes(view[offset : offset + size])
                    offset += size
                    arrays[name] = Array(dtype=dtype, shape=tuple(shape), stype=stype, data=data)
                rd[entry["key"]] = ArrayRecord(arrays)
            elif isinstance(entry.get("config"), dict):
                rd[entry["key"]] = ConfigRecord(entry["config"])
            else:
                raise ValueError("a table-of-contents entry is neither arrays nor config")
        if offset != len(raw):
            raise ValueError(f"{len(raw) - offset} trailing bytes")
    except ProtocolError:
        raise
    except Exception as exc:  # hostile input: nothing but ProtocolError leaves
        raise ProtocolError(
            f"payload is not a serialised RecordDict: {type(exc).__name__}: {exc}"[:300]
        ) from None
    return rd


def _items(items: object) -> list[tuple[str, str, list[int], str, int]]:
    """Array entries of a table of contents, each checked for its types."""
    if not isinstance(items, list):
        raise ValueError("arrays entry is not a list")
    out = []
    for item in items:
        ok = isinstance(item, list) and len(item) == 5
        if ok:
            name, dtype, shape, stype, size = item
            ok = (
                isinstance(name, str)
                and isinstance(dtype, str)
                and isinstance(stype, str)
                and isinstance(shape, list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                and isinstance(size, int)
                and not isinstance(size, bool)
                and size >= 0
            )
        if not ok:
            raise ValueError("an array entry is not [name, dtype, shape, stype, size]")
        out.append(tuple(item))
    return out  # type: ignore[return-value]


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
