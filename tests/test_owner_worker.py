"""The owner's worker (``azsl-flower owner serve``) and the ClientApp's fast path to it.

A deployed owner with ``owner-worker=<socket>`` answers through a long-lived process that
keeps torch and the teacher in memory; every guarantee of the in-process path must hold
there: the same answers, the per-run budget under concurrent messages and across a restart,
sealed refusals, a socket only the owner reaches, and bad frames refused without harm.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.common import serde
from flwr.proto.message_pb2 import Message as ProtoMessage  # type: ignore[attr-defined]

from azsl_flower.owner import forward, timing
from azsl_flower.owner.budget import queries_used
from azsl_flower.owner.worker import Worker, WorkerError, bind_socket
from azsl_flower.tools import cli
from azsl_flower.wire import schema
from simulations.deploy.results import owner_timings, split
from strategies.transport import Transport
from tests.hostile import Owner, deliver_at_once, query_payload

ROOT = Path(__file__).resolve().parents[1]


def _socket_path(tmp_path: Path) -> Path:
    folder = tmp_path / "w"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / "owner.sock"


@contextmanager
def thread_worker(path: Path, **kwargs: object) -> Iterator[Worker]:
    """A worker serving in a thread of this process (stopped on the way out)."""
    worker = Worker(path, **kwargs)  # type: ignore[arg-type]
    worker.bind()
    thread = threading.Thread(target=worker.serve_forever, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.shutdown()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the worker did not stop"


@contextmanager
def process_worker(path: Path) -> Iterator[subprocess.Popen]:
    """``azsl-flower owner serve`` as its own process; stopped (SIGTERM, then kill) after."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "azsl_flower.owner.worker", "--socket", str(path)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not forward.listening(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.poll() is not None else "timeout"  # type: ignore[union-attr]
                pytest.fail(f"the worker did not start: {err[-2000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        proc.stderr.close()  # type: ignore[union-attr]


def _arrays(payload: schema.Payload) -> dict[str, bytes]:
    return {k: np.ascontiguousarray(v).tobytes() for k, v in payload.arrays.items()}


def test_worker_answers_set_up_and_feedback_as_the_handler_does(tmp_path):
    sock = _socket_path(tmp_path)
    here = Owner(tmp_path / "a")
    there = Owner(tmp_path / "b", owner_worker=str(sock))
    query = [query_payload(schema.FEEDBACK, 8)]
    with process_worker(sock):
        got = [there.ask(schema.SETUP), there.ask(schema.FEEDBACK, query)]
    want = [here.ask(schema.SETUP), here.ask(schema.FEEDBACK, query)]
    for g, w in zip(got, want, strict=True):
        assert g.error is None and g.refusal is None, (g.error, g.refusal)
        [ga], [wa] = g.answers, w.answers  # type: ignore[misc]
        assert _arrays(ga) == _arrays(wa)
        assert ga.scalars == wa.scalars


def test_concurrent_feedback_through_the_worker_keeps_the_run_budget(tmp_path):
    """Three 8-sample requests at once against a budget of 8: one answered, none over."""
    sock = _socket_path(tmp_path)
    owner = Owner(tmp_path, owner_worker=str(sock), query_budget=8)
    with thread_worker(sock) as worker:
        assert owner.ask(schema.SETUP).answers
        asks = [
            owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 8, seed=i)], f"g-{i}")
            for i in range(3)
        ]
        replies = deliver_at_once([owner] * len(asks), asks)
    assert worker.counts["served"] == 1 + len(asks)  # each went through the worker
    opened = [owner.peek(schema.FEEDBACK, r) for r in replies]
    assert len([o for o in opened if o.answers]) == 1
    for o in opened:
        if not o.answers:  # refused for budget (sealed), or a stale copy (replay window)
            assert (o.refusal is not None and o.refusal.code == "budget") or o.rejection in (
                "out-of-order",
                "replay",
            ), o.error
    assert queries_used(owner.ctx) == 8  # on the owner's disk


def test_a_restarted_worker_still_sees_the_budget_spent_before(tmp_path):
    sock = _socket_path(tmp_path)
    owner = Owner(tmp_path, owner_worker=str(sock), query_budget=12)
    with process_worker(sock):
        assert owner.ask(schema.SETUP).answers
        assert owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 8)]).answers
    with process_worker(sock):  # a new process: nothing but the owner's disk is left
        again = owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 8)])
    assert again.refusal is not None and again.refusal.code == "budget", again.error
    assert (again.refusal.budget, again.refusal.used, again.refusal.asked) == (12, 8, 8)


