"""Issue 12's table, row by row: each attack as a hostile service, relay or owner would try
it with the project's own modules, and the refusal that now meets it.

The owner here is deployed (:class:`tests.hostile.Owner`: its own keys and node config, no
``partition-id``); the service end holds the service's keys and may send anything.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, RecordDict

from azsl_flower.common.models import classifier, state_to_numpy
from azsl_flower.common.modes import TeacherAnswer, feedback_fields
from azsl_flower.owner.budget import queries_used
from azsl_flower.owner.session import open_session
from azsl_flower.tools.cli import main as cli
from azsl_flower.wire import codec, errors, schema
from azsl_flower.wire.channels import ServiceSecurity
from azsl_flower.wire.crypto import KeyModeWarning, RejectedError, load_private_key, write_keypair
from simulations.deploy.local import DATA_FILE, write_owner_data
from strategies.checks import check_evaluate, check_feedback, check_setup
from strategies.transport import Transport
from tests.hostile import Owner, envelope_of, evaluate_payload, query_payload

# -- downgrade ------------------------------------------------------------------------------


def test_an_owner_with_keys_never_answers_in_clear_text(tmp_path):
    """The run config asks for encryption='none'; the owner's node config does not say."""
    owner = Owner(tmp_path, run_config={"encryption": "none"})
    ask = schema.encode(schema.SETUP, "request", settings=owner.settings(scenario="whitebox"))
    clear = Message(
        ServiceSecurity("none", 3).seal(owner.node, "query.setup", "setup", [ask]),
        dst_node_id=owner.node,
        message_type="query.setup",
    )
    reply = owner.deliver(clear)
    assert reply.has_error() and "azsl-rejected:malformed" in reply.error.reason
    # sealed with another suite than the owner's: refused as well
    other = Owner(tmp_path, node_id=12, run_config={"encryption": "chacha20-poly1305"})
    other.service = ServiceSecurity.from_files(
        "chacha20-poly1305",
        3,
        str(tmp_path / "keys" / "service.key"),
        str(tmp_path / "keys" / "owners" / "owner-12.pub"),
    )
    wrong = other.deliver(other.request(schema.SETUP))
    assert errors.parse_rejection(int(wrong.error.code), wrong.error.reason) == "wrong-suite"
    # and the honest request is answered, sealed, under the owner's suite
    answered = owner.deliver(owner.request(schema.SETUP))
    assert list(answered.content.keys()) == [codec.ENVELOPE]
    assert json.loads(envelope_of(answered)[0][0])["suite"] == "aes-256-gcm"


# -- weights and white-box gradients only by opt-in -----------------------------------------


def test_teacher_weights_leave_only_by_the_owners_opt_in(tmp_path):
    owner = Owner(tmp_path)
    refused = owner.ask(schema.SETUP, scenario="weights")
    assert refused.answers is None and refused.refusal.code == "policy"
    assert "allowed-scenarios" in refused.refusal.reason
    assert "weights" not in refused.message.content  # nothing but the sealed envelope
    opted = Owner(tmp_path, node_id=12, allowed_scenarios="whitebox,blackbox,weights")
    [setup] = opted.ask(schema.SETUP, scenario="weights").answers
    assert setup.weights and "reg_mean" in setup.arrays


def test_an_owner_can_refuse_white_box_gradients(tmp_path):
    owner = Owner(tmp_path, allowed_scenarios="blackbox")
    assert owner.ask(schema.SETUP, scenario="blackbox").answers
    query = [query_payload(schema.FEEDBACK, 16)]
    refused = owner.ask(schema.FEEDBACK, query, scenario="whitebox")
    assert (
        refused.refusal.code == "policy" and "'whitebox' is not allowed" in refused.refusal.reason
    )
    assert owner.ask(schema.FEEDBACK, query, scenario="blackbox").answers


# -- evaluation: metered, shaped, small classes left out ------------------------------------


def test_evaluation_is_metered_per_run(tmp_path):
    """The reported attack scored 64 crafted models on the owner's test rows for free."""
    owner = Owner(tmp_path, query_budget=1)
    assert owner.ask(schema.SETUP).answers
    scored = 0
    for _ in range(64):
        reply = owner.ask(schema.EVALUATE, [evaluate_payload(np.arange(4.0))])
        if reply.answers:
            scored += 1
        else:
            assert "max-eval-models" in reply.refusal.reason
    assert scored == 6  # the default max-eval-models; 6 x 4 values < max-calibration-values
    values = Owner(tmp_path, node_id=12, max_calibration_values=10)
    assert values.ask(schema.SETUP).answers
    assert values.ask(schema.EVALUATE, [evaluate_payload(np.arange(8.0))]).answers
    refused = values.ask(schema.EVALUATE, [evaluate_payload(np.arange(4.0))])
    assert "max-calibration-values" in refused.refusal.reason
    assert queries_used(owner.ctx) == 0  # evaluation has limits of its own


