"""Owners that fail, time out or leave; quorum; owners' query budgets; per-owner teachers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config
from azsl_flower.common.metrics import ClassCounts, zsl_gzsl
from azsl_flower.owner.budget import queries_used
from azsl_flower.wire import codec, errors, schema
from simulations.run.inprocess import InProcessGrid
from strategies.azsl import OwnerError
from strategies.server_app import run_azsl
from tests.conftest import FAST, FlakyGrid

POOL = FAST["steps-per-round"] * 256  # generated samples per generator round trip (batch 256)


def _raw(tmp_path: Path, **overrides: object) -> dict[str, object]:
    raw = {**FAST, "output-dir": str(tmp_path / "out"), "cache-dir": str(tmp_path / "cache")}
    raw.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return raw


def _no_run_folder(tmp_path: Path) -> bool:
    """Nothing that looks like a run; the resume checkpoint of the failed run may stay."""
    out = tmp_path / "out"
    return not out.exists() or all(p.name == "checkpoints" for p in out.iterdir())


def test_a_restarting_owner_is_waited_for_not_dropped(tmp_path):
    """Flower answers "node unavailable" at once while a SuperNode restarts: the service
    waits for the node to be listed again instead of burning its retries in a second."""
    raw = _raw(tmp_path, timeout=10, max_retries=1)
    grid = FlakyGrid(client_app, 2, raw, failing={1001: (2, "offline")})
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    fed = results["federation"]
    assert fed["dropped_node_ids"] == [] and results["num_owners"] == 2
    assert [(f["node"], f["phase"]) for f in fed["failures"]] == [(1001, "generator-2")]
    assert results["retries"] == 1 and fed["generator_answers"] == {"1000": 4, "1001": 4}
    assert results["rejected_messages"] == {}  # the session survived the restart


@pytest.mark.parametrize(("mode", "partition"), [("error", "class-disjoint"), ("silent", "iid")])
def test_run_survives_an_owner_that_dies_mid_run(tmp_path, mode, partition):
    raw = _raw(tmp_path, partition=partition, timeout=0.5, max_retries=1)
    # node 1002 answers set-up and two generator rounds, then crashes or goes silent
    grid = FlakyGrid(client_app, 3, raw, failing={1002: (3, mode)})
    results, folder = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    assert json.loads((Path(folder) / "results.json").read_text())["federation"] == json.loads(
        json.dumps(results["federation"])
    )
    fed = results["federation"]
    assert results["num_owners"] == 2 and fed["node_ids"] == [1000, 1001]
    assert fed["owners_at_setup"] == 3 and fed["quorum"] == 0.5
    assert fed["dropped_node_ids"] == [1002]
    [drop] = fed["dropped"]
    assert drop["node"] == 1002 and drop["phase"] == "generator-3"
    expected = "disk full" if mode == "error" else "no answer within timeout=0.5s"
    assert expected in drop["reason"]
    # the first try and one retry failed; nobody else failed
    assert [(f["node"], f["phase"]) for f in fed["failures"]] == [(1002, "generator-3")] * 2
    assert {f["kind"] for f in fed["failures"]} == {"error" if mode == "error" else "timeout"}
    assert results["retries"] == 1 and results["round_trips"] == FAST["rounds"] + 3 + 1
    assert fed["contributors"] == {
        "setup": [1000, 1001, 1002],
        "generator": [1000, 1001, 1002],
        "verification": [1000, 1001],
        "evaluation": [1000, 1001],
    }
    assert fed["generator_answers"] == {"1000": 4, "1001": 4, "1002": 2}
    assert [h["owners"] for h in results["history"]] == [3, 3, 2, 2]
    assert set(results["per_owner_teacher"]) == {"1000", "1001"}
    live = {c for cov in fed["coverage"] for c in cov}
    if partition == "class-disjoint":  # node 1002's classes have nobody left to speak for them
        assert fed["orphaned_classes"] and not live & set(fed["orphaned_classes"])
        assert live | set(fed["orphaned_classes"]) == set(range(10))
    else:  # every iid owner knows every class
        assert fed["orphaned_classes"] == [] and live == set(range(10))


def test_losing_quorum_fails_naming_owners_and_reasons(tmp_path):
    raw = _raw(tmp_path, quorum=1.0, max_retries=0)
    grid = FlakyGrid(client_app, 3, raw, failing={1001: (2, "error")})
    with pytest.raises(OwnerError) as info:
        run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    text = str(info.value)
    assert "only 2 of the 3 owners" in text and "quorum=1.0 needs 3" in text
    assert "node 1001 dropped in generator-2" in text and "disk full" in text
    assert "lower quorum" in text
    assert _no_run_folder(tmp_path)


def test_default_quorum_needs_half_the_owners(tmp_path):
    raw = _raw(tmp_path, max_retries=0)
    grid = FlakyGrid(client_app, 3, raw, failing={1001: (2, "error"), 1002: (2, "error")})
    with pytest.raises(OwnerError, match=r"only 1 of the 3 owners.*quorum=0.5 needs 2"):
        run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)


class _BudgetCutGrid(InProcessGrid):
    """Node 1002's operator lowers its query budget once the run is under way: the service
    planned with the budget declared at set-up, so the owner has to refuse."""

    def deliver(self, msg: Message) -> Message | None:
        if msg.metadata.message_type == "query.feedback" and msg.metadata.dst_node_id == 1002:
            self.contexts[1002].node_config["query-budget"] = 500
        return super().deliver(msg)


def test_query_budgets_are_planned_for_and_a_refusal_only_skips(tmp_path):
    raw = _raw(tmp_path)
    verify = FAST["samples-per-class"] * 10  # digits, transductive: every owner knows 10 classes
    grid = _BudgetCutGrid(client_app, 3, raw)
    grid.contexts[1001].node_config["query-budget"] = 2 * POOL + verify
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    fed = results["federation"]
    assert results["verification"]["generated"] == verify
    assert results["num_owners"] == 3 and fed["dropped_node_ids"] == []
    assert results["rejected_messages"] == {} and results["retries"] == 0
    # 1001: two pools, the rest of its budget kept for verification; never over budget
    assert fed["queries"]["1001"] == {
        "query_budget": 2 * POOL + verify,
        "queries_used": 2 * POOL + verify,
        "skipped": {"generator": 2},
    }
    assert queries_used(grid.contexts[1001]) == 2 * POOL + verify
    # 1002 refused its first pool (one budget failure, not retried, not dropped), was then
    # planned around with the budget it reported, and still verified within it
    [refusal] = fed["failures"]
    assert refusal["node"] == 1002 and refusal["kind"] == "budget"
    assert refusal["phase"] == "generator-1" and "query-budget 500" in refusal["reason"]
    assert fed["queries"]["1002"] == {
        "query_budget": 500,
        "queries_used": verify,
        "skipped": {"generator": 4},
    }
    assert queries_used(grid.contexts[1002]) == verify
    assert fed["queries"]["1000"]["query_budget"] == 0  # unlimited
    assert fed["queries"]["1000"]["queries_used"] == 4 * POOL + verify
    assert fed["generator_answers"] == {"1000": 4, "1001": 2}
    assert [h["owners"] for h in results["history"]] == [2, 2, 1, 1]
    assert fed["contributors"]["verification"] == [1000, 1001, 1002]


def test_budgets_too_small_for_verification_fail_before_any_query(tmp_path):
    raw = _raw(tmp_path)
    grid = InProcessGrid(client_app, 2, raw)
    for ctx in grid.contexts.values():
        ctx.node_config["query-budget"] = 100
    with pytest.raises(OwnerError, match=r"no owner's query-budget covers verification.*400"):
        run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    assert [m.metadata.message_type for m in grid.sent] == ["query.setup"] * 2


def test_owner_refuses_queries_over_its_budget(tmp_path):
    raw = _raw(tmp_path, encryption="none")
    settings = parse_run_config(raw).owner_settings()
    grid = InProcessGrid(client_app, 1, raw)
    ctx = grid.contexts[1000]
    ctx.node_config["query-budget"] = 100
    rng = np.random.default_rng(0)

    def ask(kind: schema.Kind, n: int | None = None) -> Message:
        if n is None:
            part = schema.encode(kind, "request", settings=settings)
        else:
            arrays = {"x": rng.random((n, 64), dtype=np.float32), "y": np.arange(n) % 10}
            scalars = {"batch_size": n, "lse_grad": False} if kind is schema.FEEDBACK else {}
            part = schema.encode(kind, "request", arrays=arrays, scalars=scalars, settings=settings)
        msg = Message(
            content=codec.bundle([part]), dst_node_id=1000, message_type=kind.message_type
        )
        [reply] = grid.pull_messages(grid.push_messages([msg]))
        return reply

    setup = schema.decode(schema.SETUP, "reply", codec.unbundle(ask(schema.SETUP).content)[0])
    assert setup.scalars["query_budget"] == 100

    def refusal(reply: Message) -> errors.Refused | None:  # a refusal travels like an answer
        assert not reply.has_error()
        return errors.read_refusal(codec.unbundle(reply.content))

    assert refusal(ask(schema.FEEDBACK, 60)) is None and queries_used(ctx) == 60
    refused = refusal(ask(schema.VERIFY, 50))
    assert refused is not None and refused.code == "budget"
    assert (refused.budget, refused.used, refused.asked) == (100, 60, 50)
    assert "query-budget" in refused.reason
    assert queries_used(ctx) == 60  # a refused request costs nothing
    assert refusal(ask(schema.VERIFY, 40)) is None and queries_used(ctx) == 100
    assert refusal(ask(schema.FEEDBACK, 1)).code == "budget"
    ctx.node_config["query-budget"] = "lots"
    bad = ask(schema.SETUP)
    assert bad.has_error() and "query-budget='lots'" in bad.error.reason


def _counts(payload: schema.Payload) -> ClassCounts:
    return ClassCounts(*(payload.arrays[f"teacher_{f}"] for f in ClassCounts.__dataclass_fields__))


def test_per_owner_teacher_is_each_owners_own_counts(tmp_path):
    raw = _raw(tmp_path, encryption="none", rounds=1)
    grid = InProcessGrid(client_app, 2, raw)
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    own = {
        str(sent.metadata.dst_node_id): _counts(
            schema.decode(schema.EVALUATE, "reply", codec.unbundle(reply.content)[0])
        )
        for sent, reply in zip(grid.sent, grid.replies, strict=True)
        if sent.metadata.message_type == "evaluate"
    }
    assert set(own) == set(results["per_owner_teacher"]) == {"1000", "1001"}
    for node, counts in own.items():
        assert results["per_owner_teacher"][node] == zsl_gzsl(counts, "all")
        assert results["per_owner_teacher"][node]["h"] > 0.5  # digits teachers are strong
    assert results["teacher"] == zsl_gzsl(own["1000"] + own["1001"], "all")


def test_owner_refuses_bad_calibration_values(tmp_path):
    """An evaluation asking for negative or too many calibration values gets an error
    reply that says what is allowed, not a score."""
    from azsl_flower.common.models import classifier, state_to_numpy
    from azsl_flower.owner.handlers import MAX_CALIBRATION_VALUES

    raw = _raw(tmp_path, encryption="none")
    settings = parse_run_config(raw).owner_settings()
    grid = InProcessGrid(client_app, 1, raw)
    weights = state_to_numpy(classifier(64, 10))

    def evaluate(values: np.ndarray) -> Message:
        arrays = {"unseen": np.array([2, 5, 9]), "calibration": values.astype(np.float32)}
        part = schema.encode(
            schema.EVALUATE, "request", arrays=arrays, weights=weights, settings=settings
        )
        msg = Message(content=codec.bundle([part]), dst_node_id=1000, message_type="evaluate")
        [reply] = grid.pull_messages(grid.push_messages([msg]))
        return reply

    setup = schema.encode(schema.SETUP, "request", settings=settings)  # only set-up trains
    msg = Message(content=codec.bundle([setup]), dst_node_id=1000, message_type="query.setup")
    assert not grid.pull_messages(grid.push_messages([msg]))[0].has_error()
    ok = schema.decode(
        schema.EVALUATE, "reply", codec.unbundle(evaluate(np.array([0.0, 2.0])).content)[0]
    )
    assert ok.arrays["model_seen_curve"].shape == (2, 10)
    # (NaN never gets this far: the wire format refuses non-finite arrays on both sides)
    for bad in (np.array([-1.0]), np.zeros(MAX_CALIBRATION_VALUES + 1)):
        refused = errors.read_refusal(codec.unbundle(evaluate(bad).content))
        assert refused is not None and "finite values >= 0" in refused.reason
