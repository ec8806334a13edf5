"""Combining owners' answers: coverage (default), uniform, confidence and joint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from azsl_flower.common.config import ConfigError, parse_run_config
from azsl_flower.common.semantics import load_class_side
from azsl_flower.owner.oracle import FeedbackOracle, KLRegulariser, Regulariser
from azsl_flower.service.ensemble import (
    combine,
    joint_gates,
    joint_gradient,
    owner_weights,
)
from azsl_flower.wire.channels import ServiceSecurity
from strategies.azsl import AZSLStrategy


def test_combine_over_owners():
    # 3 owners, 4 classes: class 0 only owner 0, class 1 owners 1 and 2, class 3 nobody
    coverage = np.array(
        [[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]],
        dtype=bool,
    )
    y = np.array([0, 1, 2, 3, 1])
    rng = np.random.default_rng(0)
    per_owner = [rng.standard_normal((y.size, 3)).astype(np.float32) for _ in range(3)]
    out = combine(per_owner, coverage, y)
    assert out.shape == (y.size, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], per_owner[0][0])  # one owner: its answer exactly
    for i in (1, 4):  # two owners: their mean, the uncovering owner 0 does not dilute it
        np.testing.assert_allclose(out[i], (per_owner[1][i] + per_owner[2][i]) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[2], sum(p[2] for p in per_owner) / 3, rtol=1e-6)
    np.testing.assert_array_equal(out[3], np.zeros(3))  # nobody covers class 3


def test_combine_over_owners_single_owner_is_identity_on_covered():
    coverage = np.array([[1, 1, 0]], dtype=bool)
    y = np.array([1, 0, 2, 1])
    ans = np.arange(8, dtype=np.float32).reshape(4, 2) + 1
    out = combine([ans], coverage, y)
    np.testing.assert_array_equal(out[[0, 1, 3]], ans[[0, 1, 3]])
    np.testing.assert_array_equal(out[2], [0, 0])


def test_combine_over_owners_one_dimensional_answers():
    coverage = np.array([[1, 0], [1, 1]], dtype=bool)
    y = np.array([0, 1])
    out = combine([np.array([2.0, 5.0]), np.array([4.0, 7.0])], coverage, y)
    np.testing.assert_allclose(out, [3.0, 7.0])


# ---------------------------------------------------------------------------------------
# ensemble-weighting: uniform, coverage, confidence on hand-made cases
# ---------------------------------------------------------------------------------------

# 3 owners, 4 classes. Class 0: owner 0 only; class 1: owners 1 and 2; class 2: all three;
# class 3: nobody.
COVERAGE = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]], dtype=bool)
Y = np.array([0, 1, 2, 3, 1])


def _probs() -> list[np.ndarray]:
    """Each owner's softmax in the global label space: zero on classes it never saw."""
    p0 = np.array(
        [[0.8, 0, 0.2, 0], [0.5, 0, 0.5, 0], [0.4, 0, 0.6, 0], [0.9, 0, 0.1, 0], [1, 0, 0, 0]]
    )
    p1 = np.array(
        [[0, 0.3, 0.7, 0], [0, 0.6, 0.4, 0], [0, 0.8, 0.2, 0], [0, 0.5, 0.5, 0], [0, 0, 1, 0]]
    )
    p2 = np.array(
        [[0, 0.1, 0.9, 0], [0, 0.2, 0.8, 0], [0, 0.9, 0.1, 0], [0, 0.5, 0.5, 0], [0, 0, 1, 0]]
    )
    return [p.astype(np.float32) for p in (p0, p1, p2)]


def test_uniform_averages_every_owner_covering_or_not():
    probs = _probs()
    w = owner_weights(COVERAGE, Y, "uniform")
    np.testing.assert_allclose(w, np.full((3, 5), 1 / 3))
    out = combine(probs, COVERAGE, Y, probs, "uniform")
    np.testing.assert_allclose(out, sum(probs) / 3, rtol=1e-6)
    # the naive baseline's weakness: owner 0 alone knows class 0, yet its answer is diluted
    # by two owners that put 0 on class 0
    assert out[0, 0] == pytest.approx(0.8 / 3)


