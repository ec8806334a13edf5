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

import numpy as np
import pytest

from azsl_flower.owner.answers import feedback_answer, verify_answer
from azsl_flower.owner.privacy import owner_privacy
from azsl_flower.wire import schema
from azsl_flower.wire.errors import Refused
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