def test_evaluation_scores_only_a_classifier_over_the_owners_classes(tmp_path):
    owner = Owner(tmp_path)
    assert owner.ask(schema.SETUP).answers
    other_unseen = owner.ask(schema.EVALUATE, [evaluate_payload(unseen=(0, 1, 2, 3, 4, 5, 6))])
    assert "unseen classes" in other_unseen.refusal.reason
    wide = state_to_numpy(classifier(64, 10))
    wide["0.weight"] = np.zeros((8192, 64), dtype=np.float32)  # another architecture
    assert (
        "not a classifier"
        in owner.ask(schema.EVALUATE, [evaluate_payload(weights=wide)]).refusal.reason
    )
    [ok] = owner.ask(schema.EVALUATE, [evaluate_payload()]).answers
    assert ok.arrays["model_seen_total"].sum() > 0


def test_small_classes_are_left_out_of_evaluation_counts(tmp_path):
    owner = Owner(tmp_path, min_class_count=1000)  # more than any digits class has
    [setup] = owner.ask(schema.SETUP).answers
    assert (
        not setup.arrays["test_seen_counts"].any() and not setup.arrays["test_unseen_counts"].any()
    )
    [counts] = owner.ask(schema.EVALUATE, [evaluate_payload(np.arange(3.0))]).answers
    assert all(not v.any() for v in counts.arrays.values())
    some = Owner(tmp_path, node_id=12, min_class_count=1)
    [setup] = some.ask(schema.SETUP).answers
    assert setup.arrays["test_seen_counts"].sum() > 0


# -- service-chosen paths and unbounded work ------------------------------------------------


def test_a_deployed_owner_reads_and_writes_only_where_its_node_config_says(tmp_path, write_xlsa17):
    [mine] = write_owner_data(tmp_path / "data", 1)
    other = write_xlsa17(tmp_path / "other", dim=5, tunseen=True)["dir"]
    owner = Owner(tmp_path, data_dir=str(mine), feature_file=DATA_FILE, cache_dir=tmp_path / "c")
    evil = tmp_path / "service-chose-this"
    [setup] = owner.ask(
        schema.SETUP,
        dataset="xlsa17",
        data_dir=str(other),
        feature_file=str(other / "res101.mat"),  # absolute: the attack
        cache_dir=str(evil),
    ).answers
    assert setup.scalars["dim"] == 64  # its own digits, not the 5-d file
    assert not evil.exists()
    teachers = list(owner.cache.glob("teacher-*.pt"))
    assert teachers and all(stat.S_IMODE(os.stat(t).st_mode) == 0o600 for t in teachers)
    escape = Owner(tmp_path, node_id=12, data_dir=str(mine), feature_file="../other/res101.mat")
    reply = escape.deliver(escape.request(schema.SETUP))
    assert reply.has_error() and "inside the data folder" in reply.error.reason


def test_the_service_cannot_make_an_owner_train_without_bound(tmp_path):
    owner = Owner(
        tmp_path, teacher_epochs=None, max_teachers=2, max_setups=4, cache_dir=tmp_path / "c"
    )
    long = owner.ask(schema.SETUP, teacher_epochs=10**6)
    assert long.refusal and "max-teacher-epochs=100" in long.refusal.reason
    for lr in (1e-3, 2e-3, 3e-3):  # every new setting a new teacher file...
        assert owner.ask(schema.SETUP, teacher_epochs=1, lr_teacher=lr).answers
    assert len(list(owner.cache.glob("teacher-*.pt"))) == 2  # ...but the cache stays bounded
    assert owner.ask(schema.SETUP, teacher_epochs=1).answers  # the 4th (a refusal is free)
    assert "max-setups" in owner.ask(schema.SETUP, teacher_epochs=1).refusal.reason


# -- the service side: nothing a relay or an owner sends stops the run ----------------------


class _Sent:
    """What the transport sees of one reply: a Message from ``node``."""

    def __init__(self, owner: Owner, content: RecordDict, request: Message) -> None:
        self.reply = Message(content, reply_to=request)
        self.reply.metadata.__dict__["_src_node_id"] = owner.node


def _transport(owner: Owner) -> Transport:
    return Transport(owner.service, timeout=1.0, poll_interval=0.01)


def _sealed_by_owner(owner: Owner, request: Message, plaintext: bytes) -> RecordDict:
    """What a hostile *owner* can send: anything, sealed with its real key."""
    with open_session(copy.deepcopy(owner.ctx)) as s:
        header, _ = s.security.open(request, request.metadata.message_type)
        h, body = s.security.channel.seal(
            request.metadata.message_type, header.phase, str(owner.node), "service", plaintext,
            header.seq,
        )  # fmt: skip
    return codec.envelope([(h, body)])


