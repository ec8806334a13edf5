"""What a hostile service can take across runs (issue 24, rows 1 and 2).

Every run-config key of a deployed owner's data is the owner's: a service that starts run
after run with new partition settings gets the same DP release back. What the owner answers
about its *test* split, and the set-ups it does, are metered over the owner's lifetime (all
runs), in a ledger on its disk, so new run ids do not buy new evaluation answers.
"""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from azsl_flower.owner.lifetime import read_lifetime
from azsl_flower.owner.session import RUNS
from azsl_flower.wire import schema
from azsl_flower.wire.channels import ServiceSecurity
from tests.hostile import Owner, evaluate_payload

DIGITS_CLIP = 80.0  # digits rows are 64 pixels of 0..16: L2 norm mostly < 80
DP_NODE = {"teacher-epsilon": 4.0, "stats-epsilon": 2.0, "stats-clip": DIGITS_CLIP, "dp-epochs": 1}


def next_run(owner: Owner, run_id: int) -> Owner:
    """The same deployed owner (same keys, node config and disk) in a new run ``run_id``."""
    TaskIdentity.run_id = run_id
    again = copy.copy(owner)
    again.run_id = run_id
    again.ctx = Context(
        run_id=run_id,
        node_id=owner.node,
        node_config=dict(owner.ctx.node_config),
        state=RecordDict(),
        run_config=dict(owner.run_config),
    )
    keys = owner.ctx.node_config
    again.service = ServiceSecurity.from_files(
        owner.service.suite,
        run_id,
        str(keys["service-pub"]).replace(".pub", ".key"),
        str(keys["owner-key"]).replace(".key", ".pub"),
    )
    return again


# -- row 2: a release depends on the owner's data and node config only ---------------------

HOSTILE_PARTITIONS = (
    {"dirichlet_beta": 0.05, "partition": "dirichlet"},
    {"dirichlet_beta": 3.0, "partition": "class-disjoint"},
    {"dirichlet_beta": 0.7, "partition": "explicit", "owner_classes": "0-4;5-9"},
)


def _privacy(reply) -> dict:
    [setup] = reply.answers
    return json.loads(str(setup.scalars["privacy"]))


def test_new_partition_keys_per_run_buy_no_new_dp_release(tmp_path):
    # the review's probe: a deployed DP owner asked to set up in three runs, each with a new
    # dirichlet-beta (and partition, owner-classes), makes one release, declared alike
    cache = tmp_path / "cache"
    owner = Owner(tmp_path, cache_dir=str(cache), **DP_NODE)
    declared = []
    for i, hostile in enumerate(HOSTILE_PARTITIONS):
        run = next_run(owner, 40 + i)
        declared.append(_privacy(run.ask(schema.SETUP, scenario="blackbox", **hostile)))
    assert len(list(cache.glob("teacher-*.dp.json"))) == 1
    assert len(list(cache.glob("dpstats2-*.npz"))) == 1
    assert {d["lifetime_releases"] for d in declared} == {2}
    assert len({d["lifetime_epsilon"] for d in declared}) == 1


def test_epsilon_limit_is_not_burnt_by_new_partition_keys(tmp_path):
    # with epsilon-limit just above one release (teacher 4 + statistics 2 compose to < 6),
    # the later set-ups are answered from that release instead of refused
    owner = Owner(tmp_path, cache_dir=str(tmp_path / "cache"), epsilon_limit=6.0, **DP_NODE)
    for i, hostile in enumerate(HOSTILE_PARTITIONS):
        reply = next_run(owner, 50 + i).ask(schema.SETUP, scenario="blackbox", **hostile)
        assert reply.answers, reply.refusal
    assert len(list((tmp_path / "cache").glob("teacher-*.dp.json"))) == 1


# -- row 1: evaluation and set-ups metered over the owner's lifetime -------------------------


def _evaluate(owner: Owner, models: int, values: int = 1):
    """One evaluation request of ``models`` random classifiers, ``values`` calibration each."""
    payloads = [evaluate_payload(np.arange(float(values))) for _ in range(models)]
    return owner.ask(schema.EVALUATE, payloads)


