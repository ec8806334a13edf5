"""Issue 24, slice B: the owner's limits hold in every scenario, its node config refuses
values that make no sense, and two mutants the suite let through.

- the ``teacher-answer`` ceiling in every scenario: white-box's per-sample losses and input
  gradients reveal the whole softmax, so an owner below ``probs`` refuses white-box;
- node-config values that make no sense (the review's: ``teacher-delta`` 0.999999,
  ``dp-lr`` inf, ``answer-decimals`` 100000, ``dfzsl-temperature`` 1e-320) are refused,
  naming the key and its range, with one boundary on each side;
- ``answer-decimals`` rounds every number an owner answers; the DP noise comes from the
  operating system, never from a constant or the run's seed.

The owner is deployed (:class:`tests.hostile.Owner`); its service end may send anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from azsl_flower.common.config import parse_run_config
from azsl_flower.owner import state as owner_state_module
from azsl_flower.owner.answers import feedback_answer, verify_answer
from azsl_flower.owner.policy import OwnerPolicy, PolicyError
from azsl_flower.owner.privacy import MAX_ANSWER_DECIMALS, OwnerPrivacy, owner_privacy
from azsl_flower.owner.state import owner_state
from azsl_flower.wire import schema
from azsl_flower.wire.errors import Refused
from tests.conftest import FAST
from tests.hostile import Owner, query_payload

# -- the teacher-answer ceiling in every scenario ---------------------------------------------


def _one_sample_queries(n: int = 10) -> list[dict]:
    """The review's attack: each generated feature asked about in a batch of its own, so
    the answer's cross-entropy is -log p_y of that one sample."""
    payload = query_payload(schema.FEEDBACK, n)
    payload["scalars"]["batch_size"] = 1
    return [payload]


@pytest.mark.parametrize("ceiling", ["label", "topk:3"])
def test_an_owner_below_probs_refuses_white_box(tmp_path, ceiling):
    owner = Owner(tmp_path, teacher_answer=ceiling)
    # set-up in white-box is refused: the owner says so before any work
    setup = owner.ask(schema.SETUP, scenario="whitebox", teacher_answer=ceiling)
    assert setup.refusal is not None and "scenario=whitebox" in setup.refusal.reason
    # the hostile service sets up in black-box, then asks white-box feedback for no more
    # than the ceiling, one sample a batch
    assert owner.ask(schema.SETUP, scenario="blackbox", teacher_answer=ceiling).answers
    reply = owner.ask(
        schema.FEEDBACK,
        _one_sample_queries(),
        scenario="whitebox",
        teacher_answer=ceiling,
        regulariser_answer="none",
    )
    assert reply.answers is None and reply.refusal is not None
    assert reply.refusal.code == "policy"
    assert f"teacher-answer={ceiling}" in reply.refusal.reason
    assert "whole softmax" in reply.refusal.reason
    # black-box within the ceiling is still answered, and only with the asked mode
    [fb] = owner.ask(
        schema.FEEDBACK,
        _one_sample_queries(),
        scenario="blackbox",
        teacher_answer=ceiling,
        regulariser_answer="none",
    ).answers
    assert set(fb.arrays) == {"probs"}


def test_an_owner_at_probs_still_answers_white_box(tmp_path):
    owner = Owner(tmp_path, teacher_answer="probs")
    assert owner.ask(schema.SETUP, scenario="whitebox", teacher_answer="probs").answers
    [fb] = owner.ask(
        schema.FEEDBACK,
        _one_sample_queries(),
        scenario="whitebox",
        teacher_answer="probs",
        regulariser_answer="none",
    ).answers
    assert {"probs", "ce", "grad"} <= set(fb.arrays) and "lse" not in fb.arrays
    # what it answers is at most the softmax: each sample's CE is -log of its probability
    p = fb.arrays["probs"][np.arange(10), np.arange(10) % 10]
    np.testing.assert_allclose(fb.arrays["ce"], -np.log(p), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("scenario", "ceiling", "needs"),
    [
        ("whitebox", "label", "probs"),
        ("whitebox", "topk:9", "probs"),
        ("dfzsl", "probs", "logits"),
        ("weights", "topk:3", "logits"),
    ],
)
def test_answers_never_exceed_the_ceiling_whoever_calls_them(scenario, ceiling, needs):
    # the handlers check the policy first; the answer functions (which the audit attacks
    # too) refuse on their own before touching the teacher
    policy = owner_privacy({"teacher-answer": ceiling})
    settings = {"scenario": scenario, "teacher-answer": "label", "regulariser-answer": "none"}
    x, y = np.zeros((1, 64), np.float32), np.zeros(1, np.int64)
    with pytest.raises(Refused, match=f"teacher-answer={needs} or more"):
        feedback_answer(None, x, y, 1, {**settings, "alpha": 1.0}, policy)  # type: ignore[arg-type]
    with pytest.raises(Refused, match=f"scenario={scenario}"):
        verify_answer(None, x, settings, policy)  # type: ignore[arg-type]
    owner_privacy({"teacher-answer": needs}).check(settings)  # at the ceiling: answered


