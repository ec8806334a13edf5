"""What a hostile service can take across runs (issue 24, rows 1 and 2).

Every run-config key of a deployed owner's data is the owner's: a service that starts run
after run with new partition settings gets the same DP release back. What the owner answers
about its *test* split, and the set-ups it does, are metered over the owner's lifetime (all
runs), in a ledger on its disk, so new run ids do not buy new evaluation answers.
"""

from __future__ import annotations

import copy
import json

from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from azsl_flower.wire import schema
from azsl_flower.wire.channels import ServiceSecurity
from tests.hostile import Owner

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