def _junk_array_plaintext() -> bytes:
    """A table of contents naming an array numpy cannot build ('bogus' dtype)."""
    toc = [{"key": "0.arrays", "arrays": [["probs", "bogus", [2, 2], "numpy.ndarray", 4]]}]
    head = json.dumps(toc).encode()
    return len(head).to_bytes(8, "big") + head + b"\0" * 4


def _object_array_plaintext() -> bytes:
    arr = Array(dtype="object", shape=(2,), stype="numpy.ndarray", data=b"\x80\x04N.")
    rd = RecordDict()
    rd["0.arrays"] = ArrayRecord({"probs": arr})
    return codec.to_bytes(rd)


@pytest.mark.parametrize(
    "attack",
    ["list-sender-key", "nested-json", "huge-header", "bogus-dtype", "object-array", "junk"],
)
def test_no_reply_can_crash_the_service(tmp_path, attack):
    """A relay's forged reply, or an owner's authentic nonsense: rejected and counted."""
    owner = Owner(tmp_path)
    transport = _transport(owner)
    request = owner.request(schema.SETUP)
    if attack in ("list-sender-key", "nested-json", "huge-header"):  # a relay's forgery
        [(header, body)] = envelope_of(owner.deliver(copy.deepcopy(request)))
    if attack == "list-sender-key":
        h = json.loads(header)
        h["sender_key"] = [h["sender_key"]]
        content = codec.envelope([(json.dumps(h).encode(), body)])
    elif attack == "nested-json":
        content = codec.envelope([(b"[" * 3000 + b"]" * 3000, body)])
    elif attack == "huge-header":
        content = codec.envelope([(b" " * 100_000 + header, body)])
    else:
        plaintext = {
            "bogus-dtype": _junk_array_plaintext,
            "object-array": _object_array_plaintext,
            "junk": lambda: os.urandom(200),
        }[attack]()
        content = _sealed_by_owner(owner, request, plaintext)
    out = transport._outcome(
        owner.node, schema.SETUP, "setup", 1, _Sent(owner, content, request).reply, None
    )
    assert out.failure == "rejected" and out.answers is None
    assert transport.traffic.rejected == {out.rejection: 1}
    assert transport.traffic.bytes_received == 0  # counted only once validated


def test_a_forged_budget_refusal_does_not_skip_an_owner(tmp_path):
    """An unauthenticated Flower error claiming the owner's budget is spent."""
    owner = Owner(tmp_path)
    transport = _transport(owner)
    request = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 4)])
    forged = Message(
        Error(code=4101, reason="azsl-budget-exceeded:1:1:4: this owner answers at most 1"),
        reply_to=request,
    )
    out = transport._outcome(owner.node, schema.FEEDBACK, "generator-1", 1, forged, None)
    assert out.failure == "error" and out.refusal is None  # a failure: re-sent, never skipped
    # a real refusal is sealed by the owner, and only that one plans the budget
    sealed = Owner(tmp_path, node_id=12, query_budget=1)
    assert sealed.ask(schema.SETUP).answers
    real = sealed.deliver(sealed.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 4)]))
    out = _transport(sealed)._outcome(sealed.node, schema.FEEDBACK, "g", 1, real, None)
    assert out.failure == "budget" and out.refusal == (1, 0, 4)


def _setup_answer(owner: Owner, **arrays: np.ndarray) -> schema.Payload:
    [setup] = owner.ask(schema.SETUP).answers
    setup.arrays.update(arrays)
    return setup


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"covered": np.array([0, 1, 12])}, "outside"),
        ({"covered": np.array([-1, 2])}, "outside"),
        ({"covered": np.array([3, 3])}, "twice"),
        ({"test_seen_counts": np.zeros(3, dtype=np.int64)}, "shape"),
    ],
)
def test_bad_set_up_declarations_are_that_owners_failure(tmp_path, change, reason):
    owner = Owner(tmp_path)
    setup = _setup_answer(owner, **change)
    with pytest.raises(ValueError, match=reason):
        check_setup(10, weights=False)(owner.node, [setup])