def test_weights_sends_the_statistics_only_under_a_gradient_ceiling(tmp_path):
    # weights sends the regulariser's class means and variances themselves: more than an
    # owner whose regulariser-answer stops at value gives, whatever the service asks
    owner = Owner(
        tmp_path, allowed_scenarios="whitebox,blackbox,weights", regulariser_answer="value"
    )
    refused = owner.ask(schema.SETUP, scenario="weights", regulariser_answer="value")
    assert refused.refusal is not None and "regulariser-answer=value" in refused.refusal.reason
    [setup] = owner.ask(schema.SETUP, scenario="weights", regulariser_answer="none").answers
    assert setup.weights and "reg_mean" not in setup.arrays


# -- node-config values that make no sense -------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        # the review's values
        ({"dp-lr": "inf"}, r"dp-lr='inf': a finite number in \(0, 10\]"),
        ({"answer-decimals": 100000}, r"answer-decimals='?100000'?: a whole number in -1..9"),
        ({"dfzsl-temperature": 1e-320}, r"dfzsl-temperature=1e-320.*\[0.001, 10\]"),
        # one boundary past each limit
        ({"dp-lr": 10.001}, "dp-lr='?10.001'?"),
        ({"dp-lr": 0}, "dp-lr='?0'?"),
        ({"answer-decimals": 10}, "answer-decimals='?10'?"),
        ({"answer-decimals": -2}, "answer-decimals='?-2'?"),
        ({"dfzsl-temperature": 0.00099}, "dfzsl-temperature=0.00099"),
        ({"dfzsl-temperature": 10.01}, "dfzsl-temperature=10.01"),
        ({"teacher-delta": 1}, r"teacher-delta='?1'?: a finite number in \(0, 1\)"),
        ({"teacher-delta": -1e-9}, "teacher-delta='?-1e-09'?"),
        # every other numeric key: finite, in a stated range
        ({"teacher-epsilon": "nan"}, r"teacher-epsilon='nan'.*\(0, 1000\]"),
        ({"teacher-epsilon": -1}, "teacher-epsilon='?-1'?"),
        ({"teacher-epsilon": 1000.5}, "teacher-epsilon='?1000.5'?"),
        ({"stats-epsilon": "-inf"}, "stats-epsilon='-inf'"),
        ({"stats-clip": "inf"}, "stats-clip='inf'"),
        ({"stats-clip": -3}, "stats-clip='?-3'?"),
        ({"dp-clip": "inf"}, "dp-clip='inf'"),
        ({"dp-clip": 0}, "dp-clip='?0'?"),
        ({"dp-batch-size": 0}, r"dp-batch-size='?0'?: a whole number in 1..1048576"),
        ({"dp-batch-size": 2**20 + 1}, "dp-batch-size='?1048577'?"),
        ({"dp-epochs": 0}, "dp-epochs='?0'?"),
        ({"dp-epochs": 10_001}, r"dp-epochs='?10001'?: a whole number in 1..10000"),
        ({"dp-epochs": 1.5}, "dp-epochs='?1.5'?"),
        ({"epsilon-limit": "nan"}, "epsilon-limit='nan'"),
        ({"epsilon-limit": -2}, "epsilon-limit='?-2'?"),
        ({"seed": 2**31}, r"seed=2147483648: give a whole number in 0..2147483647"),
        ({"teacher-epochs": 10_001}, "teacher-epochs=10001"),
        ({"query-budget": 10**12 + 1}, r"query-budget=1000000000001.*0..1000000000000"),
        ({"max-setups": 10**30}, "max-setups="),
        ({"device": "gpu"}, "device='gpu': choose auto, cpu, cuda or cuda:N"),
        ({"device": "cudax"}, "device='cudax'"),
    ],
)
def test_a_node_config_that_makes_no_sense_stops_the_owner(config, match):
    with pytest.raises(PolicyError, match=match):
        OwnerPolicy.from_node_config(config)


