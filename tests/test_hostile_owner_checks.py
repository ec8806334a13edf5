"""What a hostile owner cannot break on the service's side (issue 24, slice A).

Each test plays a hostile owner (or a relay) and asserts that its answer is that owner's
failure, counted and named, while the run goes on with the honest owners: counts that
would swamp or overflow the federation's sums, a tie on the feature size, a cosine
temperature or probe logits that would make the directions' recovery raise. Also here:
the service's replay window on its own, the app registry's version order, and the
benchmarks' writing of each finished run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config
from azsl_flower.owner import handlers
from azsl_flower.owner.session import open_session
from azsl_flower.tools.signing import AppRegistry, SignedApp
from azsl_flower.wire import codec, schema
from azsl_flower.wire.channels import SERVICE, ServiceSecurity
from azsl_flower.wire.crypto import Channel, RejectedError, fingerprint, generate_keypair
from simulations.bench import caltech as benchmark_caltech
from simulations.bench import common as bench
from simulations.bench import owners as benchmark_owners
from simulations.run.inprocess import InProcessGrid
from strategies.checks import MAX_COUNT, ReplyError, check_probe, check_setup
from strategies.requests import sum_counts
from strategies.server_app import run_azsl
from tests import test_dfzsl_federation as dfzsl_tests
from tests.test_hostile_runs import _HANDLERS, SHORT
from tests.test_strategy_parts import _setup_reply, _strategy

Spoil = Callable[[schema.Payload], None]
HANDLERS = {**_HANDLERS, "query.dfzsl_probe": handlers._dfzsl_probe}


class SpoilingGrid(InProcessGrid):
    """Node ``hostile`` opens each request with its real key, answers it honestly, then
    ``spoil[kind]`` changes its decoded answers before it seals them: an authentic reply
    that says what a hostile owner likes."""

    def __init__(self, raw: dict, owners: int, hostile: int, spoil: dict[str, Spoil]) -> None:
        super().__init__(client_app, owners, raw)
        self.hostile, self.spoil = hostile, spoil

    def deliver(self, msg: Message) -> Message | None:
        kind = msg.metadata.message_type
        if msg.metadata.dst_node_id != self.hostile or kind not in self.spoil:
            return super().deliver(msg)
        with open_session(self.contexts[self.hostile]) as s:
            request, parts = s.security.open(msg, kind)
            answers = handlers._answer(s, schema.KINDS[kind], parts, HANDLERS[kind])
            spec = schema.KINDS[kind]
            payloads = [schema.decode(spec, "reply", a) for a in answers]
            for p in payloads:
                self.spoil[kind](p)
            spoilt = [
                schema.encode(spec, "reply", p.arrays, p.scalars, p.weights) for p in payloads
            ]
            return Message(s.security.seal(kind, request, spoilt), reply_to=msg)


def _raw(tmp_path: Path, base: dict, **overrides: object) -> dict[str, object]:
    raw = {**base, "output-dir": str(tmp_path / "out"), "cache-dir": str(tmp_path / "cache")}
    raw.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return raw


def _checkable(**kwargs: object) -> schema.Payload:
    """A set-up reply that passes check_setup(10, ...): per-class counts over 10 classes."""
    reply = _setup_reply(**kwargs)  # type: ignore[arg-type]
    for key in ("test_seen_counts", "test_unseen_counts"):
        reply.arrays[key] = np.full(10, 5, np.int64)
    return reply


def _run(grid: InProcessGrid, raw: dict) -> dict:
    results, _ = run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    return results


# -- counts: bounded so that no owner's sum overflows int64 -------------------------------


def _counts(value: int) -> Spoil:
    def spoil(p: schema.Payload) -> None:
        for key in ("test_seen_counts", "test_unseen_counts"):
            p.arrays[key] = np.where(p.arrays[key] > 0, value, 0).astype(np.int64)

    return spoil


@pytest.mark.parametrize("value", [MAX_COUNT + 1, 1 << 62, -1])
def test_set_up_counts_outside_the_cap_are_that_owners_failure(value):
    reply = _checkable()
    reply.arrays["test_unseen_counts"] = np.full(10, value, np.int64)
    with pytest.raises(
        ReplyError, match=f"test_unseen_counts holds counts outside .0, {MAX_COUNT}"
    ):
        check_setup(10, weights=False)(1000, [reply])
    reply.arrays["test_unseen_counts"] = np.full(10, MAX_COUNT, np.int64)  # the cap itself
    check_setup(10, weights=False)(1000, [reply])


def test_counts_that_would_overflow_int64_are_refused_not_wrapped():
    fields = ("seen_correct", "seen_total", "unseen_correct", "unseen_total", "zsl_correct")

    def reply(value: int) -> schema.Payload:
        arrays = {f"model_{f}": np.full(3, value, np.int64) for f in fields}
        return schema.Payload(arrays, {}, None, None)

    assert sum_counts([reply(2), reply(3)], "model").seen_total.tolist() == [5, 5, 5]
    with pytest.raises(OverflowError, match="seen_correct counts sum outside"):
        sum_counts([reply(1 << 62), reply(1 << 62)], "model")  # int64 would wrap to < 0


def _perfect(value: int) -> Spoil:
    """Evaluation counts to match ``_counts(value)``: every one of them right."""

    def spoil(p: schema.Payload) -> None:
        a = p.arrays
        for who in ("model", "teacher"):
            for part in ("seen", "unseen"):
                total = np.where(a[f"{who}_{part}_total"] > 0, value, 0).astype(np.int64)
                a[f"{who}_{part}_total"] = a[f"{who}_{part}_correct"] = total
                curve = f"{who}_{part}_curve"
                if curve in a:
                    a[curve] = np.broadcast_to(total, a[curve].shape).copy()
            a[f"{who}_zsl_correct"] = a[f"{who}_unseen_total"]

    return spoil


def test_an_owner_declaring_2_62_test_samples_is_dropped_and_sets_nothing(tmp_path):
    """Row 5: 2^62 samples per class, all of them right, gave the federation H = 1."""
    raw = _raw(tmp_path, SHORT, max_retries=1)
    spoil = {"query.setup": _counts(1 << 62), "evaluate": _perfect(1 << 62)}
    results = _run(SpoilingGrid(raw, 2, 1001, spoil), raw)
    fed = results["federation"]
    assert [(d["node"], d["phase"]) for d in fed["dropped"]] == [(1001, "setup")]
    assert "test_seen_counts holds counts outside" in fed["dropped"][0]["reason"]
    assert results["rejected_messages"] == {"invalid-reply": 2}  # sent, re-sent, dropped
    assert fed["node_ids"] == [1000] and set(results["per_owner_teacher"]) == {"1000"}
    # the federation's figures are the honest owner's alone
    assert results["teacher"] == results["per_owner_teacher"]["1000"]
    assert results["teacher"]["h"] < 1.0 and results["student"]["h"] < 1.0


# -- feature size: a tie is one side's failure, never the run's ---------------------------


def test_a_tie_on_the_feature_size_drops_one_side_by_a_fixed_rule():
    s = _strategy()
    s.roster.start([1000, 1001])
    declared = s.aggregate_setup({1000: _setup_reply(dim=64), 1001: _setup_reply(dim=65)})
    assert declared.dim == 64 and s.roster.live == [1000]  # same coverage: lower node id
    [drop] = s.roster.dropped
    assert drop["node"] == 1001 and drop["phase"] == "setup"
    assert "declared 65-d features, as many owners 64-d: a tie" in drop["reason"]
    # the side covering more classes goes on, whatever its node id
    s.roster.start([1000, 1001])
    narrow, wide = _setup_reply(dim=64, covered=range(5)), _setup_reply(dim=65)
    assert s.aggregate_setup({1000: narrow, 1001: wide}).dim == 65
    assert s.roster.live == [1001] and s.roster.dropped[-1]["node"] == 1000
    # 2 against 2: the two sides' coverage decides
    s.roster.start([1, 2, 3, 4])
    four = {1: narrow, 2: narrow, 3: wide, 4: _setup_reply(dim=65, covered=range(3))}
    assert s.aggregate_setup(four).dim == 65 and s.roster.live == [3, 4]


def test_with_three_owners_one_hostile_feature_size_changes_nothing():
    for hostile in (1000, 1001, 1002):  # whichever node it is, and whatever it covers
        s = _strategy()
        s.roster.start([1000, 1001, 1002])
        answers = {n: _setup_reply(dim=64, covered=range(4)) for n in (1000, 1001, 1002)}
        answers[hostile] = _setup_reply(dim=65)  # covers more classes than the others
        assert s.aggregate_setup(answers).dim == 64
        assert [d["node"] for d in s.roster.dropped] == [hostile]
        assert "the other owners 64-d" in s.roster.dropped[0]["reason"]


def test_two_owners_tied_on_the_feature_size_finish_the_run_with_one(tmp_path):
    """Row 6: 64-d against 65-d used to raise out of the strategy and end the run."""
    raw = _raw(tmp_path, SHORT)

    def wider(p: schema.Payload) -> None:
        p.scalars["dim"] = 65

    results = _run(SpoilingGrid(raw, 2, 1001, {"query.setup": wider}), raw)
    fed = results["federation"]
    assert fed["node_ids"] == [1000] and fed["feature_dim"] == 64
    [drop] = fed["dropped"]
    assert drop["node"] == 1001 and drop["phase"] == "setup"
    assert "declared 65-d features, as many owners 64-d" in drop["reason"]
    assert 0.0 <= results["student"]["h"] <= 1.0


# -- scenario dfzsl: hostile temperatures and probe logits --------------------------------


def _dfzsl_setup(temperature: object) -> schema.Payload:
    reply = _checkable()
    reply.arrays["cosine_temperature"] = np.asarray(temperature, np.float32).reshape(-1)
    return reply


@pytest.mark.parametrize("temperature", [1e-30, 0.0, -0.05, np.nan, np.inf, 10.5, [0.1, 0.1]])
def test_a_hostile_cosine_temperature_fails_that_owners_set_up(temperature):
    with pytest.raises(ReplyError, match="cosine_temperature .*: must be one number in"):
        check_setup(10, weights=False, dfzsl=True)(1000, [_dfzsl_setup(temperature)])
    for fine in (1e-20, 0.05, 10.0):  # the owners' own range, (0, 10], within the bounds
        check_setup(10, weights=False, dfzsl=True)(1000, [_dfzsl_setup(fine)])
    with pytest.raises(ReplyError, match="declared no cosine teacher"):
        check_setup(10, weights=False, dfzsl=True)(1000, [_checkable()])


def test_probe_logits_no_cosine_teacher_gives_are_that_owners_failure():
    rng = np.random.default_rng(0)
    probes = rng.standard_normal((40, 8)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    heads = rng.standard_normal((3, 8))
    heads /= np.linalg.norm(heads, axis=1, keepdims=True)
    t = 0.05
    honest = (probes @ heads.T / t).astype(np.float32)
    check = check_probe(probes, {1: np.arange(3)}, {1: t})

    def answer(logits: np.ndarray) -> list[schema.Payload]:
        return [schema.Payload({"logits": logits}, {}, None, None)]

    check(1, answer(honest))
    check(1, answer(np.round(honest, 0)))  # an owner's answer-decimals=0
    with pytest.raises(ReplyError, match="at most 20"):
        check(1, answer(honest * 2))  # cosines of 2 do not exist
    with pytest.raises(ReplyError, match="no class directions follow"):
        check(1, answer(np.zeros_like(honest)))  # match_directions would raise in aggregate
    tiny = check_probe(probes, {1: np.arange(3)}, {1: 1e-20})  # the 1e-30, let through
    with pytest.raises(ReplyError, match="no class directions follow"):
        tiny(1, answer(np.full_like(honest, 1e-5)))


def _temperature(value: float) -> Spoil:
    def spoil(p: schema.Payload) -> None:
        p.arrays["cosine_temperature"] = np.asarray([value], np.float32)

    return spoil


def test_a_dfzsl_owner_declaring_temperature_1e_30_is_dropped_and_the_run_completes(tmp_path):
    """Row 6: a temperature of 1e-30 made match_directions raise inside aggregate_probe."""
    raw = _raw(tmp_path, dfzsl_tests.FAST, encryption="aes-256-gcm", max_retries=0)
    grid = SpoilingGrid(raw, 3, 1002, {"query.setup": _temperature(1e-30)})
    results = _run(grid, raw)
    fed = results["federation"]
    assert fed["node_ids"] == [1000, 1001]
    [drop] = fed["dropped"]
    assert drop["node"] == 1002 and drop["phase"] == "setup"
    assert "cosine_temperature [1e-30]" in drop["reason"]
    assert fed["contributors"]["dfzsl-probe"] == [1000, 1001]
    assert results["student"]["zsl"] > 0.34  # still learns: above chance over 3 unseen


def test_a_dfzsl_owner_answering_signal_free_logits_is_dropped_at_the_probes(tmp_path):
    raw = _raw(tmp_path, dfzsl_tests.FAST, encryption="aes-256-gcm", max_retries=0)

    def flat(p: schema.Payload) -> None:
        p.arrays["logits"] = np.zeros_like(p.arrays["logits"])

    results = _run(SpoilingGrid(raw, 3, 1002, {"query.dfzsl_probe": flat}), raw)
    fed = results["federation"]
    [drop] = fed["dropped"]
    assert drop["node"] == 1002 and drop["phase"] == "dfzsl-probe"
    assert results["rejected_messages"] == {"invalid-reply": 1}
    assert fed["contributors"]["dfzsl-probe"] == [1000, 1001]
    assert results["student"]["zsl"] > 0.34


def test_classes_only_a_dropped_probe_owner_covered_do_not_end_a_dfzsl_run(tmp_path):
    """Class-disjoint owners: the dropped owner's classes have no direction left; they were
    a zero direction, and DFZSL's kappa came out NaN and ended the run."""
    raw = _raw(
        tmp_path, dfzsl_tests.FAST, max_retries=0, partition="class-disjoint", encryption="none"
    )

    def flat(p: schema.Payload) -> None:
        p.arrays["logits"] = np.zeros_like(p.arrays["logits"])

    results = _run(SpoilingGrid(raw, 2, 1001, {"query.dfzsl_probe": flat}), raw)
    fed = results["federation"]
    assert [(d["node"], d["phase"]) for d in fed["dropped"]] == [(1001, "dfzsl-probe")]
    assert fed["orphaned_classes"] and fed["contributors"]["evaluation"] == [1000]
    assert 0.0 <= results["student"]["h"] <= 1.0


