"""DFZSL's service-side pieces: kappa, scipy's vMF samples, direction recovery, alignment,
and the clear errors for bad concentrations, temperatures and sample counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from azsl_flower.common.config import ConfigError, parse_run_config
from azsl_flower.common.models import CosineClassifier
from azsl_flower.owner.evaluation import model_from_weights
from azsl_flower.owner.policy import OwnerPolicy, PolicyError
from azsl_flower.service.dfzsl.alignment import RidgeAlignment
from azsl_flower.service.dfzsl.directions import match_directions, probe_features
from azsl_flower.service.dfzsl.kappa import (
    check_kappa,
    dfzsl_kappa,
    kappa_for_cosine,
    mean_cosine,
)
from azsl_flower.service.dfzsl.vmf import sample_vmf


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mean_cosine_equals_the_closed_form_in_three_dimensions():
    for kappa in (0.5, 2.0, 10.0, 50.0):  # A_3(k) = coth(k) - 1/k
        assert mean_cosine(kappa, 3) == pytest.approx(1 / math.tanh(kappa) - 1 / kappa, rel=1e-9)


@pytest.mark.parametrize("dim, cosine", [(16, 0.6), (256, 0.4), (1280, 0.3)])
def test_vmf_mean_resultant_length_matches_kappa(dim, cosine):
    """scipy's sampler with our kappa: the samples' mean resultant length is A_d(kappa)."""
    kappa = kappa_for_cosine(cosine, dim)
    assert mean_cosine(kappa, dim) == pytest.approx(cosine, abs=1e-9)
    mu = _unit(np.random.default_rng(dim), 3, dim)
    x, y = sample_vmf(mu, kappa, 1500, seed=1, labels=np.array([4, 7, 9]))
    assert x.shape == (4500, dim) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    for row, c in enumerate((4, 7, 9)):
        xc = x[y == c]
        resultant = np.linalg.norm(xc.mean(0))
        # finite-sample bias of |mean|: (1 - A^2) / n per dimension, summed over d - 1
        expected = math.sqrt(cosine**2 + (1 - cosine**2) / xc.shape[0])
        assert resultant == pytest.approx(expected, abs=0.02)
        assert float((xc @ mu[row]).mean()) == pytest.approx(cosine, abs=0.02)


def test_dfzsl_kappa_rule_on_known_angles():
    # orthogonal directions: smallest angle pi/2 for every class, sigma = pi/12
    assert dfzsl_kappa(np.eye(4)) == pytest.approx(1 / (math.pi / 12) ** 2)
    assert dfzsl_kappa(np.eye(4), factor=3.0) == pytest.approx(3 / (math.pi / 12) ** 2)
    with pytest.raises(ValueError, match="coincide"):
        dfzsl_kappa(np.array([[1.0, 0.0], [1.0, 0.0]]))


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "ten", None])
def test_bad_kappa_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="kappa"):
        check_kappa(bad)
    with pytest.raises(ValueError, match="kappa"):
        sample_vmf(np.eye(3), bad, 5, seed=0)


@pytest.mark.parametrize("bad", [0, -3, 1.5, 10**6, True])
def test_bad_sample_counts_are_a_clear_error(bad):
    with pytest.raises(ValueError, match="samples per class"):
        sample_vmf(np.eye(3), 5.0, bad, seed=0)


def test_zero_direction_is_refused():
    with pytest.raises(ValueError, match="zero vector"):
        sample_vmf(np.zeros((2, 3)), 5.0, 4, seed=0)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_directions_recovered_from_a_known_cosine_teacher(temperature):
    """Black-box matching on d+ probes recovers a cosine teacher's directions."""
    torch.manual_seed(0)
    dim, classes = 64, 7
    teacher = CosineClassifier(dim, classes, temperature)
    truth = teacher.directions().numpy()
    probes = probe_features(dim, 3 * dim, seed=1)
    with torch.no_grad():
        logits = teacher(torch.from_numpy(probes)).numpy()
    mu = match_directions(probes, logits, temperature)
    assert np.sum(mu * truth, 1).min() > 0.999
    # with fewer probes than dimensions the prior fills in: better than the prior alone
    rng = np.random.default_rng(2)
    prior = truth + 0.8 * _unit(rng, classes, dim)
    prior /= np.linalg.norm(prior, axis=1, keepdims=True)
    few = probes[: dim // 2]
    mu_few = match_directions(few, logits[: dim // 2], temperature, prior=prior, ridge=1.0)
    assert np.sum(mu_few * truth, 1).mean() > np.sum(prior * truth, 1).mean() + 0.05


def test_alignment_recovers_a_linear_map_and_generalises():
    rng = np.random.default_rng(3)
    sem = _unit(rng, 30, 12)
    true_map = np.linalg.qr(rng.standard_normal((40, 12)))[0].T  # orthonormal rows: norms kept
    directions = sem @ true_map
    align = RidgeAlignment(ridge=1e-6)
    assert align.fit(sem[:20], directions[:20]) < 1e-6  # misfit on the seen classes
    assert np.sum(align.predict(sem[20:]) * directions[20:], 1).min() > 0.999  # unseen
    with pytest.raises(ValueError, match="ridge"):
        RidgeAlignment(-1.0)


@pytest.mark.parametrize("bad", ["abc", 0, -0.1, "nan", 11])
def test_bad_teacher_temperature_is_a_clear_error(bad):
    with pytest.raises(PolicyError, match="dfzsl-temperature"):
        OwnerPolicy.from_node_config({"dfzsl-temperature": bad})
    with pytest.raises(ValueError, match="temperature"):
        CosineClassifier(4, 2, temperature=0.0)


def test_owner_policy_defaults_to_not_releasing_the_head():
    own = OwnerPolicy.from_node_config({})
    assert not own["dfzsl-release-head"] and own["dfzsl-temperature"] > 0
    assert "dfzsl" not in own["allowed-scenarios"]  # a deployed owner opts in to dfzsl
    assert OwnerPolicy.from_node_config({"dfzsl-release-head": "true"})["dfzsl-release-head"]
    with pytest.raises(PolicyError, match="dfzsl-release-head"):
        OwnerPolicy.from_node_config({"dfzsl-release-head": "maybe"})
    asked = {"scenario": "dfzsl", "dfzsl-temperature": 9.0}
    mine = OwnerPolicy.from_node_config({"partition-id": 0, "dfzsl-temperature": 0.1})
    assert mine.settings(asked, "node-1")["dfzsl-temperature"] == 0.1  # the owner's, not the run's


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"dfzsl-kappa-factor": 0}, "dfzsl-kappa-factor"),
        ({"dfzsl-kappa-factor": "nan"}, "dfzsl-kappa-factor"),
        ({"dfzsl-samples": 0}, "dfzsl-samples"),
        ({"dfzsl-samples": 10**7}, "dfzsl-samples"),
        ({"dfzsl-probes": -5}, "dfzsl-probes"),
        ({"dfzsl-ridge": -1}, "dfzsl-ridge"),
        ({"dfzsl-kappa": "huge"}, "dfzsl-kappa"),
        ({"dfzsl-alignment": "none"}, "dfzsl-generator=cvae"),
    ],
)
def test_bad_dfzsl_run_config_is_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config({"scenario": "dfzsl", **overrides})


