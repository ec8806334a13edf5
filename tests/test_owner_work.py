"""Issue 24, slice C, as a hostile service would try it: what an owner's work is bounded
by per message kind, what leaves it when answering fails, and what its files look like.

- only a set-up trains a teacher (within ``max-setups``; the cache pruned to
  ``max-teachers``), and a run answers only from the teachers its set-ups made;
- any exception after a request is opened is a *sealed* refusal naming its class only;
- every owner file is 0600 in a folder of its own; looser folders and links are refused.
"""

from __future__ import annotations

import copy
import json
import os
import stat

import numpy as np
import pytest
from flwr.app import Message

from azsl_flower.owner import state as owner_state_module
from azsl_flower.owner.budget import queries_used
from azsl_flower.wire import codec, schema
from azsl_flower.wire.channels import ServiceSecurity
from strategies.delivery import Delivery
from strategies.requests import Request
from strategies.roster import Roster
from strategies.transport import Transport
from tests.hostile import Owner, evaluate_payload, query_payload


def _teachers(owner: Owner) -> list:
    return sorted(owner.cache.glob("teacher-*.pt"))


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a message other than set-up trained a teacher")

    monkeypatch.setattr(owner_state_module, "fit", refuse)
    monkeypatch.setattr("azsl_flower.owner.dfzsl.fit", refuse)


def _mode(path: object) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)  # type: ignore[arg-type]


# -- row 4: only set-up trains ---------------------------------------------------------------


def test_feedback_with_new_teacher_settings_trains_nothing(tmp_path, monkeypatch):
    """The review's attack: 12 one-row feedback messages, each with new teacher settings,
    trained 12 teachers. Now each is refused, sealed, and leaves no file."""
    owner = Owner(tmp_path, teacher_epochs=None, cache_dir=tmp_path / "c")
    assert owner.ask(schema.SETUP, teacher_epochs=1, lr_teacher=1e-3).answers
    before = _teachers(owner)
    assert len(before) == 1
    _no_training(monkeypatch)
    for i in range(12):
        asked = [query_payload(schema.FEEDBACK, 1, seed=i)]
        reply = owner.ask(schema.FEEDBACK, asked, teacher_epochs=1, lr_teacher=2e-3 + i * 1e-4)
        assert reply.answers is None and reply.refusal.code == "policy"
        assert "this owner trains only at set-up" in reply.refusal.reason or (
            "other teacher settings" in reply.refusal.reason
        )
    for kind, payload in (
        (schema.VERIFY, query_payload(schema.VERIFY, 1)),
        (schema.EVALUATE, evaluate_payload()),
    ):
        reply = owner.ask(kind, [payload], teacher_epochs=2)
        assert reply.refusal.code == "policy"
    assert _teachers(owner) == before
    assert queries_used(owner.ctx) == 0  # refused before anything was reserved
    # the set-up's own settings are answered, from the teacher it made
    asked = [query_payload(schema.FEEDBACK, 4)]
    assert owner.ask(schema.FEEDBACK, asked, teacher_epochs=1, lr_teacher=1e-3).answers


def test_a_run_answers_only_from_the_teachers_its_set_ups_made(tmp_path, monkeypatch):
    """A teacher another run made is on disk; this run's set-up used other settings, so a
    feedback message cannot switch to it mid-run."""
    other = Owner(tmp_path, run_id=3, teacher_epochs=None, cache_dir=tmp_path / "c")
    assert other.ask(schema.SETUP, teacher_epochs=1, lr_teacher=2e-3).answers
    # the same owner (its key) in a later run
    owner = Owner(tmp_path, node_id=12, run_id=4, teacher_epochs=None, cache_dir=tmp_path / "c")
    owner.ctx.node_config["owner-key"] = other.ctx.node_config["owner-key"]
    keys = tmp_path / "keys"
    owner.service = ServiceSecurity.from_files(
        "aes-256-gcm", 4, str(keys / "service.key"), str(keys / "owners" / "owner-11.pub")
    )
    asked = [query_payload(schema.FEEDBACK, 2)]
    assert owner.ask(schema.SETUP, teacher_epochs=1, lr_teacher=1e-3).answers
    _no_training(monkeypatch)
    switched = owner.ask(schema.FEEDBACK, asked, teacher_epochs=1, lr_teacher=2e-3)
    assert switched.refusal.code == "policy"
    assert "other teacher settings" in switched.refusal.reason
    assert owner.ask(schema.FEEDBACK, asked, teacher_epochs=1, lr_teacher=1e-3).answers


def test_set_ups_are_bounded_per_run_and_the_cache_by_max_teachers(tmp_path):
    """12 set-ups with new settings: max-setups answered per run, and after every one the
    cache holds at most max-teachers files."""
    owner = Owner(
        tmp_path, teacher_epochs=None, max_teachers=2, max_setups=4, cache_dir=tmp_path / "c"
    )
    answered = 0
    for i in range(12):
        reply = owner.ask(schema.SETUP, teacher_epochs=1, lr_teacher=1e-3 + i * 1e-4)
        if reply.answers:
            answered += 1
        else:
            assert "max-setups" in reply.refusal.reason
        assert len(_teachers(owner)) <= 2
    assert answered == 4


