"""Owner side: feedback gradients, what black-box replies can reveal, regularisers, evaluation,
and the owner-state cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from azsl_flower.common.models import classifier
from azsl_flower.owner import state as owner
from azsl_flower.owner.data import OwnerData
from azsl_flower.owner.evaluation import evaluate_model
from azsl_flower.owner.oracle import (
    FeedbackOracle,
    KLRegulariser,
    MMDRegulariser,
    Regulariser,
    make_regulariser,
)
from azsl_flower.owner.state import owner_state

CPU = torch.device("cpu")
NUM_CLASSES = 5
COVERED = np.array([0, 2, 3])  # the teacher knows 3 of the 5 global classes
DIM = 6


@pytest.fixture
def real():
    """The owner's private features: 20 per covered class, distinct means."""
    rng = np.random.default_rng(0)
    y = np.repeat(COVERED, 20)
    x = (rng.standard_normal((y.size, DIM)) + y[:, None]).astype(np.float32)
    return x, y


def _teacher(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return classifier(DIM, COVERED.size).eval()


def _oracle(reg: Regulariser, teacher_seed: int = 0) -> FeedbackOracle:
    return FeedbackOracle(_teacher(teacher_seed), COVERED, NUM_CLASSES, reg, CPU)


def _generated():
    rng = np.random.default_rng(1)
    y = np.array([0, 0, 2, 2, 3, 3, 3, 0, 0, 2, 2])  # covered classes only
    x = (rng.standard_normal((y.size, DIM)) + 1.5).astype(np.float32)
    return x, y


def _expected(oracle, x, y, batch_size, alpha, with_ce):
    """Autograd of CE(T(x), y) + alpha * R(x) per batch, CE averaged over the batch."""
    local = torch.from_numpy(np.searchsorted(COVERED, y))
    grads, ces, regs = [], [], []
    for i in range(0, x.shape[0], batch_size):
        xb = torch.tensor(x[i : i + batch_size], requires_grad=True)
        yb = torch.from_numpy(y[i : i + batch_size])
        ce = F.cross_entropy(oracle.teacher(xb), local[i : i + batch_size])
        r = oracle.regulariser(xb, yb)
        loss = (ce if with_ce else 0.0) + alpha * r
        if loss.requires_grad:
            (g,) = torch.autograd.grad(loss, xb)
        else:
            g = torch.zeros_like(xb)
        grads.append(g.numpy())
        ces.append(float(ce.detach()))
        regs.append(float(r.detach()))
    return np.concatenate(grads), np.array(ces), np.array(regs)


@pytest.mark.parametrize("reg_name", ["kl", "mmd"])
def test_whitebox_gradient_is_ce_plus_alpha_r(real, reg_name):
    oracle = _oracle(make_regulariser(reg_name, *real))
    x, y = _generated()
    alpha, bs = 0.7, 4  # 11 samples: batches of 4, 4, 3
    out = oracle.feedback(x, y, bs, whitebox=True, alpha=alpha)
    grad, ce, reg = _expected(oracle, x, y, bs, alpha, with_ce=True)
    assert out["grad"].shape == x.shape and out["grad"].dtype == np.float32
    np.testing.assert_allclose(out["grad"], grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["ce"], ce, rtol=1e-5)
    np.testing.assert_allclose(out["reg"], reg, rtol=1e-5, atol=1e-7)
    assert out["ce"].shape == out["reg"].shape == (3,)
    # both terms matter: the result differs from either term alone
    r_only, _, _ = _expected(oracle, x, y, bs, alpha, with_ce=False)
    assert np.abs(r_only).max() > 1e-4
    assert not np.allclose(out["grad"], r_only, atol=1e-6)
    ce_only = oracle.feedback(x, y, bs, whitebox=True, alpha=0.0)["grad"]
    assert not np.allclose(out["grad"], ce_only, atol=1e-6)


@pytest.mark.parametrize("reg_name", ["kl", "mmd"])
def test_blackbox_gradient_is_alpha_r_only(real, reg_name):
    oracle = _oracle(make_regulariser(reg_name, *real))
    x, y = _generated()
    alpha, bs = 0.7, 4
    out = oracle.feedback(x, y, bs, whitebox=False, alpha=alpha)
    grad, _, _ = _expected(oracle, x, y, bs, alpha, with_ce=False)
    assert np.abs(grad).max() > 1e-4
    np.testing.assert_allclose(out["grad"], grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("reg_name", ["kl", "mmd", "none"])
def test_blackbox_gradient_carries_no_teacher_information(real, reg_name):
    x, y = _generated()
    a = _oracle(make_regulariser(reg_name, *real), teacher_seed=0)
    b = FeedbackOracle(_teacher(123), COVERED, NUM_CLASSES, a.regulariser, CPU)
    out_a = a.feedback(x, y, 4, whitebox=False, alpha=1.0)
    out_b = b.feedback(x, y, 4, whitebox=False, alpha=1.0)
    assert not np.allclose(out_a["probs"], out_b["probs"])  # the teachers really differ
    np.testing.assert_array_equal(out_a["grad"], out_b["grad"])
    if reg_name == "none":
        assert not out_a["grad"].any()
        # ... while the white-box gradient of the same teacher is not zero
        assert np.abs(a.feedback(x, y, 4, whitebox=True, alpha=1.0)["grad"]).max() > 0


def test_whitebox_ignores_samples_of_uncovered_classes():
    oracle = _oracle(Regulariser())
    x, _ = _generated()
    y = np.array([0, 1, 2, 4, 3, 1, 0, 2, 3, 4, 0])  # 1 and 4: the teacher never saw them
    out = oracle.feedback(x, y, 4, whitebox=True, alpha=1.0)
    unknown = np.isin(y, [1, 4])
    assert not out["grad"][unknown].any()
    assert (np.abs(out["grad"][~unknown]).sum(1) > 0).all()


def test_probs_cover_only_teacher_classes(real):
    oracle = _oracle(make_regulariser("kl", *real))
    x, y = _generated()
    uncovered = np.setdiff1d(np.arange(NUM_CLASSES), COVERED)
    for probs in (oracle.feedback(x, y, 4, True, 1.0)["probs"], oracle.probs(x)):
        assert probs.shape == (x.shape[0], NUM_CLASSES)
        np.testing.assert_allclose(probs[:, COVERED].sum(1), 1.0, rtol=1e-5)
        assert not probs[:, uncovered].any()
        assert (probs[:, COVERED] > 0).all()
    with torch.no_grad():
        ref = oracle.teacher(torch.from_numpy(x)).softmax(1).numpy()
    np.testing.assert_allclose(oracle.probs(x)[:, COVERED], ref, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Regularisers
# ---------------------------------------------------------------------------------------


def test_kl_is_zero_at_real_statistics_and_positive_elsewhere(real):
    x, y = real
    kl = make_regulariser("kl", x, y)
    assert isinstance(kl, KLRegulariser)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert float(kl(xt, yt)) == pytest.approx(0.0, abs=1e-5)
    shifted = float(kl(xt + 1.0, yt))
    scaled = float(kl(xt * 2.0, yt))
    assert shifted > 0.1 and scaled > 0.1
    # mean shift by 1 in every dim: KL = 0.5 * mean(1 / var_real) for each class, averaged
    var = np.stack([x[y == c].var(0) for c in COVERED])
    assert shifted == pytest.approx(float(np.mean(0.5 / var)), rel=1e-3)


def test_kl_ignores_unknown_classes_and_singletons(real):
    kl = make_regulariser("kl", *real)
    x = torch.randn(3, DIM)
    assert float(kl(x, torch.tensor([1, 1, 0]))) == 0.0  # class 1 unknown, class 0 singleton
    x.requires_grad_(True)
    out = kl(x, torch.tensor([1, 1, 4]))
    assert out.requires_grad  # still differentiable: autograd.grad must not fail


def test_kl_stats_round_trip(real):
    kl = make_regulariser("kl", *real)
    stats = kl.stats()
    np.testing.assert_array_equal(stats["classes"], COVERED)
    rebuilt = KLRegulariser(
        torch.from_numpy(stats["mean"]),
        torch.from_numpy(stats["var"]),
        torch.from_numpy(stats["classes"]),
    )
    x, y = _generated()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert float(rebuilt(xt, yt)) == pytest.approx(float(kl(xt, yt)))


def test_mmd_is_zero_on_the_real_sample_and_positive_elsewhere(real):
    x, y = real
    mmd = make_regulariser("mmd", x, y)
    assert isinstance(mmd, MMDRegulariser)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)  # 20 per class < per_class: all kept
    assert float(mmd(xt, yt)) == pytest.approx(0.0, abs=1e-5)
    assert float(mmd(xt + 1.0, yt)) > 1e-2


def test_unknown_regulariser():
    with pytest.raises(ValueError, match="unknown regulariser 'l2'"):
        make_regulariser("l2", np.zeros((2, 2)), np.zeros(2, dtype=np.int64))


# ---------------------------------------------------------------------------------------
# evaluate_model on hand-built data
# ---------------------------------------------------------------------------------------


def _tiny_owner() -> OwnerData:
    # 4 classes: 0, 1 seen; 2, 3 unseen. Features are 4-d "scores" so an identity model
    # predicts argmax(x), which fixes every prediction by hand.
    f = np.float32
    return OwnerData(
        train_x=np.eye(4, dtype=f),
        train_y=np.arange(4),
        test_seen_x=np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.1, 0.3, 0.9, 0]], dtype=f),
        test_seen_y=np.array([0, 1, 0]),
        test_unseen_x=np.array([[0, 0.2, 1, 0], [0.9, 0, 0.1, 0.5], [0.9, 0, 0.5, 0.1]], dtype=f),
        test_unseen_y=np.array([2, 3, 3]),
        seen_classes=np.array([0, 1]),
        unseen_classes=np.array([2, 3]),
        num_classes=4,
        fingerprint="tiny",
    )