def _feedback_answer(owner: Owner, n: int = 8) -> schema.Payload:
    assert owner.ask(schema.SETUP).answers
    asked = [query_payload(schema.FEEDBACK, n)]
    [fb] = owner.ask(schema.FEEDBACK, asked, teacher_answer="logits").answers
    return fb


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("probs", lambda a: a[:1], "shape"),  # (1, C): would broadcast
        ("probs", lambda a: np.full_like(a, 3e38), "outside"),
        ("grad", lambda a: np.full_like(a, 3e38), "outside"),
        ("grad", lambda a: a[:, :10], "shape"),
        ("ce", lambda a: -a - 1, "outside"),
        ("lse", lambda a: a[:-1], "shape"),
    ],
)
def test_feedback_off_the_request_is_rejected(tmp_path, field, value, reason):
    owner = Owner(tmp_path)
    fb = _feedback_answer(owner)
    fields = feedback_fields(TeacherAnswer("logits"), "gradient", whitebox=True, lse_grad=False)
    check = check_feedback(8, 8, 64, 10, {owner.node: np.arange(10)}, fields)
    check(owner.node, [fb])  # the honest answer passes
    fb.arrays[field] = value(fb.arrays[field])
    with pytest.raises(ValueError, match=reason):
        check(owner.node, [fb])


def test_inflated_evaluation_counts_are_rejected(tmp_path):
    owner = Owner(tmp_path)
    [setup] = owner.ask(schema.SETUP).answers
    declared = {owner.node: (setup.arrays["test_seen_counts"], setup.arrays["test_unseen_counts"])}
    check = check_evaluate(10, 1, declared)
    [counts] = owner.ask(schema.EVALUATE, [evaluate_payload(np.zeros(1))]).answers
    check(owner.node, [counts])
    cheat = copy.deepcopy(counts)
    cheat.arrays["model_seen_correct"] = cheat.arrays["model_seen_total"] + 1  # "H 0.999"
    with pytest.raises(ValueError, match="exceeds"):
        check(owner.node, [cheat])
    more = copy.deepcopy(counts)
    more.arrays["model_unseen_total"] = more.arrays["model_unseen_total"] * 10
    more.arrays["teacher_unseen_total"] = more.arrays["teacher_unseen_total"] * 10
    with pytest.raises(ValueError, match="declared at set-up"):
        check(owner.node, [more])


# -- state loss and key files ---------------------------------------------------------------


def test_an_owner_that_lost_its_state_accepts_no_replayed_request(tmp_path):
    owner = Owner(tmp_path, cache_dir=tmp_path / "c")
    assert owner.ask(schema.SETUP).answers
    feedback = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 16)])
    assert owner.peek(schema.FEEDBACK, owner.deliver(copy.deepcopy(feedback))).answers
    # Context and cache are gone (a new machine, a wiped disk); the relay replays the request
    for f in (owner.cache / "runs").iterdir():
        f.unlink()
    replayed = owner.deliver(copy.deepcopy(feedback))
    assert errors.parse_rejection(int(replayed.error.code), replayed.error.reason) == "no-session"
    assert queries_used(owner.ctx) == 0  # nothing was answered or counted


def test_keys_generate_never_writes_through_a_symlink(tmp_path, capsys):
    out, outside = tmp_path / "keys", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "owner.pub").symlink_to(outside / "planted.pub")  # dangling
    assert cli(["keys", "generate", "--out", str(out), "--name", "owner"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not (outside / "planted.pub").exists() and not (out / "owner.key").exists()


def test_a_private_key_others_can_read_loads_with_a_warning(tmp_path):
    key = write_keypair(tmp_path, "owner")
    load_private_key(key)  # 0600: quiet
    key.chmod(0o644)
    with pytest.warns(KeyModeWarning, match="chmod 600"):
        load_private_key(key)


def test_owner_reply_cannot_be_claimed_by_a_second_node_with_the_same_key(tmp_path):
    """Two SuperNodes holding one owner key (a copied key): only one of them is an owner."""
    a = Owner(tmp_path, node_id=11)
    b = Owner(tmp_path, node_id=12)
    write_keypair(tmp_path / "keys" / "spare", "owner-99")
    b.ctx.node_config["owner-key"] = a.ctx.node_config["owner-key"]  # b holds a's key
    allowed = ",".join(
        str(tmp_path / "keys" / p) for p in ("owners/owner-11.pub", "spare/owner-99.pub")
    )
    service = ServiceSecurity.from_files(
        "aes-256-gcm", 3, str(tmp_path / "keys" / "service.key"), allowed
    )
    a.service = b.service = service
    replies = {o.node: o.deliver(o.request(schema.SETUP)) for o in (a, b)}
    assert service.open(11, "query.setup", replies[11].content)
    with pytest.raises(RejectedError, match="already belongs to another node"):
        service.open(12, "query.setup", replies[12].content)
    assert service.bound == {11: next(iter(service.bound.values()))}


def test_run_state_is_private_to_the_owner(tmp_path):
    owner = Owner(tmp_path, cache_dir=tmp_path / "c")
    assert owner.ask(schema.SETUP).answers
    runs = owner.cache / "runs"
    assert stat.S_IMODE(os.stat(runs).st_mode) == 0o700
    [state] = runs.glob("run-3-*.json")
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert Path(state).read_text().startswith("{")
