"""The strategy taken apart: transport, roster, delivery and each phase's configure_/aggregate_,
without a whole run (the federation tests run the whole thing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config
from azsl_flower.common.metrics import ClassCounts
from azsl_flower.common.models import classifier
from azsl_flower.common.semantics import load_class_side
from azsl_flower.wire import codec, errors, schema
from azsl_flower.wire.channels import ServiceSecurity
from simulations.run.inprocess import InProcessGrid
from strategies.azsl import AZSLStrategy
from strategies.checks import ReplyError, check_setup
from strategies.delivery import Delivery
from strategies.requests import Request
from strategies.roster import OwnerError, Roster
from strategies.sources import VerifyAnswers
from strategies.transport import Transport
from tests.conftest import make_payload


class ScriptedGrid(InProcessGrid):
    """Owners whose replies a test writes: ``script[node]`` is a list of callables
    (request Message -> reply Message, or None for silence), one per message received."""

    def __init__(self, nodes: int, script: dict[int, list]) -> None:
        super().__init__(client_app, nodes)
        self.script = {n: list(s) for n, s in script.items()}

    def deliver(self, msg: Message) -> Message | None:
        return self.script[msg.metadata.dst_node_id].pop(0)(msg)


def _answer(kind: schema.Kind, **payload):  # noqa: ANN202 - returns a reply builder
    part = schema.encode(kind, "reply", **(payload or make_payload(kind, "reply")))
    return lambda msg: Message(codec.bundle([part]), reply_to=msg)


def _error(code: int, reason: str):  # noqa: ANN202
    return lambda msg: Message(Error(code=code, reason=reason), reply_to=msg)


def _refusal(budget: int, used: int, asked: int):  # noqa: ANN202
    """The owner's sealed budget refusal (a payload, unlike an error reply)."""
    part = errors.refusal_record(errors.budget_refusal(budget, used, asked))
    return lambda msg: Message(codec.bundle([part]), reply_to=msg)


def _silent(msg: Message) -> None:
    return None


def _transport(timeout: float = 0.2) -> Transport:
    return Transport(ServiceSecurity("none", 0), timeout=timeout, poll_interval=0.01)


def _setup_parts() -> list:
    return [schema.encode(schema.SETUP, "request", settings={"dataset": "digits"})]


# -- transport ------------------------------------------------------------------------------


def test_transport_classifies_every_kind_of_reply():
    grid = ScriptedGrid(
        7,
        {
            1000: [_answer(schema.SETUP)],
            1001: [_silent],
            1002: [_error(errors.REJECTED_CODE, errors.rejection("replay", "seq 3"))],
            1003: [_refusal(100, 90, 20)],
            1004: [_error(ErrorCode.NODE_UNAVAILABLE, "Node unavailable")],
            1005: [_answer(schema.VERIFY)],  # authentic but another kind's schema
            1006: [_error(4101, "budget exhausted")],  # unsealed: a relay could forge it
        },
    )
    t = _transport()
    out = t.exchange(grid, schema.SETUP, "setup", _setup_parts(), sorted(grid.contexts))
    assert out[1000].answers is not None and out[1000].answers[0].scalars["dim"] == 7
    assert out[1001].failure == "timeout" and out[1001].answered  # it may have done the work
    assert out[1002].failure == "rejected" and out[1002].rejection == "replay"
    assert out[1003].failure == "budget" and out[1003].refusal == (100, 90, 20)
    assert out[1004].failure == "offline" and not out[1004].answered
    assert out[1005].failure == "rejected" and out[1005].rejection == "malformed"
    assert out[1006].failure == "error" and out[1006].refusal is None
    assert t.traffic.round_trips == 1 and t.traffic.messages == 7
    assert t.traffic.rejected == {"replay": 1, "malformed": 1}
    assert set(t.traffic.received_by_node) == {1000, 1003}  # counted once accepted


# -- roster ---------------------------------------------------------------------------------


def test_roster_quorum_counts_owners_at_setup_and_names_who_dropped():
    r = Roster(quorum=0.5)
    r.start([3, 1, 2, 4, 5])
    r.drop([5], "setup", {5: "not an allow-listed owner"})  # no quorum during set-up
    r.settle()
    assert r.live == [1, 2, 3, 4] and r.required == 2  # 0.5 x the 4 that passed, not 3
    r.drop([2], "generator-1", {2: "disk full"})
    r.drop([4], "generator-2", {})
    with pytest.raises(OwnerError) as info:
        r.drop([1], "verification", {1: "timed out"})
    text = str(info.value)
    assert "only 1 of the 4 owners" in text and "quorum=0.5 needs 2" in text
    assert "node 2 dropped in generator-1: disk full" in text and "timed out" in text


