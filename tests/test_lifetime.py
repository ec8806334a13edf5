"""What a hostile service can take across runs (issue 24, rows 1 and 2).

Every run-config key of a deployed owner's data is the owner's: a service that starts run
after run with new partition settings gets the same DP release back. What the owner answers
about its *test* split, and the set-ups it does, are metered over the owner's lifetime (all
runs), in a ledger on its disk, so new run ids do not buy new evaluation answers.
"""

from __future__ import annotations

import copy
import json

import numpy as np
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from azsl_flower.common.models import classifier, state_to_numpy
from azsl_flower.owner.lifetime import read_lifetime
from azsl_flower.owner.policy import OwnerPolicy
from azsl_flower.owner.session import RUNS
from azsl_flower.owner.state import EXACT_EVALUATION
from azsl_flower.wire import schema
from azsl_flower.wire.channels import ServiceSecurity
from tests.hostile import Owner, deliver_at_once, evaluate_payload

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
    # row 1: its evaluation counts are exact, so a DP owner no longer declares covered;
    # its ε is that of the answers about generated features
    for d in declared:
        assert not d["covered"] and d["answers_covered"] and d["epsilon"] > 0
        assert d["not_covered"] == [EXACT_EVALUATION]


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
        run.open(schema.EVALUATE, r)
        for run, r in zip(runs, deliver_at_once(runs, asks), strict=True)
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
    simulated = OwnerPolicy.from_node_config({"partition-id": 0, "num-partitions": 1})
    deployed = OwnerPolicy.from_node_config({})
    for key in ("lifetime-setups", "lifetime-eval-models", "lifetime-calibration-values"):
        assert simulated.limit(key) == 0 and deployed.limit(key) > 0


# -- the review's row attack: real test rows read through evaluation counts -----------------

LEAK = 1 / 0.96  # relu(z) = LEAK * (leaky(z) + 0.2 * leaky(-z)) for LeakyReLU(0.2)
THRESHOLDS = np.arange(17, dtype=np.float32)  # digits pixels are 0..16 (features = pixel / 16)
TARGET, DECOY = 0, 2  # a seen class whose rows are read; an unseen class to predict otherwise
BIG = 100.0


def crafted_model(gate: list[tuple[int, int]], feature: int) -> dict[str, np.ndarray]:
    """A classifier of the owner's own shape (``classifier(64, 10)``) whose class-TARGET logit
    is ``pixel[feature]`` for a row with ``pixel[j] >= t`` for every (j, t) in ``gate`` and
    -BIG otherwise; DECOY's is -0.5. Scored with calibration values g = 0..16 (subtracted from
    seen logits), TARGET's correct count at g is how many TARGET rows pass the gate with
    ``pixel[feature] >= g``: a histogram, or one row's exact value once the gate isolates it."""
    w = {k: np.zeros_like(v) for k, v in state_to_numpy(classifier(64, 10)).items()}
    unit = 0

    def relu_pair(layer: str, weights: np.ndarray, bias: float) -> tuple[int, int]:
        nonlocal unit
        w[f"{layer}.weight"][unit], w[f"{layer}.bias"][unit] = weights, bias
        w[f"{layer}.weight"][unit + 1], w[f"{layer}.bias"][unit + 1] = -weights, -bias
        unit += 2
        return unit - 2, unit - 1

    # layer 0: relu(p_j - t + 1) and relu(p_j - t) per gate condition (their difference is
    # the indicator p_j >= t for whole pixels), and relu(p_feature) = p_feature
    ind, p = [], 16.0 * np.eye(64, dtype=np.float32)
    for j, t in gate:
        ind.append((relu_pair("0", p[j], 1.0 - t), relu_pair("0", p[j], -float(t))))
    value = relu_pair("0", p[feature], 0.0)
    # layer 3: G = relu(sum of indicators - (n - 1)), 1 for a row that passes the gate, and
    # relu(p_feature); layer 6: TARGET's logit p_feature + BIG * (G - 1)
    unit = 0

    def relu_of(pair: tuple[int, int], size: int) -> np.ndarray:
        row = np.zeros(size, dtype=np.float32)
        row[pair[0]], row[pair[1]] = LEAK, 0.2 * LEAK
        return row

    gate_in = sum((relu_of(a, 1024) - relu_of(b, 1024) for a, b in ind), np.zeros(1024))
    g_unit = relu_pair("3", gate_in.astype(np.float32), 1.0 - len(gate))
    v_unit = relu_pair("3", relu_of(value, 1024), 0.0)
    w["6.bias"][:] = -1e4
    w["6.bias"][DECOY] = -0.5
    w["6.weight"][TARGET] = BIG * relu_of(g_unit, 512) + relu_of(v_unit, 512)
    w["6.bias"][TARGET] = -BIG
    return w