@pytest.mark.parametrize(
    "config",
    [
        {"dp-lr": 10},
        {"dp-lr": 2.0},
        {"answer-decimals": 9},
        {"answer-decimals": -1},
        {"answer-decimals": 0},
        {"dfzsl-temperature": 0.001},
        {"dfzsl-temperature": 10},
        {"teacher-delta": 0.999999},  # below 1 parses; 1/n is checked with the data
        {"teacher-delta": ""},
        {"teacher-epsilon": 1000},
        {"teacher-epsilon": ""},
        {"teacher-epsilon": 0},
        {"teacher-epsilon": "inf"},
        {"epsilon-limit": "inf"},
        {"dp-batch-size": 2**20, "dp-epochs": 10_000, "dp-clip": 1e-3},
        {"seed": 2**31 - 1, "teacher-epochs": 10_000, "query-budget": 10**12},
        {"device": "cuda:1"},
    ],
)
def test_values_inside_the_ranges_are_read(config):
    OwnerPolicy.from_node_config(config)


def test_not_private_spellings_mean_not_private():
    for raw in ("", 0, "0", "inf", " INF "):
        p = owner_privacy({"teacher-epsilon": raw, "stats-epsilon": raw, "epsilon-limit": raw})
        assert not p.dp_teacher and not p.dp_stats and math.isinf(p.epsilon_limit), raw


def test_delta_must_be_below_one_over_n():
    n = 1000
    assert OwnerPrivacy().delta(n) == pytest.approx(1 / (10 * n))
    below = math.nextafter(1 / n, 0.0)
    assert OwnerPrivacy(teacher_delta=below).delta(n) == below
    for delta in (1 / n, 0.999999):
        with pytest.raises(Refused, match=rf"teacher-delta={delta:g} is not below 1/n = 0.001"):
            OwnerPrivacy(teacher_delta=delta).delta(n)


def _declared_delta(owner: Owner) -> float:
    [setup] = owner.ask(schema.SETUP, scenario="blackbox").answers
    return float(setup.scalars["delta"])  # type: ignore[arg-type]


def test_an_owner_refuses_a_delta_of_one_over_n_or_more_at_set_up(tmp_path):
    # the review's value: the node config parses (δ < 1), but this owner has n training
    # images and δ >= 1/n; set-up, where the owner declares δ, is refused naming it
    n = round(1 / (10 * _declared_delta(Owner(tmp_path, node_id=20))))
    for node, delta in ((21, 0.999999), (22, 1 / n)):
        refused = Owner(tmp_path, node_id=node, teacher_delta=delta).ask(
            schema.SETUP, scenario="blackbox"
        )
        assert refused.refusal is not None and refused.refusal.code == "policy"
        reason = refused.refusal.reason
        assert f"teacher-delta={delta:g}" in reason and f"1/n = {1 / n:.3g}" in reason
        assert f"n = {n} training images" in reason
    below = math.nextafter(1 / n, 0.0)
    assert _declared_delta(Owner(tmp_path, node_id=23, teacher_delta=below)) == below


def test_a_dp_owner_with_delta_past_one_over_n_releases_nothing(tmp_path):
    # the δ check comes before DP-SGD plans or trains anything: nothing is released
    owner = Owner(tmp_path, teacher_epsilon=4.0, teacher_delta=0.999999, dp_epochs=1)
    refused = owner.ask(schema.SETUP, scenario="blackbox")
    assert refused.refusal is not None and "teacher-delta=0.999999" in refused.refusal.reason
    assert not list(owner.cache.glob("teacher-*.dp.json"))


# -- answer-decimals rounds every number answered ------------------------------------------


