"""The wire format: every kind round-trips; malformed payloads fail at the boundary."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from azsl_flower.wire.codec import payload_nbytes
from azsl_flower.wire.schema import (
    DFZSL_PROBE,
    EVALUATE,
    FEEDBACK,
    KINDS,
    SETUP,
    VERIFY,
    Kind,
    ProtocolError,
    Spec,
    decode,
    encode,
)
from tests.conftest import KIND_CASES, make_payload
from tests.conftest import PAYLOAD_SETTINGS as SETTINGS


def test_kinds_registry():
    kinds = (SETUP, FEEDBACK, VERIFY, EVALUATE, DFZSL_PROBE)
    assert sorted(KINDS) == sorted(k.message_type for k in kinds)
    assert all(KINDS[k].message_type == k for k in KINDS)


def test_metered_kinds_count_the_rows_an_owner_answers():
    """Queries about service-made features count against the budget; set-up and
    evaluation do not."""
    x = np.zeros((6, 3), np.float32)
    assert {k.message_type for k in KINDS.values() if k.metered} == {
        "query.feedback",
        "query.verify",
        "query.dfzsl_probe",
    }
    assert DFZSL_PROBE.queried({"x": x}) == VERIFY.queried({"x": x, "y": np.zeros(6)}) == 6
    assert SETUP.queried({}) == 0 and EVALUATE.queried({"unseen": np.zeros(2)}) == 0


@pytest.mark.parametrize(("name", "direction"), KIND_CASES)
@pytest.mark.parametrize("optional", [True, False])
def test_round_trip(name, direction, optional):
    kind = KINDS[name]
    p = make_payload(kind, direction, optional)
    out = decode(kind, direction, encode(kind, direction, **p))
    assert set(out.arrays) == set(p["arrays"])
    for n, a in p["arrays"].items():
        assert out.arrays[n].dtype == a.dtype
        np.testing.assert_array_equal(out.arrays[n], a)
    assert out.scalars == p["scalars"]
    for n, v in out.scalars.items():
        assert type(v) is type(p["scalars"][n])
    if p["weights"] is None:
        assert out.weights is None
    else:
        assert set(out.weights) == set(p["weights"])
        for n, w in p["weights"].items():
            np.testing.assert_array_equal(out.weights[n], w)
    assert out.settings == p["settings"]


def test_scalars_coerced_to_declared_type():
    p = make_payload(SETUP, "reply")
    p["scalars"]["dim"] = np.int64(64)
    out = decode(SETUP, "reply", encode(SETUP, "reply", **p))
    assert out.scalars["dim"] == 64 and type(out.scalars["dim"]) is int
    ratio = Kind("query.ratio", request=Spec(arrays={}, scalars={"r": float}), reply=Spec({}))
    out = decode(ratio, "request", encode(ratio, "request", scalars={"r": 1}))
    assert type(out.scalars["r"]) is float  # an int where a float is declared


@pytest.mark.parametrize(("name", "direction"), KIND_CASES)
def test_payload_nbytes(name, direction):
    kind = KINDS[name]
    p = make_payload(kind, direction)
    rd = encode(kind, direction, **p)
    expected = sum(a.nbytes for a in p["arrays"].values())
    expected += sum(w.nbytes for w in (p["weights"] or {}).values())
    assert payload_nbytes(rd) == expected


# ---------------------------------------------------------------------------------------
# encode errors
# ---------------------------------------------------------------------------------------


def _feedback_request(**arrays):
    base = {"x": np.zeros((4, 3), dtype=np.float32), "y": np.zeros(4, dtype=np.int64)}
    base.update(arrays)
    return base


def _encode_fb(arrays, **kw):
    kw.setdefault("scalars", {"batch_size": 2, "lse_grad": False})
    kw.setdefault("settings", SETTINGS)
    return encode(FEEDBACK, "request", arrays=arrays, **kw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("x", np.zeros((4, 3), dtype=np.float64)),
        ("y", np.zeros(4, dtype=np.int32)),
        ("y", np.zeros(4, dtype=np.float32)),
    ],
)
def test_encode_wrong_dtype(field, value):
    with pytest.raises(ProtocolError, match=rf"field '{field}' must be"):
        _encode_fb(_feedback_request(**{field: value}))


@pytest.mark.parametrize(
    ("field", "value"),
    [("x", np.zeros(4, dtype=np.float32)), ("y", np.zeros((4, 1), dtype=np.int64))],
)
def test_encode_wrong_ndim(field, value):
    with pytest.raises(ProtocolError, match=rf"field '{field}' must be .* dim"):
        _encode_fb(_feedback_request(**{field: value}))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_non_finite(bad):
    x = np.zeros((4, 3), dtype=np.float32)
    x[1, 2] = bad
    with pytest.raises(ProtocolError, match="'x' holds NaN/inf"):
        _encode_fb(_feedback_request(x=x))


def test_encode_missing_and_extra_fields():
    arrays = _feedback_request()
    del arrays["y"]
    with pytest.raises(ProtocolError, match=r"missing \['y'\]"):
        _encode_fb(arrays)
    with pytest.raises(ProtocolError, match=r"unexpected arrays \['z'\]"):
        _encode_fb(_feedback_request(z=np.zeros(4, dtype=np.int64)))


def test_encode_scalars_must_match():
    with pytest.raises(ProtocolError, match="batch_size"):
        _encode_fb(_feedback_request(), scalars={})
    with pytest.raises(ProtocolError, match="extra"):
        _encode_fb(_feedback_request(), scalars={"batch_size": 2, "lse_grad": False, "extra": 1})


def test_encode_weights_required_and_forbidden():
    unseen = {"unseen": np.array([2, 5], dtype=np.int64)}
    with pytest.raises(ProtocolError, match="weights are required"):
        encode(EVALUATE, "request", arrays=unseen, settings=SETTINGS)
    w = {"0.weight": np.ones((2, 2), dtype=np.float32)}
    with pytest.raises(ProtocolError, match="carries no model weights"):
        _encode_fb(_feedback_request(), weights=w)


def test_encode_settings_required():
    with pytest.raises(ProtocolError, match="settings are required"):
        _encode_fb(_feedback_request(), settings=None)


def test_bad_direction():
    with pytest.raises(ProtocolError, match="direction"):
        encode(FEEDBACK, "response", arrays=_feedback_request())
    with pytest.raises(ProtocolError, match="direction"):
        decode(FEEDBACK, "response", RecordDict())


# ---------------------------------------------------------------------------------------
# decode errors: payloads built by hand, bypassing encode's checks
# ---------------------------------------------------------------------------------------


def _raw(arrays, scalars=None, weights=None, settings=SETTINGS, extra=None):
    rd = RecordDict()
    rd["arrays"] = ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in arrays.items()})
    rd["scalars"] = ConfigRecord(
        scalars if scalars is not None else {"batch_size": 2, "lse_grad": False}
    )
    if weights is not None:
        rd["weights"] = ArrayRecord({n: Array(w) for n, w in weights.items()})
    if settings is not None:
        rd["settings"] = ConfigRecord(dict(settings))
    for k, v in (extra or {}).items():
        rd[k] = v
    return rd


def test_decode_accepts_hand_built_valid_payload():
    out = decode(FEEDBACK, "request", _raw(_feedback_request()))
    assert out.arrays["x"].shape == (4, 3) and out.scalars == {"batch_size": 2, "lse_grad": False}


def test_decode_wrong_dtype_and_ndim():
    with pytest.raises(ProtocolError, match="'x' must be float32"):
        decode(FEEDBACK, "request", _raw(_feedback_request(x=np.zeros((4, 3)))))
    with pytest.raises(ProtocolError, match="'y' must be int64 with 1 dim"):
        decode(FEEDBACK, "request", _raw(_feedback_request(y=np.zeros((4, 2), dtype=np.int64))))


def test_decode_nan():
    x = np.zeros((4, 3), dtype=np.float32)
    x[0, 0] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        decode(FEEDBACK, "request", _raw(_feedback_request(x=x)))


def test_decode_missing_and_extra_fields():
    arrays = _feedback_request()
    del arrays["x"]
    with pytest.raises(ProtocolError, match="do not match the schema"):
        decode(FEEDBACK, "request", _raw(arrays))
    with pytest.raises(ProtocolError, match="do not match the schema"):
        decode(FEEDBACK, "request", _raw(_feedback_request(z=np.zeros(2, dtype=np.int64))))
    with pytest.raises(ProtocolError, match="scalars"):
        decode(FEEDBACK, "request", _raw(_feedback_request(), scalars={}))


def test_decode_missing_or_unknown_records():
    rd = _raw(_feedback_request())
    del rd["scalars"]
    with pytest.raises(ProtocolError, match="missing 'arrays' or 'scalars'"):
        decode(FEEDBACK, "request", rd)
    with pytest.raises(ProtocolError, match=r"unknown records \['junk'\]"):
        decode(FEEDBACK, "request", _raw(_feedback_request(), extra={"junk": ConfigRecord()}))
    with pytest.raises(ProtocolError, match="settings missing"):
        decode(FEEDBACK, "request", _raw(_feedback_request(), settings=None))


def test_decode_weights_required_and_forbidden():
    w = {"0.weight": np.ones((2, 2), dtype=np.float32)}
    with pytest.raises(ProtocolError, match="unexpected model weights"):
        decode(FEEDBACK, "request", _raw(_feedback_request(), weights=w))
    unseen = {"unseen": np.array([2, 5], dtype=np.int64)}
    with pytest.raises(ProtocolError, match="weights missing"):
        decode(EVALUATE, "request", _raw(unseen, scalars={}))
    out = decode(EVALUATE, "request", _raw(unseen, scalars={}, weights=w))
    np.testing.assert_array_equal(out.weights["0.weight"], w["0.weight"])


def test_reply_of_one_kind_is_not_a_request_of_another():
    rd = encode(VERIFY, "reply", **make_payload(VERIFY, "reply"))
    with pytest.raises(ProtocolError):
        decode(FEEDBACK, "reply", rd)


def test_every_feedback_reply_array_has_axes_of_its_rank():
    """The service checks each feedback array against schema.FEEDBACK_AXES: an array the
    reply may carry without axes (or with axes of another rank) would go unchecked."""
    from azsl_flower.wire.schema import FEEDBACK_AXES

    reply = FEEDBACK.reply
    carried = {**reply.arrays, **reply.optional_arrays}
    assert set(FEEDBACK_AXES) == set(carried)
    for name, (_, rank) in carried.items():
        assert len(FEEDBACK_AXES[name]) == rank, name


def test_feedback_check_holds_each_array_to_its_axes():
    """A gradient of the wrong width (dim) and a per-batch loss of the wrong length are
    refused by the shapes the check derives from the schema's axes."""
    from strategies.checks import ReplyError, check_feedback

    samples, batch, dim, classes = 6, 3, 4, 5
    fields = frozenset({"probs", "grad", "ce"})
    check = check_feedback(samples, batch, dim, classes, {1: np.arange(classes)}, fields)
    probs = np.full((samples, classes), 1 / classes, np.float32)
    good = {"probs": probs, "grad": np.zeros((samples, dim), np.float32)}
    good["ce"] = np.ones(2, np.float32)

    def payload(arrays):
        return decode(FEEDBACK, "reply", encode(FEEDBACK, "reply", arrays=arrays))

    check(1, [payload(good)])
    for key, bad in (
        ("grad", np.zeros((samples, dim + 1), np.float32)),
        ("ce", np.ones(3, np.float32)),
    ):
        with pytest.raises(ReplyError, match=key):
            check(1, [payload({**good, key: bad})])