class RowAttack:
    """The review's attack: isolate one real TARGET test row with histograms, then read its
    pixels one crafted model at a time, run after run (a new run id whenever a run's
    ``max-eval-models`` is used up), until the owner stops answering."""

    def __init__(self, owner: Owner, runs: int, first_run: int) -> None:
        self.owner, self.runs, self.next_id = owner, runs, first_run
        self.gate: list[tuple[int, int]] = []
        self.row: dict[int, int] = {}
        self.models = 0  # models the owner scored
        self.run: Owner | None = None
        self.runs_used = 0

    def _counts(self, gate: list[tuple[int, int]], feature: int) -> np.ndarray | None:
        """TARGET's correct counts at each threshold, or None once the owner stops."""
        while True:
            if self.run is None:
                if self.runs_used == self.runs:
                    return None
                self.run, self.runs_used = next_run(self.owner, self.next_id), self.runs_used + 1
                self.next_id += 1
                if not self.run.ask(schema.SETUP).answers:
                    return None
            payload = evaluate_payload(THRESHOLDS, weights=crafted_model(gate, feature))
            reply = self.run.ask(schema.EVALUATE, [payload])
            if reply.answers:
                self.models += 1
                return reply.answers[0].arrays["model_seen_curve"][:, TARGET]
            if "per run" not in reply.refusal.reason:  # a lifetime cap: no new run helps
                return None
            self.run = None  # this run's max-eval-models is spent: start another

    def isolate(self, order: list[int]) -> bool:
        """Narrow the gate to the TARGET rows with the top value of one pixel after another."""
        for j in order:
            hist = self._counts(self.gate, j)
            if hist is None:
                return False
            top = int(np.flatnonzero(hist)[-1])
            if hist[top] < hist[0]:  # this pixel splits the rows left: keep its top value
                self.gate.append((j, top))
                hist = hist[top : top + 1]
            if hist[0] == 1:
                return True
        return False

    def read(self, order: list[int]) -> dict[int, int]:
        for k in order:
            hist = self._counts(self.gate, k)
            if hist is None:
                break
            assert hist[0] == 1, hist  # the gate still isolates one row
            self.row[k] = int(hist[1:].sum())  # how many thresholds 1..16 it passes
        return self.row


def _true_rows() -> np.ndarray:
    """The deployed digits owner's real test rows of TARGET, as whole pixels (for checking)."""
    from azsl_flower.owner.data import load_owner_data

    data = load_owner_data("digits")
    return np.rint(16 * data.test_seen_x[data.test_seen_y == TARGET]).astype(int)


def _attack(tmp_path, runs: int, **node: object) -> RowAttack:
    owner = Owner(tmp_path, **node)
    centre = sorted(range(64), key=lambda j: abs(j // 8 - 3.5) + abs(j % 8 - 3.5))
    attack = RowAttack(owner, runs, first_run=200)
    if attack.isolate(centre):
        attack.read(list(range(64)))
    # every value read is the exact pixel of the one real row the gate isolates
    pixels = _true_rows()
    passing = [r for r in pixels if all(r[j] >= t for j, t in attack.gate)]
    assert len(passing) == 1
    assert all(passing[0][k] == v for k, v in attack.row.items())
    return attack


def test_row_attack_before_lifetime_caps_rebuilds_a_whole_test_row(tmp_path):
    # main's behaviour (only per-run caps): new runs keep the crafted models coming
    attack = _attack(tmp_path, runs=14, lifetime_eval_models=0, lifetime_calibration_values=0)
    assert len(attack.row) == 64, (len(attack.row), attack.runs_used)
    print(f"before: 1 row rebuilt ({len(attack.row)} values) in {attack.runs_used} runs")


def test_row_attack_after_lifetime_caps_reads_a_bounded_part_of_one_row(tmp_path):
    attack = _attack(tmp_path, runs=14)  # the deployed defaults
    models = OwnerPolicy.from_node_config({}).limit("lifetime-eval-models")
    values = OwnerPolicy.from_node_config({}).limit("lifetime-calibration-values")
    # the bound: a model reads at most one value of the isolated row, and the owner scores
    # at most min(lifetime-eval-models, lifetime-calibration-values / 17) such models
    assert attack.models == min(models, values // THRESHOLDS.size)
    assert len(attack.row) <= attack.models - len(attack.gate) < 64
    print(
        f"after: 0 rows rebuilt; {len(attack.row)} of 64 values of one row "
        f"in {attack.runs_used} runs, then refused for good"
    )
