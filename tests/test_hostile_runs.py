"""Whole runs with a hostile owner, a hostile relay or a stranger among the owners: the
run goes on with the honest owners, and what happened is counted in results.json."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Error, Message, RecordDict

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config
from azsl_flower.owner import handlers
from azsl_flower.owner.session import open_session
from azsl_flower.wire import codec, schema
from azsl_flower.wire.crypto import write_keypair
from simulations.run.inprocess import InProcessGrid
from strategies.azsl import OwnerError
from strategies.server_app import run_azsl
from tests.test_federation import FAST

SHORT = {**FAST, "rounds": 3}
_HANDLERS = {
    "query.setup": handlers._setup,
    "query.feedback": handlers._feedback,
    "query.verify": handlers._verify,
    "evaluate": handlers._evaluate,
}


def _raw(tmp_path: Path, **overrides: object) -> dict[str, object]:
    raw = {**SHORT, "output-dir": str(tmp_path / "out"), "cache-dir": str(tmp_path / "cache")}
    raw.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return raw


def _spoil(kind: str, answers: list[RecordDict], how: str) -> list[RecordDict] | bytes:
    """An owner's authentic answers, spoilt the way a broken or hostile owner would."""
    if how == "junk":
        return os.urandom(300)
    payloads = [schema.decode(schema.KINDS[kind], "reply", a) for a in answers]
    for p in payloads:
        a = p.arrays
        if how == "broadcast":  # one row for the whole pool: numpy would broadcast it
            a["probs"] = a["probs"][:1]
        elif how == "huge":
            a["grad"] = np.full_like(a["grad"], 3e38)
        elif how == "inflate":  # "the student is perfect here"
            a["model_seen_correct"] = a["model_seen_total"].copy()
            a["model_unseen_correct"] = a["model_unseen_total"] * 2
    return [
        schema.encode(schema.KINDS[kind], "reply", p.arrays, p.scalars, p.weights) for p in payloads
    ]


class HostileOwnerGrid(InProcessGrid):
    """Node ``hostile`` opens requests with its real key and answers each message kind by
    ``script[kind]``: one way to spoil its answer per message, then honestly."""

    def __init__(self, raw: dict, owners: int, hostile: int, script: dict[str, list[str]]):
        super().__init__(client_app, owners, raw)
        self.hostile, self.script = hostile, {k: list(v) for k, v in script.items()}

    def deliver(self, msg: Message) -> Message | None:
        kind = msg.metadata.message_type
        plan = self.script.get(kind) or []
        if msg.metadata.dst_node_id != self.hostile or not plan:
            return super().deliver(msg)
        how = plan.pop(0) if len(plan) > 1 else plan[0]  # the last way stays
        with open_session(self.contexts[self.hostile]) as s:
            request, parts = s.security.open(msg, kind)
            answers = handlers._answer(s, schema.KINDS[kind], parts, _HANDLERS[kind])
            spoilt = _spoil(kind, answers, how)
            if isinstance(spoilt, bytes):  # sealed, authentic, and nonsense inside
                assert s.security.channel is not None and request is not None
                h, body = s.security.channel.seal(
                    kind, request.phase, str(self.hostile), "service", spoilt, request.seq
                )
                s.security._save()  # its counter moved on
                return Message(codec.envelope([(h, body)]), reply_to=msg)
            return Message(s.security.seal(kind, request, spoilt), reply_to=msg)


def test_a_hostile_owner_is_rejected_then_dropped_and_the_run_finishes(tmp_path):
    raw = _raw(tmp_path, max_retries=2)
    script = {
        # generator round 1: two spoilt answers, then the honest one on the second re-send
        "query.feedback": ["broadcast", "huge", "honest"],
        "query.verify": ["junk", "honest"],
        "evaluate": ["inflate"],  # every time: dropped at evaluation
    }
    grid = HostileOwnerGrid(raw, 2, 1001, script)
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    fed = results["federation"]
    assert results["rejected_messages"] == {"invalid-reply": 2 + 3, "malformed": 1}
    assert [d["node"] for d in fed["dropped"]] == [1001]
    assert fed["dropped"][0]["phase"] == "evaluation"
    assert fed["generator_answers"] == {"1000": 3, "1001": 3}  # it answered after re-sends
    assert fed["contributors"]["verification"] == [1000, 1001]
    assert set(results["per_owner_teacher"]) == {"1000"}  # its inflated counts never counted
    assert results["retries"] == 2 + 1 + 2
    assert 0.0 <= results["student"]["h"] <= 1.0