def test_coverage_is_the_default_and_ignores_owners_outside_the_class():
    probs = _probs()
    assert np.array_equal(
        combine(probs, COVERAGE, Y),
        combine(probs, COVERAGE, Y, probs, "coverage"),
    )
    w = owner_weights(COVERAGE, Y, "coverage")
    expected = np.array(
        [[1, 0, 1 / 3, 0, 0], [0, 0.5, 1 / 3, 0, 0.5], [0, 0.5, 1 / 3, 0, 0.5]], dtype=np.float32
    )
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_confidence_weights_covering_owners_by_their_probability_of_the_intended_class():
    probs = _probs()
    w = owner_weights(COVERAGE, Y, "confidence", probs)
    # sample 1 (class 1): owners 1 and 2 say 0.6 and 0.2 -> 3/4 and 1/4; owner 0 not covering
    np.testing.assert_allclose(w[:, 1], [0, 0.75, 0.25], rtol=1e-6)
    # sample 2 (class 2): owners say 0.6, 0.2, 0.1 -> 6/9, 2/9, 1/9
    np.testing.assert_allclose(w[:, 2], [6 / 9, 2 / 9, 1 / 9], rtol=1e-6)
    # sample 4 (class 1): both covering owners give class 1 zero -> coverage weights
    np.testing.assert_allclose(w[:, 4], [0, 0.5, 0.5])
    np.testing.assert_array_equal(w[:, 3], [0, 0, 0])  # nobody covers class 3
    out = combine(probs, COVERAGE, Y, probs, "confidence")
    np.testing.assert_allclose(
        out[2], (6 * probs[0][2] + 2 * probs[1][2] + probs[2][2]) / 9, rtol=1e-6
    )
    # gradients (any shape) are combined with the same weights
    grads = [np.full((5, 2, 3), k + 1.0, dtype=np.float32) for k in range(3)]
    g = combine(grads, COVERAGE, Y, probs, "confidence")
    np.testing.assert_allclose(g[1], np.full((2, 3), 0.75 * 2 + 0.25 * 3), rtol=1e-6)
    np.testing.assert_allclose(g[2], np.full((2, 3), (6 * 1 + 2 * 2 + 1 * 3) / 9), rtol=1e-6)


@pytest.mark.parametrize("mode", ["coverage", "confidence"])
def test_a_class_covered_by_one_owner_gets_its_answer_exactly(mode):
    probs = _probs()
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((5, 7)).astype(np.float32) for _ in range(3)]
    for answers in (probs, grads):
        out = combine(answers, COVERAGE, Y, probs, mode)
        np.testing.assert_array_equal(out[0], answers[0][0])
        np.testing.assert_array_equal(out[3], 0)  # nobody covers class 3


def test_weights_sum_to_one_where_someone_covers_the_class():
    probs = _probs()
    for mode in ("uniform", "coverage", "confidence"):
        w = owner_weights(COVERAGE, Y, mode, probs)
        assert w.shape == (3, 5) and w.dtype == np.float32 and (w >= 0).all()
        covered = COVERAGE[:, Y].any(0)
        np.testing.assert_allclose(w.sum(0)[covered], 1.0, rtol=1e-6)


def test_bad_weighting_requests():
    with pytest.raises(ValueError, match="confidence needs every owner's probabilities"):
        owner_weights(COVERAGE, Y, "confidence")
    with pytest.raises(ValueError, match="unknown ensemble-weighting 'vote'"):
        owner_weights(COVERAGE, Y, "vote")


# ---------------------------------------------------------------------------------------
# The strategy uses the configured rule for feedback (and verification / student targets)
# ---------------------------------------------------------------------------------------


def _strategy(**raw) -> AZSLStrategy:
    cfg = parse_run_config(raw)
    return AZSLStrategy(
        cfg, load_class_side("digits"), torch.device("cpu"), ServiceSecurity("none", 0)
    )