def test_evaluation_is_metered_over_the_owners_lifetime(tmp_path):
    # per-run caps alone: every new run id would bring 6 more models; the lifetime cap holds
    owner = Owner(tmp_path, lifetime_eval_models=10)
    runs = [next_run(owner, run_id) for run_id in range(60, 64)]
    for run in runs:
        assert run.ask(schema.SETUP).answers
    assert _evaluate(runs[0], 4).answers and _evaluate(runs[1], 4).answers
    refused = _evaluate(runs[2], 4)  # within this run's max-eval-models=6, not the lifetime's
    assert refused.refusal.code == "policy", refused.error
    assert "over this owner's lifetime" in refused.refusal.reason
    assert "node-config lifetime-eval-models" in refused.refusal.reason
    assert "8 used, this request asks 4 more" in refused.refusal.reason
    assert _evaluate(runs[2], 2).answers  # exactly 10
    assert "lifetime-eval-models" in _evaluate(runs[3], 1).refusal.reason
    assert read_lifetime(owner.cache / RUNS, _who(owner))["eval_models"] == 10


def test_calibration_values_are_metered_over_the_owners_lifetime(tmp_path):
    owner = Owner(tmp_path, lifetime_calibration_values=20)
    runs = [next_run(owner, run_id) for run_id in range(70, 73)]
    for run in runs:
        assert run.ask(schema.SETUP).answers
    assert _evaluate(runs[0], 1, values=16).answers
    refused = _evaluate(runs[1], 1, values=5)
    assert "node-config lifetime-calibration-values" in refused.refusal.reason
    assert _evaluate(runs[2], 1, values=4).answers  # exactly 20


def test_set_ups_are_metered_over_the_owners_lifetime(tmp_path):
    owner = Owner(tmp_path, lifetime_setups=3)
    declared = [_privacy(next_run(owner, 80 + i).ask(schema.SETUP)) for i in range(3)]
    # set-up declares the lifetime use, this set-up included, and the caps
    assert [d["lifetime_use"]["setups"] for d in declared] == [1, 2, 3]
    assert declared[0]["lifetime_limits"] == {
        "lifetime-setups": 3,
        "lifetime-eval-models": 48,
        "lifetime-calibration-values": 512,
    }
    refused = next_run(owner, 83).ask(schema.SETUP)
    assert (
        refused.refusal.code == "policy" and "node-config lifetime-setups" in refused.refusal.reason
    )


def _who(owner: Owner) -> str:
    from azsl_flower.owner.session import where

    return where(owner.ctx).identity


def _at_once(owners: list[Owner], messages: list) -> list:
    """Deliver ``messages[i]`` to ``owners[i]`` (each its own Context copy) all at once."""
    start = threading.Barrier(len(messages))
    replies: list = [None] * len(messages)

    def task(i: int) -> None:
        ctx = copy.deepcopy(owners[i].ctx)
        start.wait()
        replies[i] = owners[i].deliver(messages[i], ctx)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(len(messages))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert all(r is not None for r in replies), "a task did not finish"
    return replies


def test_concurrent_runs_and_a_restart_cannot_go_over_a_lifetime_cap(tmp_path):
    # four runs at once, each asking 4 models against a lifetime cap of 10 with 3 used: the
    # run locks do not order them (one per run); the lifetime lock does, so one is answered
    owner = Owner(tmp_path, lifetime_eval_models=10)
    first = next_run(owner, 90)
    assert first.ask(schema.SETUP).answers and _evaluate(first, 3).answers
    runs = [next_run(owner, 91 + i) for i in range(4)]
    for run in runs:
        assert run.ask(schema.SETUP).answers
    asks = [
        run.request(schema.EVALUATE, [evaluate_payload(np.zeros(1)) for _ in range(4)])
        for run in runs
    ]
    replies = [
        run.open(schema.EVALUATE, r) for run, r in zip(runs, _at_once(runs, asks), strict=True)
    ]
    assert sum(bool(r.answers) for r in replies) == 1, [r.refusal or r.error for r in replies]
    for r in replies:
        if not r.answers:
            assert "node-config lifetime-eval-models" in r.refusal.reason
    assert read_lifetime(owner.cache / RUNS, _who(owner))["eval_models"] == 7
    # a restarted SuperNode (a fresh Context, a new process) still knows the lifetime use
    restarted = next_run(owner, 99)
    assert restarted.ask(schema.SETUP).answers
    refused = _evaluate(restarted, 4)
    assert "7 used, this request asks 4 more" in refused.refusal.reason
    assert _evaluate(restarted, 3).answers
    assert read_lifetime(owner.cache / RUNS, _who(owner))["eval_models"] == 10


def test_simulated_owners_have_no_lifetime_caps():
    from azsl_flower.owner.policy import OwnerPolicy

    simulated = OwnerPolicy.from_node_config({"partition-id": 0, "num-partitions": 1})
    deployed = OwnerPolicy.from_node_config({})
    for key in ("lifetime-setups", "lifetime-eval-models", "lifetime-calibration-values"):
        assert simulated.limit(key) == 0 and deployed.limit(key) > 0