def test_roster_plans_budgets_and_keeps_verification_in_reserve():
    r = Roster(quorum=0.5)
    r.start([1, 2, 3])
    r.admit(
        {n: np.arange(4) for n in (1, 2, 3)},
        {1: 0, 2: 1000, 3: 300},
        np.arange(4),
        np.array([], int),
        dim=5,
        num_classes=4,
    )
    # node 2 keeps 400 for verification; node 3 cannot afford the reserve, so none is kept
    assert r.with_budget(600, "generator", reserve=400) == [1, 2]
    assert r.with_budget(300, "generator", reserve=400) == [1, 2, 3]
    assert r.skipped == {3: {"generator": 1}}
    r.count_used(2, 700)
    assert r.budget_left(2) == 300 and r.budget_left(1) == float("inf")
    r.budget_refused(3, "generator-4", (300, 250, 256))
    assert r.used[3] == 250 and r.skipped[3]["generator"] == 2
    assert r.failures[-1]["kind"] == "budget"


def test_roster_reports_classes_nobody_left_knows():
    r = Roster(quorum=0.1)
    r.start([1, 2])
    r.admit({1: np.array([0, 1]), 2: np.array([1, 2])}, {}, np.arange(3), np.array([], int), 4, 3)
    r.drop([2], "generator-1", {})
    assert r.orphaned_classes().tolist() == [2]
    assert r.declarations().trainable.tolist() == [0, 1]


# -- delivery -------------------------------------------------------------------------------


def test_delivery_resends_then_drops_and_only_skips_a_budget_refusal():
    grid = ScriptedGrid(
        3,
        {
            1000: [_error(2, "OSError: disk full"), _answer(schema.SETUP)],  # fails once
            1001: [_error(2, "OSError: disk full")] * 3,  # fails every try
            1002: [_refusal(10, 10, 1)],
        },
    )
    roster = Roster(quorum=0.3)
    roster.start(sorted(grid.contexts))
    delivery = Delivery(_transport(), roster, {"dataset": "digits"}, max_retries=2)
    answers = delivery.ask(grid, Request(schema.SETUP, "setup", [{}], sorted(grid.contexts)))
    assert set(answers) == {1000}
    assert roster.live == [1000, 1002]  # the refusal skipped 1002; 1001 failed 3 times
    assert [d["node"] for d in roster.dropped] == [1001]
    assert "disk full" in roster.dropped[0]["reason"]
    assert delivery.transport.traffic.retries == 3  # 1000 re-sent once, 1001 twice


# -- phases ---------------------------------------------------------------------------------


def _strategy(**raw: object) -> AZSLStrategy:
    cfg = parse_run_config(raw)
    return AZSLStrategy(
        cfg, load_class_side("digits"), torch.device("cpu"), ServiceSecurity("none", 0)
    )


def _setup_reply(dim: int = 64, classes: int = 10, covered=range(10), budget: int = 0):
    arrays = {
        "covered": np.asarray(list(covered), np.int64),
        "seen": np.arange(7, dtype=np.int64),
        "unseen": np.arange(7, 10, dtype=np.int64),
        "test_seen_counts": np.full(7, 5, np.int64),
        "test_unseen_counts": np.full(3, 5, np.int64),
    }
    scalars = {"dim": dim, "num_classes": classes, "simulated": True, "query_budget": budget}
    scalars |= {"epsilon": -1.0, "delta": 1e-5, "privacy": "{}"}
    rd = schema.encode(schema.SETUP, "reply", arrays=arrays, scalars=scalars)
    return schema.decode(schema.SETUP, "reply", rd)