def test_cosine_classifier_round_trips_through_its_weights():
    model = CosineClassifier(8, 3, temperature=0.1)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    rebuilt = model_from_weights(weights, torch.device("cpu"))
    x = torch.randn(5, 8)
    assert torch.allclose(rebuilt(x), model(x))
    assert torch.allclose(model(3 * x), model(x), atol=1e-5)  # scale-free: cosines only


def test_ladder_kappa_is_the_lowest_rung_the_teachers_half_accept():
    from azsl_flower.service.dfzsl.learner import LADDER, DFZSLLearner, DFZSLSettings

    settings = DFZSLSettings("dimension", 1.0, 40, "ridge", 10.0, "vmf", 8, 1, 1e-3, 0)
    learner = DFZSLLearner(settings, np.eye(4), np.arange(3), np.array([3]), torch.device("cpu"))
    rungs = np.repeat(np.arange(len(LADDER)), 10)
    accepted = rungs >= 3  # rungs 0-2 rejected, from rung 3 on all accepted
    kappa = learner.ladder_kappa(accepted, rungs, dim=128)
    assert mean_cosine(kappa, 128) == pytest.approx(LADDER[3], abs=1e-6)
    assert learner.report["ladder"][str(LADDER[2])] == 0.0


def test_directions_of_several_owners_merge_per_class():
    from azsl_flower.service.dfzsl.directions import merge_directions

    a = (np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    b = (np.array([1, 2]), np.array([[1.0, 0.0], [-1.0, 0.0]]))
    mu = merge_directions([a, b], num_classes=4)
    assert np.allclose(mu[0], [1, 0]) and np.allclose(mu[2], [-1, 0])
    assert np.allclose(mu[1], np.array([1.0, 1.0]) / math.sqrt(2))  # both owners' mean
    assert np.allclose(mu[3], 0)  # nobody covers class 3