def _admitted(
    strategy: AZSLStrategy, covered: list[list[int]], dim: int, num_classes: int
) -> AZSLStrategy:
    """The strategy after set-up with owners 0..n-1 covering ``covered``."""
    nodes = list(range(len(covered)))
    strategy.roster.start(nodes)
    strategy.roster.admit(
        {n: np.array(c) for n, c in zip(nodes, covered, strict=True)},
        dict.fromkeys(nodes, 0),
        np.arange(num_classes),
        np.array([], int),
        dim,
        num_classes,
    )
    return strategy


@pytest.mark.parametrize("mode", ["uniform", "coverage", "confidence"])
def test_aggregate_feedback_follows_ensemble_weighting(mode):
    probs = _probs()
    grads = [np.full((5, 2), k + 1.0, dtype=np.float32) for k in range(3)]
    answers = [
        {
            "probs": p,
            "grad": g,
            "ce": np.array([k], np.float32),
            "reg": np.array([0.0], np.float32),
            "lse": np.zeros(Y.size, np.float32),
        }
        for k, (p, g) in enumerate(zip(probs, grads, strict=True))
    ]
    s = _admitted(_strategy(**{"ensemble-weighting": mode}), [[0, 2], [1, 2], [1, 2]], 2, 4)
    fb = s.aggregate_feedback(dict(enumerate(answers)), Y)
    w = owner_weights(COVERAGE, Y, mode, probs)
    np.testing.assert_allclose(fb.probs, np.einsum("on,onc->nc", w, np.stack(probs)), rtol=1e-6)
    np.testing.assert_allclose(fb.grad, np.einsum("on,onc->nc", w, np.stack(grads)), rtol=1e-6)


class _Grid:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1000, 1000 + self.n))


def test_explicit_owner_classes_are_checked_before_any_message():
    s = _strategy(partition="explicit", **{"owner-classes": "0-4;5-9"})
    assert s.configure_setup(_Grid(2)).nodes == [1000, 1001]
    with pytest.raises(ConfigError, match=r"2 group\(s\) but 3 owners are connected"):
        s.configure_setup(_Grid(3))
    s = _strategy(partition="explicit", **{"owner-classes": "0-4;5-12"})
    with pytest.raises(ConfigError, match=r"class\(es\) \[10, 11, 12\] but the dataset has 10"):
        s.configure_setup(_Grid(2))


# ---------------------------------------------------------------------------------------
# ensemble-weighting=joint: one softmax over every owner's logits, checked against autograd
# ---------------------------------------------------------------------------------------


def _joint_owners(covered: list[list[int]], dim: int = 6, num_classes: int = 5, reg=None):
    torch.manual_seed(3)
    return [
        FeedbackOracle(
            torch.nn.Linear(dim, len(c)),
            np.array(c),
            num_classes,
            reg(c) if reg else Regulariser(),
            torch.device("cpu"),
        )
        for c in covered
    ]


def _joint_reference(owners, x: np.ndarray, y: np.ndarray, alpha: float, covered):
    """-log p_joint(y|x) per sample (batch mean) + alpha * covering owners' R, by autograd."""
    xt = torch.from_numpy(x).requires_grad_(True)
    logits = [o.teacher(xt) for o in owners]
    lse = torch.stack([lg.logsumexp(1) for lg in logits])  # owners x n
    per_class = []  # n x owners: owner o's logit of y, -inf where o does not cover y
    for o, c in enumerate(covered):
        col = torch.full((y.size,), -torch.inf)
        for k, cls in enumerate(c):
            col = torch.where(torch.from_numpy(y == cls), logits[o][:, k], col)
        per_class.append(col)
    nll = lse.logsumexp(0) - torch.stack(per_class).logsumexp(0)
    loss = nll.sum() / y.size
    if alpha:
        for o in owners:  # each owner's R only sees classes it covers
            loss = loss + alpha * o.regulariser(xt, torch.from_numpy(y))
    (g,) = torch.autograd.grad(loss, xt)
    joint = torch.zeros(y.size, owners[0].num_classes)
    for o, c in enumerate(covered):
        joint[:, c] += logits[o].exp()
    joint = joint / joint.sum(1, keepdim=True)
    return g.numpy(), joint.detach().numpy()