# -- the service's replay window, on its own ----------------------------------------------


def test_the_service_refuses_a_reused_seq_even_when_it_answers_the_current_request():
    """Mutant 5: the reply-to check alone would take this reply, which answers the request
    the service waits for; only the replay window (seq above the last accepted) refuses
    it. An owner whose channel state was copied (a SuperNode runs each message with a copy
    of the node's Context) or rolled back seals a second reply under a seq already used."""
    service_key, owner_key = generate_keypair(), generate_keypair()
    owners = {fingerprint(owner_key.public_key()): owner_key.public_key()}
    service = ServiceSecurity("aes-256-gcm", 7, service_key, owners)
    owner = Channel(owner_key, service_key.public_key(), 7, "aes-256-gcm")
    body = codec.to_bytes(codec.bundle([RecordDict()]))

    def ask(phase: str) -> int:
        """The service seals one request to node 5; the owner opens it: its seq."""
        [(header, sealed)] = codec.open_envelope(service.seal(5, "query.verify", phase, []))
        return owner.open(header, sealed, "query.verify", SERVICE, "5")[0].seq

    def answer(seq: int) -> RecordDict:
        return codec.envelope([owner.seal("query.verify", "p", "5", SERVICE, body, seq)])

    first = ask("p")
    state = owner.state()  # the copy a second process of the owner starts from
    assert isinstance(service.open(5, "query.verify", answer(first)), list)  # accepted
    second = ask("p")
    owner.send_seq = int(state["send_seq"])  # type: ignore[call-overload]
    stale = answer(second)  # reply_to is the request the service waits for; seq is reused
    with pytest.raises(RejectedError) as exc:
        service.open(5, "query.verify", stale)
    assert exc.value.reason == "replay"
    assert isinstance(service.open(5, "query.verify", answer(second)), list)  # fresh seq: taken