def test_a_minority_feature_size_is_dropped_at_set_up(tmp_path, write_xlsa17):
    odd = write_xlsa17(tmp_path / "odd", num_classes=10, seen=7, dim=5, tunseen=True)["dir"]
    raw = _raw(tmp_path)
    grid = InProcessGrid(client_app, 3, raw)
    grid.contexts[1002].node_config["data-dir"] = str(odd)
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    fed = results["federation"]
    assert fed["node_ids"] == [1000, 1001] and fed["owners_at_setup"] == 2
    [drop] = fed["dropped"]
    assert drop["node"] == 1002 and "5-d features" in drop["reason"]


class ForgedRefusalGrid(InProcessGrid):
    """A relay answers node 1001's first generator request itself: 'budget exceeded'."""

    forged = 0

    def deliver(self, msg: Message) -> Message | None:
        if (
            msg.metadata.dst_node_id == 1001
            and msg.metadata.message_type == "query.feedback"
            and not self.forged
        ):
            self.forged += 1
            reason = "azsl-budget-exceeded:1:1:5000: this owner answers at most 1 sample"
            return Message(Error(code=4101, reason=reason), reply_to=msg)
        return super().deliver(msg)


def test_a_forged_budget_refusal_only_costs_a_re_send(tmp_path):
    raw = _raw(tmp_path)
    grid = ForgedRefusalGrid(client_app, 2, raw)
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    fed = results["federation"]
    assert grid.forged == 1
    assert [(f["node"], f["kind"]) for f in fed["failures"]] == [(1001, "error")]
    assert fed["queries"]["1001"]["skipped"] == {} and fed["queries"]["1001"]["query_budget"] == 0
    assert fed["generator_answers"] == {"1000": 3, "1001": 3} and results["retries"] == 1


def _deployed(tmp_path: Path, owners: int, allowed: list[int], **extra: object) -> InProcessGrid:
    """Owners with their own keys and no partition-id; the service lists ``allowed`` only."""
    keys = tmp_path / "keys"
    write_keypair(keys, "service")
    (keys / "allowed").mkdir()
    for i in range(owners):
        write_keypair(keys / "owners", f"owner-{i}")
        if i in allowed:
            pub = (keys / "owners" / f"owner-{i}.pub").read_bytes()
            (keys / "allowed" / f"owner-{i}.pub").write_bytes(pub)
    raw = _raw(
        tmp_path,
        service_key=str(keys / "service.key"),
        owner_keys=str(keys / "allowed"),
        **extra,
    )
    grid = InProcessGrid(client_app, owners, raw)
    for i, ctx in enumerate(grid.contexts.values()):
        ctx.node_config.clear()  # what a deployed SuperNode's node config looks like
        ctx.node_config.update(
            {
                "owner-key": str(keys / "owners" / f"owner-{i}.key"),
                "service-pub": str(keys / "service.pub"),
                "cache-dir": str(tmp_path / f"owner-{i}"),
                "device": "cpu",
                "teacher-epochs": FAST["teacher-epochs"],
            }
        )
    return grid


def test_quorum_counts_only_owners_that_passed_set_up(tmp_path):
    """A registered node without an allow-listed key is not an owner: quorum=1.0 holds."""
    grid = _deployed(tmp_path, 3, allowed=[0, 1], quorum=1.0)
    raw = dict(grid.contexts[1000].run_config)
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    fed = results["federation"]
    assert fed["owners_at_setup"] == 2 and fed["node_ids"] == [1000, 1001]
    assert [d["node"] for d in fed["dropped"]] == [1002]
    assert "not one of our owners" in fed["dropped"][0]["reason"]
    # deployed owners seed their teachers from their own keys: same data, two teachers
    teachers = [{p.name for p in (tmp_path / f"owner-{i}").glob("teacher-*.pt")} for i in (0, 1)]
    assert all(len(t) == 1 for t in teachers) and teachers[0] != teachers[1]


def test_deployed_owners_refuse_to_send_weights_and_the_run_says_why(tmp_path):
    grid = _deployed(tmp_path, 2, allowed=[0, 1], scenario="weights")
    raw = dict(grid.contexts[1000].run_config)
    with pytest.raises(OwnerError, match="allowed-scenarios") as exc:
        run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    assert "no owner left in setup" in str(exc.value)
    replies = [copy.deepcopy(r) for r in grid.replies]
    assert replies and all(list(r.content.keys()) == [codec.ENVELOPE] for r in replies)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