@pytest.mark.parametrize(
    "covered",
    [
        [[0, 1], [2, 3], [4]],  # class-disjoint: the softmax over concatenated logits
        [[0, 1, 2], [1, 2, 3, 4], [2, 4]],  # overlapping: exp-logits of shared classes add up
    ],
)
def test_joint_gradient_and_probs_match_autograd(covered):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0, 2, 4])
    owners = _joint_owners(covered)
    answers = [o.feedback(x, y, x.shape[0], True, 0.0, lse_grad=True) for o in owners]
    joint_strategy = _admitted(_strategy(**{"ensemble-weighting": "joint"}), covered, 6, 5)
    fb = joint_strategy.aggregate_feedback(dict(enumerate(answers)), y)
    grad, joint = _joint_reference(owners, x, y, 0.0, covered)
    np.testing.assert_allclose(fb.probs, joint, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fb.grad, grad, rtol=1e-4, atol=1e-6)
    # and it is not what coverage weighting gives: other owners' claims now count
    cov = _admitted(_strategy(), covered, 6, 5).aggregate_feedback(dict(enumerate(answers)), y)
    assert np.abs(cov.grad - fb.grad).max() > 1e-3


def test_joint_gradient_keeps_the_covering_owners_regulariser():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    covered = [[0, 1], [2, 3]]

    def reg(c):
        idx = torch.as_tensor(c)
        return KLRegulariser(torch.randn(len(c), 6), torch.rand(len(c), 6) + 0.5, idx)

    owners = _joint_owners(covered, num_classes=4, reg=reg)
    answers = [o.feedback(x, y, x.shape[0], True, 2.0, lse_grad=True) for o in owners]
    probs, lse = [a["probs"] for a in answers], [a["lse"] for a in answers]
    coverage = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    g = joint_gradient(
        [a["grad"] for a in answers], [a["grad_lse"] for a in answers], probs, lse, coverage, y
    )
    ref, _ = _joint_reference(owners, x, y, 2.0, covered)
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)


def test_joint_with_one_owner_is_that_owners_answer():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    (owner,) = _joint_owners([[0, 1, 2]], num_classes=3)
    a = owner.feedback(x, y, 3, True, 0.0, lse_grad=True)
    g = joint_gradient(
        [a["grad"]], [a["grad_lse"]], [a["probs"]], [a["lse"]], np.ones((1, 3), bool), y
    )
    np.testing.assert_allclose(g, a["grad"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(joint_gates([a["lse"]]), 1.0)


def test_joint_gates_are_a_stable_softmax_over_owners():
    lse = [np.array([1000.0, 0.0]), np.array([1000.0 + np.log(3), -5.0])]
    gates = joint_gates(lse)
    np.testing.assert_allclose(gates[:, 0], [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(
        gates[:, 1], [1 / (1 + np.exp(-5)), np.exp(-5) / (1 + np.exp(-5))], rtol=1e-6
    )
    with pytest.raises(ValueError, match="joint needs every owner's log-sum-exp"):
        owner_weights(COVERAGE, Y, "joint", _probs())


def test_joint_blackbox_gradient_is_the_covering_owners_regulariser():
    grads = [np.ones((2, 3), np.float32), 2 * np.ones((2, 3), np.float32)]
    probs = [np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])]
    lse = [np.zeros(2), np.zeros(2)]
    cov = np.array([[1, 0], [0, 1]], dtype=bool)
    g = joint_gradient(grads, None, probs, lse, cov, np.array([0, 1]))
    np.testing.assert_allclose(g, [[1, 1, 1], [2, 2, 2]])