# -- the app registry: newest version by version order, not string order -----------------


def _app(version: str) -> SignedApp:
    return SignedApp(Path(f"/nowhere/app-{version}.fab"), "@azsl-flower/app", version, [])


def test_the_registry_serves_the_newest_version_by_version_order():
    """Row 10: sorted as strings, 0.9.0 came after 0.10.0."""
    reg = AppRegistry([_app(v) for v in ("0.9.0", "0.10.0", "0.2.1", "0.10.0rc1")])
    assert reg.find("@azsl-flower/app", None).version == "0.10.0"  # type: ignore[union-attr]
    assert reg.find("@azsl-flower/app", "0.9.0").version == "0.9.0"  # type: ignore[union-attr]
    assert reg.find("@azsl-flower/other", None) is None
    reg._server.server_close()


def test_the_registry_refuses_a_version_it_cannot_order():
    with pytest.raises(ValueError, match="'latest' is not a PEP 440 version"):
        AppRegistry([_app("0.1.0"), _app("latest")])


# -- benchmarks: every device name the run config takes; each finished run on disk --------


def test_a_job_on_device_auto_runs_where_the_run_config_would(monkeypatch):
    """``--device auto`` (the benchmarks' default) ran the job, then crashed on
    torch.device('auto') before handing back its figures."""
    import strategies.server_app

    seen: dict[str, object] = {}

    def fake_run(grid, cfg, run_id):  # noqa: ANN001, ANN202
        seen["device"] = cfg.device
        return {"device": "cpu"}, None

    monkeypatch.setattr(strategies.server_app, "run_azsl", fake_run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results, _, _ = bench.run_job("auto", {"dataset": "digits"})
    assert results["device"] == "cpu" and seen["device"] == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu'; choose auto, cpu, cuda"):
        bench.job_device("gpu")


def _results(n: int) -> dict:
    figures = {"zsl": 0.5, "u": 0.5, "s": 0.5, "h": 0.5}
    return {
        "student": figures,
        "teacher": figures,
        "per_owner_teacher": {},
        "round_trips": 3,
        "messages": 6,
        "wall_seconds": 1.0,
        "phase_seconds": {},
        "bytes_sent": 1,
        "bytes_received": 1,
        "verification": {"pass_rate": 1.0},
        "federation": {"orphaned_classes": []},
        "output_dir": f"run-{n}",
        "device": "cpu",
        "config": {},
    }


class _RunFailedError(RuntimeError):
    pass


def _second_run_fails() -> Callable[..., object]:
    calls = []

    def run(*args: object, **kwargs: object) -> object:
        calls.append(args)
        if len(calls) > 1:
            raise _RunFailedError("the second run failed")
        return _results(len(calls))

    return run


def test_benchmark_owners_writes_the_first_run_before_the_second_fails(monkeypatch, tmp_path):
    """The issue's command: --owners 1,10 --runner inprocess, default --device auto."""
    out = tmp_path / "owners.json"
    run = _second_run_fails()
    monkeypatch.setattr(benchmark_owners, "run_job", lambda d, b, owners: (run(), 0.0, 0.0))
    argv = ["benchmark_owners", "--data-dir", str(tmp_path), "--owners", "1,10"]
    monkeypatch.setattr(sys, "argv", [*argv, "--runner", "inprocess", "--out", str(out)])
    with pytest.raises(_RunFailedError):
        benchmark_owners.main()
    saved = json.loads(out.read_text())
    assert [r["owners"] for r in saved["rows"]] == [1] and saved["complete"] is False
    assert saved["rows"][0]["output_dir"] == "run-1"


def test_benchmark_caltech_writes_each_case_before_the_next(monkeypatch, tmp_path):
    out = tmp_path / "caltech.json"
    out.write_text("{}\n")  # an earlier benchmark's figures: kept, the new ones go beside
    run = _second_run_fails()
    monkeypatch.setattr(benchmark_caltech, "run_case", lambda overrides: run())
    cases = ",".join(list(benchmark_caltech.CASES)[:2])
    argv = ["benchmark_caltech", "--data-dir", str(tmp_path), "--cases", cases]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    with pytest.raises(_RunFailedError):
        benchmark_caltech.main()
    assert out.read_text() == "{}\n"
    [mine] = [p for p in tmp_path.glob("caltech-*.json")]
    assert len(json.loads(mine.read_text())["rows"]) == 1