def test_setup_pair_declares_coverage_and_refuses_disagreeing_owners():
    s = _strategy()
    grid = InProcessGrid(client_app, 2)
    request = s.configure_setup(grid)
    assert request.kind is schema.SETUP and request.nodes == [1000, 1001]
    declared = s.aggregate_setup(
        {1000: _setup_reply(covered=range(5)), 1001: _setup_reply(budget=9)}
    )
    assert declared.dim == 64 and declared.unseen.tolist() == [7, 8, 9]
    assert declared.coverage.sum(1).tolist() == [5, 10] and s.roster.budget == {1000: 0, 1001: 9}
    # a tie on the feature size drops one side, named (issue 24: it used to end the run)
    s.aggregate_setup({1000: _setup_reply(dim=64), 1001: _setup_reply(dim=32)})
    assert s.roster.live == [1000] and "32-d" in s.roster.dropped[-1]["reason"]
    # a lone owner with another feature size is dropped by the majority, named
    s.roster.start([1000, 1001, 1002])
    s.aggregate_setup({n: _setup_reply(dim=32 if n == 1002 else 64) for n in (1000, 1001, 1002)})
    assert s.roster.live == [1000, 1001] and "32-d" in s.roster.dropped[-1]["reason"]
    # each reply is checked on its own before aggregation (by the transport)
    with pytest.raises(ReplyError, match="the service's class list has 10"):
        check_setup(10, weights=False)(1000, [_setup_reply(classes=11)])


def test_verify_pair_keeps_what_the_teachers_agree_with():
    s = _strategy()
    s.roster.start([1])
    s.roster.admit({1: np.arange(3)}, {}, np.arange(3), np.array([], int), 2, 3)
    x, y = np.zeros((4, 2), np.float32), np.array([0, 1, 2, 2])
    probs = np.eye(3, dtype=np.float32)[[0, 2, 2, 1]]  # the teacher agrees on samples 0 and 2
    request = s.configure_verify(x, y, [1])
    assert request.kind is schema.VERIFY and request.payloads[0]["arrays"]["y"] is y
    v = s.aggregate_verify(VerifyAnswers([1], x, y, [probs], [np.zeros(4)]), np.arange(3))
    assert v.keep.tolist() == [True, False, True, False]
    assert v.report["pass_rate"] == 0.5 and v.report["classes_without_samples"] == [1]
    off = _strategy(verification=False)
    off.roster = s.roster
    assert off.aggregate_verify(
        VerifyAnswers([1], x, y, [probs], [np.zeros(4)]), np.arange(3)
    ).keep.all()


def _counts_reply(seed: int, curve: bool) -> schema.Payload:
    rng = np.random.default_rng(seed)
    arrays = {}
    for who in ("model", "teacher"):
        for f in ClassCounts.__dataclass_fields__:
            arrays[f"{who}_{f}"] = rng.integers(0, 5, 10).astype(np.int64)
    if curve:
        arrays["model_seen_curve"] = rng.integers(0, 5, (3, 10)).astype(np.int64)
        arrays["model_unseen_curve"] = rng.integers(0, 5, (3, 10)).astype(np.int64)
    return schema.decode(
        schema.EVALUATE, "reply", schema.encode(schema.EVALUATE, "reply", arrays=arrays)
    )


def test_evaluate_pair_sums_counts_and_scores_the_grid_only_on_validation_classes():
    test_run = _strategy(calibration=2.0)
    test_run.roster.start([1, 2])
    request = test_run.configure_evaluate({"student": classifier(4, 10)}, np.arange(7, 10))
    assert request.payloads[0]["arrays"]["calibration"].tolist() == [2.0]  # no grid on test
    val_run = _strategy(split="val", **{"calibration-grid": "0,5"})
    val_run.roster.start([1, 2])
    assert val_run.calibration_values().tolist() == [0.0, 0.0, 5.0]
    replies = {1: [_counts_reply(1, True)], 2: [_counts_reply(2, True)]}
    ev = val_run.aggregate_evaluate(replies, ["student"])
    np.testing.assert_array_equal(
        ev.models["student"].seen_correct,
        replies[1][0].arrays["model_seen_correct"] + replies[2][0].arrays["model_seen_correct"],
    )
    assert set(ev.per_owner) == {1, 2} and [p["calibration"] for p in ev.curves["student"]] == [
        0,
        5,
    ]
    with pytest.raises(OwnerError, match="no owner answered the evaluation"):
        val_run.aggregate_evaluate({}, ["student"])


def test_lse_gradients_are_asked_only_for_a_whitebox_joint_ensemble_of_several_owners():
    for raw, owners, expected in [
        ({"ensemble-weighting": "joint"}, [1, 2], True),
        ({"ensemble-weighting": "joint"}, [1], False),
        ({"ensemble-weighting": "joint", "scenario": "blackbox"}, [1, 2], False),
        ({}, [1, 2], False),
    ]:
        s = _strategy(**raw)
        s.roster.start(owners)
        assert s.lse_grad is expected, raw