def test_a_restarted_owner_answers_from_the_teacher_on_disk(tmp_path, monkeypatch):
    """A SuperNode restarted mid-run (a new process: nothing in memory) loads the teacher
    its set-up made; it neither trains nor refuses."""
    monkeypatch.setattr(owner_state_module, "_STATE", {})
    # the same teacher settings served from another cache first, in this process's memory
    elsewhere = Owner(tmp_path, node_id=12, cache_dir=tmp_path / "elsewhere")
    assert elsewhere.ask(schema.SETUP).answers
    owner = Owner(tmp_path, cache_dir=tmp_path / "c")
    assert owner.ask(schema.SETUP).answers
    # one process, two caches: each keeps its own state (its teacher file, its DP ledger)
    held = {st.teacher_file.parent for st in owner_state_module._STATE.values()}
    assert held == {elsewhere.cache, owner.cache}
    [teacher] = _teachers(owner)  # this owner's cache has its own copy...
    teacher.unlink()  # ...and when it loses it (pruned by another run), a set-up makes it again
    assert owner.ask(schema.SETUP).answers
    assert _teachers(owner) == [teacher]
    monkeypatch.setattr(owner_state_module, "_STATE", {})  # the restart
    _no_training(monkeypatch)
    assert owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 4)]).answers
    assert owner.ask(schema.VERIFY, [query_payload(schema.VERIFY, 4)]).answers
    assert owner.ask(schema.EVALUATE, [evaluate_payload()]).answers


def test_dfzsl_probes_answer_from_the_cosine_teacher_set_up_made(tmp_path, monkeypatch):
    """The hybrid warm start: an AZSL set-up, then DFZSL's (scenario dfzsl: the cosine
    teacher); probes before the cosine set-up are refused and train nothing."""
    owner = Owner(tmp_path, allowed_scenarios="whitebox,dfzsl", cache_dir=tmp_path / "c")
    probe = {"arrays": {"x": np.random.default_rng(0).random((3, 64), dtype=np.float32)}}
    assert owner.ask(schema.SETUP, scenario="whitebox").answers
    [mlp] = _teachers(owner)
    early = owner.ask(schema.DFZSL_PROBE, [probe], scenario="dfzsl").refusal
    assert early.code == "policy" and "trains only at set-up" in early.reason
    assert _teachers(owner) == [mlp]
    assert owner.ask(schema.SETUP, scenario="dfzsl").answers  # the hybrid: one set-up each
    assert len(_teachers(owner)) == 2
    monkeypatch.setattr(owner_state_module, "_STATE", {})
    _no_training(monkeypatch)
    [logits] = owner.ask(schema.DFZSL_PROBE, [probe], scenario="dfzsl").answers
    assert logits.arrays["logits"].shape[0] == 3
    assert owner.ask(schema.VERIFY, [query_payload(schema.VERIFY, 2)], scenario="whitebox").answers


# -- row 7: every exception sealed -----------------------------------------------------------


def _cosine_model(temperature: float) -> dict[str, np.ndarray]:
    return {
        "weight": np.ones((10, 64), dtype=np.float32),
        "temperature": np.asarray([temperature], dtype=np.float32),
    }


@pytest.mark.parametrize("example", ["dirichlet-beta", "mmd-at-dp-stats", "cosine-temperature"])
def test_an_owners_failure_leaves_it_only_sealed(tmp_path, example):
    """The review's three examples left the sealed path as Flower errors carrying the
    exception's text. Now each answer is the sealed envelope only, the service reads a
    refusal, and the text of an unforeseen exception stays at the owner."""
    if example == "dirichlet-beta":
        # a deployed owner ignores every partition key (tests/test_lifetime.py); a simulated
        # one reads them to find its share of the data
        assert Owner(tmp_path, node_id=12).ask(schema.SETUP, dirichlet_beta="lots").answers
        owner = Owner(tmp_path, partition_id=0, num_partitions=2)
        request = owner.request(schema.SETUP, partition="dirichlet", dirichlet_beta="lots")
        code, says = "policy", "dirichlet-beta='lots'"
    elif example == "mmd-at-dp-stats":
        owner = Owner(tmp_path, stats_epsilon=1.0, stats_clip=20.0)
        request = owner.request(schema.SETUP, regulariser="mmd")
        code, says = "policy", "regulariser=mmd"
    else:
        owner = Owner(tmp_path)
        assert owner.ask(schema.SETUP).answers
        request = owner.request(schema.EVALUATE, [evaluate_payload(weights=_cosine_model(0.0))])
        code, says = "error", "internal error (ValueError)"
    kind = {"query.setup": schema.SETUP, "evaluate": schema.EVALUATE}[request.metadata.message_type]
    reply = owner.deliver(copy.deepcopy(request))
    assert not reply.has_error()
    assert list(reply.content.keys()) == [codec.ENVELOPE]  # nothing but the sealed envelope
    refused = owner.peek(kind, reply).refusal
    assert refused is not None and refused.code == code and says in refused.reason
    assert "temperature=" not in refused.reason and "Traceback" not in refused.reason
    # what the service makes of it: a policy refusal drops at once, an error is re-sent
    out = Transport(owner.service, timeout=1.0, poll_interval=0.01)._outcome(
        owner.node, kind, "p", 1, reply, None
    )
    assert out.answers is None and out.failure == code and out.refusal is None