def _identity(out_rows) -> nn.Linear:
    lin = nn.Linear(4, len(out_rows))
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4)[out_rows])
        lin.bias.zero_()
    return lin


def test_evaluate_model_counts():
    d = _tiny_owner()
    out = evaluate_model(_identity([0, 1, 2, 3]), d, d.unseen_classes, CPU)
    # seen: rows predict 0 (ok), 1 (ok), 2 (true 0: wrong)
    np.testing.assert_array_equal(out["seen_total"], [2, 1, 0, 0])
    np.testing.assert_array_equal(out["seen_correct"], [1, 1, 0, 0])
    # unseen, whole label space: 2 (ok), 0 (wrong), 0 (wrong)
    np.testing.assert_array_equal(out["unseen_total"], [0, 0, 1, 2])
    np.testing.assert_array_equal(out["unseen_correct"], [0, 0, 1, 0])
    # unseen, restricted to {2, 3}: 2 (ok), 3 (ok), 2 (wrong)
    np.testing.assert_array_equal(out["zsl_correct"], [0, 0, 1, 1])


def test_calibrated_stacking_shifts_seen_probabilities():
    """Logits (here x itself) minus gamma on seen classes 0, 1: every count by hand."""
    d = _tiny_owner()
    model = _identity([0, 1, 2, 3])
    out = evaluate_model(model, d, d.unseen_classes, CPU, calibration=np.array([0, 0.5, 1.5]))
    np.testing.assert_array_equal(out["seen_correct"], [1, 1, 0, 0])  # first value: 0
    np.testing.assert_array_equal(out["unseen_correct"], [0, 0, 1, 0])
    # 0.5 turns [0.9, 0, 0.1, 0.5] to class 3 (0.4 < 0.5) but not [0.9, 0, 0.5, 0.1] to
    # class 3 (class 2 wins); 1.5 also costs the seen rows [1, 0, 0, 0] and [0, 1, 0, 0]
    np.testing.assert_array_equal(out["seen_curve"], [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(out["unseen_curve"], [[0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(out["zsl_correct"], [0, 0, 1, 1])  # unseen-only: unchanged
    one = evaluate_model(model, d, d.unseen_classes, CPU, calibration=np.array([0.5]))
    np.testing.assert_array_equal(one["unseen_correct"], [0, 0, 1, 1])
    assert "unseen_curve" not in one


def test_evaluate_teacher_never_predicts_uncovered_classes():
    d = _tiny_owner()
    covered = np.array([0, 1, 3])  # class 2 unknown to this teacher
    oracle = FeedbackOracle(_identity(covered), covered, 4, Regulariser(), CPU)
    out = evaluate_model(None, d, d.unseen_classes, CPU, oracle=oracle)
    # seen: 0 (ok), 1 (ok), 1 (true 0: wrong; class 2 would win but is not covered)
    np.testing.assert_array_equal(out["seen_correct"], [1, 1, 0, 0])
    np.testing.assert_array_equal(out["seen_total"], [2, 1, 0, 0])
    # unseen: 1 (wrong), 0 (wrong), 0 (wrong); restricted to {2, 3} with 2 masked: 3, 3, 3
    np.testing.assert_array_equal(out["unseen_correct"], [0, 0, 0, 0])
    np.testing.assert_array_equal(out["unseen_total"], [0, 0, 1, 2])
    np.testing.assert_array_equal(out["zsl_correct"], [0, 0, 0, 2])


def test_evaluate_model_empty_unseen_split():
    d = _tiny_owner()
    d.test_unseen_x = np.zeros((0, 4), dtype=np.float32)
    d.test_unseen_y = np.zeros(0, dtype=np.int64)
    out = evaluate_model(_identity([0, 1, 2, 3]), d, d.unseen_classes, CPU)
    assert not out["unseen_total"].any() and not out["zsl_correct"].any()
    np.testing.assert_array_equal(out["seen_correct"], [1, 1, 0, 0])


# ---------------------------------------------------------------------------------------
# owner_state: trains once, caches on disk (under a temporary AZSL_CACHE_DIR)
# ---------------------------------------------------------------------------------------


def _settings(teacher="inductive"):
    return {
        "dataset": "digits",
        "teacher": teacher,
        "teacher-epochs": 1,
        "lr-teacher": 1e-3,
        "seed": 0,
        "regulariser": "kl",
        "device": "cpu",
    }


def test_owner_state_trains_once_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("AZSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(owner, "_STATE", {})
    st = owner_state(_settings(), 0, 1)
    files = list(tmp_path.glob("teacher-*.pt"))
    assert len(files) == 1
    np.testing.assert_array_equal(st.oracle.classes, st.data.seen_classes)  # inductive
    assert st.oracle.num_classes == 10
    assert isinstance(st.oracle.regulariser, KLRegulariser)
    assert owner_state(_settings(), 0, 1) is st  # in-memory reuse

    # a restarted process loads the teacher from disk instead of training it again
    monkeypatch.setattr(owner, "_STATE", {})

    def no_training(*args, **kwargs):
        raise AssertionError("teacher retrained despite a cached copy")

    monkeypatch.setattr(owner, "fit", no_training)
    again = owner_state(_settings(), 0, 1)
    assert again is not st
    for (k, a), b in zip(
        st.oracle.teacher.state_dict().items(),
        again.oracle.teacher.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), k


def test_owner_state_transductive_covers_unseen(tmp_path, monkeypatch):
    monkeypatch.setenv("AZSL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(owner, "_STATE", {})
    st = owner_state(_settings("transductive"), 0, 2)
    assert st.oracle.classes.tolist() == list(range(10))
    assert set(st.data.unseen_classes) <= set(st.oracle.classes.tolist())
    assert len(list(tmp_path.glob("teacher-*.pt"))) == 1