def _all_numbers(owner: Owner) -> dict[str, np.ndarray]:
    """Every float of a white-box feedback reply and a verification reply of ``owner``."""
    assert owner.ask(schema.SETUP, scenario="whitebox").answers
    asked = {"scenario": "whitebox", "teacher_answer": "logits", "regulariser_answer": "gradient"}
    [fb] = owner.ask(schema.FEEDBACK, [query_payload(schema.FEEDBACK, 12)], **asked).answers
    [vf] = owner.ask(schema.VERIFY, [query_payload(schema.VERIFY, 12)], **asked).answers
    out = {f"feedback {k}": v for k, v in fb.arrays.items()}
    out |= {f"verify {k}": v for k, v in vf.arrays.items() if v.dtype.kind == "f"}
    return out


def _at_decimals(v: np.ndarray, decimals: int) -> bool:
    scaled = v.astype(np.float64) * 10**decimals
    return bool(np.all(np.abs(scaled - np.round(scaled)) < 1e-3))


def test_answer_decimals_rounds_every_number_answered(tmp_path):
    expected = {"probs", "ce", "reg", "grad", "lse"}
    rounded = _all_numbers(Owner(tmp_path, node_id=30, answer_decimals=2))
    exact = _all_numbers(Owner(tmp_path, node_id=31, answer_decimals=-1))
    assert {k.split()[1] for k in rounded if k.startswith("feedback")} == expected
    assert {"verify probs", "verify lse"} <= set(rounded)
    for name, v in rounded.items():
        assert _at_decimals(v, 2), f"{name} is not rounded to 2 decimals: {v.ravel()[:5]}"
        # the same answer, rounded: the owner rounds its own answer and nothing else
        np.testing.assert_allclose(v, exact[name], atol=0.005 + 1e-6, err_msg=name)
    # -1: exact answers, which have more than 2 decimals
    for name, v in exact.items():
        assert not _at_decimals(v, 2), f"{name} came back rounded with answer-decimals=-1"
        assert np.all(np.isfinite(v)), name


def test_the_most_decimals_allowed_still_answer_finite_numbers(tmp_path):
    # the bound itself answers finite numbers, unlike the review's 100000 (all NaN)
    numbers = _all_numbers(Owner(tmp_path, node_id=32, answer_decimals=MAX_ANSWER_DECIMALS))
    for name, v in numbers.items():
        assert np.all(np.isfinite(v)), f"{name} at answer-decimals={MAX_ANSWER_DECIMALS}"


# -- the DP noise comes from the operating system --------------------------------------------

FAST_DP = {
    "teacher-epsilon": 4.0,
    "stats-epsilon": 2.0,
    "stats-clip": 80.0,  # digits rows: 64 pixels of 0..16
    "dp-epochs": 1,
    "dp-batch-size": 128,
}


def _fresh_release(cache: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    """One DP release (teacher weights, released class means) of the same owner data and
    node config, with the same run seed, made in a fresh cache by a fresh process (no
    in-memory state)."""
    monkeypatch.setattr(owner_state_module, "_STATE", {})
    raw = {**FAST, "cache-dir": str(cache), "scenario": "blackbox", "seed": 0}
    st = owner_state(parse_run_config(raw).owner_settings(), 0, 1, owner_privacy(FAST_DP))
    assert set(st.mechanisms) == {"teacher", "stats"}
    weights = np.concatenate(
        [t.detach().cpu().numpy().ravel() for t in st.oracle.teacher.state_dict().values()]
    )
    return weights, st.oracle.regulariser.stats()["mean"].copy()


def test_two_dp_releases_of_the_same_data_draw_different_noise(tmp_path, monkeypatch):
    # noise seeded with a constant, or with the run's seed (the service knows it), would
    # make the two releases equal: a service could then subtract the noise it predicts
    w1, m1 = _fresh_release(tmp_path / "cache-1", monkeypatch)
    w2, m2 = _fresh_release(tmp_path / "cache-2", monkeypatch)
    assert w1.shape == w2.shape and not np.array_equal(w1, w2), "DP teacher noise repeated"
    assert m1.shape == m2.shape and not np.array_equal(m1, m2), "DP statistics noise repeated"
    # and each release is kept: the same cache answers from the same one again
    w1_again, m1_again = _fresh_release(tmp_path / "cache-1", monkeypatch)
    np.testing.assert_array_equal(w1_again, w1)
    np.testing.assert_array_equal(m1_again, m1)