def test_a_policy_refusal_comes_back_sealed_through_the_worker(tmp_path):
    sock = _socket_path(tmp_path)
    here = Owner(tmp_path / "a")
    there = Owner(tmp_path / "b", owner_worker=str(sock))
    want = here.ask(schema.SETUP, scenario="weights")  # not in this owner's allowed-scenarios
    with thread_worker(sock) as worker:
        got = there.ask(schema.SETUP, scenario="weights")
    assert want.refusal is not None and want.refusal.code == "policy"
    assert got.error is None and got.refusal is not None  # opened with the service's key
    assert (got.refusal.code, got.refusal.reason) == (want.refusal.code, want.refusal.reason)
    assert worker.counts["served"] == 1


def _raw_exchange(path: Path, data: bytes) -> bytes:
    """Send ``data`` and close our side; what the worker sends back before closing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # closed with our bytes unread: refused all the same
            pass
    return out


def _frame(*sections: bytes) -> bytes:
    body = b"".join(len(x).to_bytes(8, "big") + x for x in sections)
    return forward.MAGIC + len(body).to_bytes(8, "big") + body


BAD_FRAMES = {
    "not a frame": b"GET / HTTP/1.1\r\n\r\n",
    "over the cap": forward.MAGIC + (1 << 40).to_bytes(8, "big"),
    "truncated": _frame(b"x" * 100)[:50],
    "undecodable": _frame(b"\xff" * 64, b"\xff" * 64),
    "one section": _frame(b""),
    "sections past the end": forward.MAGIC + (16).to_bytes(8, "big") + (99).to_bytes(8, "big"),
}


def test_bad_frames_are_refused_counted_and_the_worker_keeps_serving(tmp_path):
    sock = _socket_path(tmp_path)
    owner = Owner(tmp_path, owner_worker=str(sock))
    with thread_worker(sock, max_frame=1 << 24, read_timeout=5.0) as worker:
        for name, data in BAD_FRAMES.items():
            assert _raw_exchange(sock, data) == b"", name  # closed, nothing answered
        assert worker.counts["bad_frames"] == len(BAD_FRAMES)
        assert _raw_exchange(sock, b"") == b""  # a readiness probe: counted apart
        assert worker.counts["empty"] == 1 and worker.counts["bad_frames"] == len(BAD_FRAMES)
        assert worker.counts["served"] == 0
        assert owner.ask(schema.SETUP).answers  # still serving
    assert worker.counts["served"] == 1


def test_a_silent_connection_times_out_without_blocking_others(tmp_path):
    sock = _socket_path(tmp_path)
    owner = Owner(tmp_path, owner_worker=str(sock))
    with thread_worker(sock, read_timeout=1.0) as worker:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.connect(str(sock))
            assert owner.ask(schema.SETUP).answers  # while the silent one holds its thread
            silent.settimeout(10)
            assert silent.recv(1) == b""  # closed after read_timeout
        assert worker.counts["bad_frames"] == 1


def test_socket_is_0600_in_a_0700_folder_and_bad_paths_are_refused(tmp_path):
    fresh = tmp_path / "new" / "owner.sock"  # a missing folder is made 0700
    listener = bind_socket(fresh)
    try:
        assert stat.S_IMODE(os.lstat(fresh.parent).st_mode) == 0o700
        st = os.lstat(fresh)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with pytest.raises(WorkerError, match="already listens"):
            bind_socket(fresh)
    finally:
        listener.close()
    stale = bind_socket(fresh)  # a stopped worker's socket is replaced
    stale.close()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(WorkerError, match="chmod 700"):
        bind_socket(shared / "owner.sock")
    plain = _socket_path(tmp_path)
    plain.write_text("not a socket")
    with pytest.raises(WorkerError, match="not a socket"):
        bind_socket(plain)
    assert plain.read_text() == "not a socket"  # nothing already there is lost


def test_an_unreachable_worker_is_that_owners_failure_never_a_crash(tmp_path):
    sock = _socket_path(tmp_path)  # nobody listens
    owner = Owner(tmp_path, owner_worker=str(sock))
    request = owner.request(schema.SETUP)
    reply = owner.deliver(request)
    assert reply.has_error() and reply.error.code == forward.UNAVAILABLE_CODE
    assert str(sock) not in reply.error.reason  # the owner's paths stay in its log
    transport = Transport(owner.service, timeout=1.0, poll_interval=0.01)
    out = transport._outcome(owner.node, schema.SETUP, "setup", 1, reply, None)
    assert out.failure == "error"  # re-sent, then dropped, as any failed owner


FAST_PATH = """
import json, sys
from pathlib import Path
from flwr.common import serde
from flwr.supercore.task_identity import TaskIdentity
from azsl_flower.owner import forward
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 3, 1, 1
sections = [Path(f"{sys.argv[1]}.{i}").read_bytes() for i in (0, 1)]
msg, ctx = forward.decode_request(sections)
from azsl_flower.client_app import app
reply = app(msg, ctx)
Path(sys.argv[2]).write_bytes(serde.message_to_proto(reply).SerializeToString())
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "numpy"))))
"""


def test_the_fast_path_client_app_never_imports_torch(tmp_path):
    sock = _socket_path(tmp_path)
    owner = Owner(tmp_path, owner_worker=str(sock))
    request = owner.request(schema.SETUP)
    ctx = Context(
        run_id=owner.ctx.run_id,
        node_id=owner.ctx.node_id,
        node_config=dict(owner.ctx.node_config),
        state=RecordDict(),
        run_config=dict(owner.ctx.run_config),
    )
    for i, section in enumerate(forward.encode_request(request, ctx)):
        (tmp_path / f"request.{i}").write_bytes(section)
    with thread_worker(sock):
        out = subprocess.run(
            [sys.executable, "-c", FAST_PATH, str(tmp_path / "request"), str(tmp_path / "reply")],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr[-3000:]
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [m for m in modules if m.split(".")[0] == "torch"], modules
    reply = serde.message_from_proto(ProtoMessage.FromString((tmp_path / "reply").read_bytes()))
    assert owner.open(schema.SETUP, reply).answers  # a sealed set-up answer, via the worker


def test_the_fast_path_logs_the_workers_parts_of_a_message(tmp_path, monkeypatch, capfd):
    """With timings on, the ClientApp's timing line has the worker's marks (state, crypto,
    compute) and the socket's share, so the deployment's breakdown shows the fast path."""
    sock = _socket_path(tmp_path)
    owner = Owner(tmp_path, owner_worker=str(sock))
    monkeypatch.setenv(timing.ENV, "1")  # here and in the worker process
    with process_worker(sock):
        assert owner.ask(schema.SETUP).answers
        capfd.readouterr()
        msg = owner.request(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 4)])
        pushed, t0 = time.time(), time.monotonic()
        assert owner.open(schema.FEEDBACK, owner.deliver(msg)).answers
        wall = time.monotonic() - t0
    [rec] = owner_timings(capfd.readouterr().err.splitlines())
    order = ["handler", "session", "opened", "state", "answered", "sealed", "forward", "done"]
    assert list(rec["at"]) == order
    assert sorted(rec["at"].values()) == [rec["at"][m] for m in order]
    parts = split(rec, pushed=pushed, seconds=wall)
    assert parts["forward"] >= 0 and parts["compute"] > 0
    assert sum(parts.values()) == pytest.approx(wall, abs=1e-3)  # marks: 4 decimals


def test_a_worker_started_with_a_node_config_answers_under_no_other(tmp_path):
    sock = _socket_path(tmp_path)
    owner = Owner(tmp_path, owner_worker=str(sock))
    pinned = {**owner.ctx.node_config, "query-budget": 1}  # not the SuperNode's policy
    with thread_worker(sock, node_config=pinned) as worker:
        reply = owner.deliver(owner.request(schema.SETUP))
        assert reply.has_error() and reply.error.code == forward.UNAVAILABLE_CODE
        assert worker.counts["other_node_config"] == 1 and worker.counts["served"] == 0
    same = dict(owner.ctx.node_config)  # owner-worker itself need not be in the pinned copy
    same.pop(forward.KEY)
    with thread_worker(sock, node_config=same) as worker:
        assert owner.ask(schema.SETUP).answers
        assert worker.counts["served"] == 1


def test_owner_serve_refuses_a_bad_socket_path_in_one_line(tmp_path, capsys):
    plain = _socket_path(tmp_path)
    plain.write_text("not a socket")
    assert cli.main(["owner", "serve", "--socket", str(plain)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("azsl-flower: ") and "not a socket" in err and "\n" not in err
