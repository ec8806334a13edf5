"""Where a deployed round trip's seconds go (issue 23): the owner's timing lines (its own log,
never the wire), the service's per-round-trip timings, and the deploy harness's split."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from flwr.app import Message

from azsl_flower.client_app import app as client_app
from azsl_flower.owner import timing
from azsl_flower.wire import codec, schema
from azsl_flower.wire.channels import ServiceSecurity
from simulations.deploy.results import PARTS, breakdown, format_breakdown, owner_timings, split
from simulations.run.inprocess import InProcessGrid
from strategies.transport import Transport
from tests.hostile import Owner, query_payload

# an owner's ClientApp process: started at epoch 100.0, marks in seconds after that
OWNER = {
    "kind": "query.feedback",
    "node": 7,
    "message": "m1",
    "started": 100.0,
    "at": {
        "app": 0.5,
        "imports": 1.5,
        "handler": 1.6,
        "session": 1.8,
        "opened": 1.9,
        "state": 2.4,
        "answered": 3.4,
        "sealed": 3.5,
        "done": 3.7,
    },
}


def test_split_gives_each_interval_to_its_part_and_sums_to_the_wall():
    # pushed at 98.0, reply pulled 6.0 s later: 2.0 s before the process, 0.3 s after it
    parts = split(OWNER, pushed=98.0, seconds=6.0)
    expected = {
        "pickup": 2.0,  # push -> process start
        "start": 0.5 + 0.1,  # process start -> our imports, imports -> handler
        "imports": 1.0,
        "state": 0.2 + 0.5 + 0.2,  # session, teacher/budget, ledger write after sealing
        "crypto": 0.1 + 0.1,  # open, seal
        "compute": 1.0,
        "reply": 6.0 - 2.0 - 3.7,
    }
    assert parts == pytest.approx(expected)
    assert sum(parts.values()) == pytest.approx(6.0)


def test_split_of_a_rejected_message_gives_the_missing_marks_time_to_the_next():
    rejected = OWNER | {"at": {"handler": 1.6, "session": 1.8, "done": 1.9}}
    parts = split(rejected, pushed=99.0, seconds=3.0)
    assert parts["start"] == pytest.approx(1.6) and parts["imports"] == 0.0
    assert parts["state"] == pytest.approx(0.3) and parts["crypto"] == parts["compute"] == 0.0
    assert sum(parts.values()) == pytest.approx(3.0)


def test_owner_timings_reads_only_complete_timing_lines():
    good = timing.PREFIX + json.dumps(OWNER)
    log = [
        "INFO :      Receiving: query.feedback message (ID: m1)\n",
        good + "\n",
        "2024 stderr noise " + good + "\n",  # a prefix glued behind other output
        timing.PREFIX + '{"kind": "query.verify", "at": {"done": 1.0}\n',  # cut off
        timing.PREFIX + json.dumps({"kind": "x"}) + "\n",  # not a record
        timing.PREFIX + "unavailable: OSError: x\n",
    ]
    assert owner_timings(log) == [OWNER, OWNER]


def test_breakdown_joins_by_message_id_then_by_time_and_counts_the_rest():
    second = OWNER | {"message": "not-the-service-id", "started": 200.0}
    stray = OWNER | {"message": "m9", "node": 8, "started": 500.0}  # no round trip of it
    results = {
        "round_trip_timings": [
            {
                "kind": "query.feedback",
                "phase": "generator",
                "pushed": 98.0,
                "replies": [
                    {"node": 7, "message": "m1", "seconds": 6.0},
                    {"node": 8, "message": "m2", "seconds": None},  # timed out
                ],
            },
            {
                "kind": "query.feedback",
                "phase": "generator",
                "pushed": 199.0,
                "replies": [
                    {"node": 7, "message": "m3", "seconds": 5.0},  # matched by time
                    {"node": 8, "message": "m4", "seconds": 4.0},  # node 8 logged nothing
                ],
            },
        ]
    }
    b = breakdown(results, [OWNER, second, stray])
    assert (b["owner_records"], b["unanswered"], b["unmatched"]) == (3, 1, 1)
    feedback = b["kinds"]["query.feedback"]
    assert feedback["messages"] == 2 and feedback["wall"] == pytest.approx(5.5)
    assert feedback["pickup"] == pytest.approx((2.0 + 1.0) / 2)
    assert feedback["reply"] == pytest.approx((0.3 + 0.3) / 2)
    assert feedback["flower_wait"] == pytest.approx(1.8)
    assert feedback["round_trips"] == 2 and feedback["round_trip_wall"] == pytest.approx(5.5)
    assert sum(feedback[p] for p in PARTS) == pytest.approx(feedback["wall"])
    assert b["kinds"]["all"]["messages"] == 2
    table = format_breakdown(b)
    assert "query.feedback" in table and "1 message(s) without a reply" in table


def test_owner_logs_its_timings_only_when_asked_and_never_in_the_reply(
    tmp_path, monkeypatch, capfd
):
    owner = Owner(tmp_path)
    owner.ask(schema.SETUP)  # timings off: nothing on stderr, no marks kept
    assert timing.PREFIX not in capfd.readouterr().err and not timing._marks
    monkeypatch.setenv(timing.ENV, "1")
    msg = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 4)])
    reply = owner.deliver(msg)
    assert owner.open(schema.FEEDBACK, reply).answers is not None
    [rec] = owner_timings(capfd.readouterr().err.splitlines())
    assert rec["kind"] == "query.feedback" and rec["node"] == owner.node
    assert rec["message"] == msg.metadata.message_id and rec["origin"] == "process"
    order = ["handler", "session", "opened", "state", "answered", "sealed", "done"]
    assert list(rec["at"]) == order  # this process imported the app long before
    assert sorted(rec["at"].values()) == [rec["at"][m] for m in order]
    assert rec["started"] <= time.time() - rec["at"]["done"] + 0.05
    blob = json.dumps({k: v for k, v in reply.content.config_records.items()}, default=str)
    assert "handler" not in blob and "started" not in blob  # nothing of it on the wire


def test_process_age_is_seconds_since_this_process_started():
    code = (
        "import time; time.sleep(0.6); from azsl_flower.owner.timing import process_age; "
        "print(process_age())"
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    age, spent = float(out.stdout), time.monotonic() - t0
    assert 0.6 <= age <= spent + 0.02  # /proc counts in clock ticks (10 ms)


class _Grid(InProcessGrid):
    """Node 1000 answers (an empty set-up reply), node 1001 never does."""

    def deliver(self, msg: Message) -> Message | None:
        if msg.metadata.dst_node_id == 1001:
            return None
        return Message(codec.bundle([]), reply_to=msg)


def test_transport_times_each_round_trip_per_owner():
    grid = _Grid(client_app, 2)
    t = Transport(ServiceSecurity("none", 0), timeout=0.2, poll_interval=0.01)
    before = time.time()
    parts = [schema.encode(schema.SETUP, "request", settings={"dataset": "digits"})]
    t.exchange(grid, schema.SETUP, "setup", parts, [1000, 1001])
    [rt] = t.traffic.timings
    assert rt["kind"] == "query.setup" and rt["phase"] == "setup"
    assert before <= rt["pushed"] <= time.time()
    answered, silent = rt["replies"]
    assert answered["node"] == 1000 and 0 <= answered["seconds"] < 0.2
    assert answered["message"] == grid.sent[0].metadata.message_id
    assert silent == {"node": 1001, "message": grid.sent[1].metadata.message_id, "seconds": None}