class _Direct(Transport):
    """A transport straight to one test owner (no grid)."""

    owner: Owner

    def _round_trip(
        self, grid: object, messages: list[Message], phase: str = ""
    ) -> list[Message | str]:
        self.traffic.round_trips += 1
        return [self.owner.deliver(m) for m in messages]


def test_a_sealed_error_refusal_is_re_sent_then_dropped(tmp_path):
    """An owner that fails answering is that owner's failure for the round (re-sent, then
    dropped, like an error reply), not a skip for budget and not a policy refusal."""
    owner = Owner(tmp_path)
    assert owner.ask(schema.SETUP).answers
    transport = _Direct(owner.service, timeout=1.0, poll_interval=0.01)
    transport.owner = owner
    roster = Roster(quorum=1.0)
    roster.start([owner.node])
    delivery = Delivery(transport, roster, owner.settings(), max_retries=2)
    bad = Request(schema.EVALUATE, "evaluate", [evaluate_payload(weights=_cosine_model(0.0))],
                  [owner.node])  # fmt: skip
    assert delivery.ask(None, bad) == {}  # type: ignore[arg-type]
    assert [f["kind"] for f in roster.failures] == ["error"] * 3
    assert "internal error (ValueError)" in str(roster.failures[0]["reason"])
    assert [d["node"] for d in roster.dropped] == [owner.node]
    assert not roster.skipped


# -- row 9: private files --------------------------------------------------------------------


def test_the_dfzsl_cosine_teacher_is_written_0600(tmp_path):
    owner = Owner(tmp_path, allowed_scenarios="whitebox,dfzsl", cache_dir=tmp_path / "c")
    assert owner.ask(schema.SETUP, scenario="dfzsl").answers
    [cosine] = _teachers(owner)
    assert _mode(cosine) == 0o600
    assert _mode(owner.cache) == 0o700


@pytest.mark.parametrize("folder", ["runs", "cache"])
def test_an_existing_folder_others_can_write_is_refused(tmp_path, folder):
    """A pre-made 0777 runs/ (or cache) folder: another user could plant a link or swap the
    run state. Refused with a message naming the folder and the fix; nothing written."""
    cache = tmp_path / "c"
    loose = cache / "runs" if folder == "runs" else cache
    loose.mkdir(parents=True)
    loose.chmod(0o777)
    owner = Owner(tmp_path, cache_dir=cache)
    reply = owner.deliver(owner.request(schema.SETUP))
    assert reply.has_error()
    assert f"chmod 700 {loose}" in reply.error.reason
    assert not list(cache.rglob("run-*.json")) and not list(cache.glob("teacher-*"))
    loose.chmod(0o755)  # others may read: accepted (its files are 0600)
    assert owner.ask(schema.SETUP).answers


@pytest.mark.parametrize("planted", ["state", "lock", "runs"])
def test_run_state_is_never_read_through_a_planted_link(tmp_path, planted):
    owner = Owner(tmp_path, cache_dir=tmp_path / "c")
    assert owner.ask(schema.SETUP).answers
    runs = owner.cache / "runs"
    [state] = runs.glob("run-3-*.json")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if planted == "runs":
        target = elsewhere / "runs"
        runs.rename(target)
        runs.symlink_to(target)
        link = runs
    else:
        path = state if planted == "state" else state.with_name(state.name + ".lock")
        target = elsewhere / "planted"
        target.write_text(path.read_text() if planted == "state" else "")
        path.unlink()
        path.symlink_to(target)
        link = path
    before = target.stat().st_mtime_ns if target.is_file() else None
    reply = owner.deliver(owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 2)]))
    assert reply.has_error() and "symbolic link" in reply.error.reason
    assert str(link) in reply.error.reason
    if before is not None:
        assert target.stat().st_mtime_ns == before  # not written through the link


def test_every_owner_file_is_0600_in_0700_folders(tmp_path):
    """A run's files: the teacher, the run state and its lock; no temporary file left."""
    owner = Owner(tmp_path, cache_dir=tmp_path / "c")
    assert owner.ask(schema.SETUP).answers
    assert owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 2)]).answers
    files = [p for p in owner.cache.rglob("*") if p.is_file()]
    folders = [owner.cache, *(p for p in owner.cache.rglob("*") if p.is_dir())]
    assert files and all(_mode(p) == 0o600 for p in files), {str(p): _mode(p) for p in files}
    assert all(_mode(p) == 0o700 for p in folders)
    assert not [p for p in files if p.name.endswith(".tmp")]
    assert json.loads(next(owner.cache.glob("runs/run-3-*.json")).read_text())["teachers"]
