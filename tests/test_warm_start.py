"""The hybrid (issue 14): ``warm-start=dfzsl`` fits AZSL's generator to DFZSL's verified
virtual features before the feedback rounds. End to end on digits through the in-process
grid; the regression itself on synthetic targets; bad option values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from azsl_flower.common.config import ConfigError, parse_run_config
from azsl_flower.common.models import Generator
from azsl_flower.owner.budget import queries_used
from azsl_flower.service.warm_start import (
    SCALES,
    as_features,
    choose_scale,
    fit_generator,
    scale_ladder,
)
from strategies.roster import OwnerError
from tests.conftest import run_digits

# one feedback round is enough to see where the generator starts; DFZSL's own kappa rule
# (no ladder round trip) and few probes keep it fast
HYBRID = {
    "teacher": "inductive",
    "rounds": 1,
    "dfzsl-kappa": "dfzsl",
    "dfzsl-probes": 300,
    "dfzsl-samples": 60,
    "tensorboard": False,
}


def _kinds(grid) -> list[str]:
    return [m.metadata.message_type for m in grid.sent]


@pytest.fixture(scope="module")
def cold_and_warm(tmp_path_factory):
    """The same digits job (same seed, same owner) without and with the warm start."""
    runs = {}
    for mode in ("none", "dfzsl"):
        tmp = tmp_path_factory.mktemp(f"warm-{mode}")
        runs[mode] = run_digits(tmp, **{**HYBRID, "warm-start": mode})
    return runs


def test_warm_start_changes_where_the_generator_starts(cold_and_warm):
    """Round 1's pool is drawn before any feedback update: how often the owner's teacher
    agrees with its labels is where G starts. Fitted to DFZSL's virtual features, G starts
    far closer to the teacher's classes than from its random initialisation."""
    (cold, _, _), (warm, _, _) = cold_and_warm["none"], cold_and_warm["dfzsl"]
    start_cold, start_warm = cold["history"][0]["agreement"], warm["history"][0]["agreement"]
    assert start_warm > start_cold + 0.1, (start_cold, start_warm)
    ws = warm["method"]["warm_start"]
    assert ws["method"] == "dfzsl" and ws["fitted_samples"] > 0
    assert ws["loss_after"] < ws["loss_before"]
    assert ws["unseen_features"] > 0  # inductive: the unseen digits get aligned vMF features
    assert ws["scale"] in SCALES
    assert cold.get("method") is None  # default off: nothing of it in a plain AZSL run


def test_warm_start_round_trips_and_probes_are_those_of_dfzsl(cold_and_warm):
    """Set-up, probes, virtual-feature verification (cosine teacher), scale verification
    (AZSL teacher): four more round trips, every probe and feature metered by the owner."""
    (cold, _, cold_grid), (warm, _, warm_grid) = cold_and_warm["none"], cold_and_warm["dfzsl"]
    assert warm["round_trips"] == cold["round_trips"] + 4
    assert _kinds(warm_grid).count("query.dfzsl_probe") == 1
    assert "query.dfzsl_probe" not in _kinds(cold_grid)
    ws = warm["method"]["warm_start"]
    extra = HYBRID["dfzsl-probes"] + ws["virtual_generated"] + ws["scale_queries"]
    used = {m: queries_used(g.contexts[1000]) for m, (_, _, g) in cold_and_warm.items()}
    assert used["dfzsl"] == used["none"] + extra
    assert warm["federation"]["queries"]["1000"]["queries_used"] == used["dfzsl"]


def test_owner_budget_bounds_the_warm_start_probes(tmp_path):
    from azsl_flower.client_app import app as client_app
    from simulations.run.inprocess import InProcessGrid
    from strategies.server_app import run_azsl
    from tests.conftest import FAST

    raw = {**FAST, **HYBRID, "warm-start": "dfzsl", "output-dir": str(tmp_path / "out")}
    raw["cache-dir"] = str(tmp_path / "cache")
    grid = InProcessGrid(client_app, 1, raw)
    grid.contexts[1000].node_config["query-budget"] = HYBRID["dfzsl-probes"] - 1
    with pytest.raises(OwnerError, match="dfzsl-probe"):
        run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)
    assert "query.dfzsl_probe" not in _kinds(grid)  # refused before asking: nothing spent


# -- the regression on its own ---------------------------------------------------------------


def test_fit_generator_moves_class_means_towards_the_targets():
    rng = np.random.default_rng(0)
    classes, dim, per = 4, 16, 50
    centres = np.abs(rng.normal(size=(classes, dim))).astype(np.float32) * 3
    y = np.repeat(np.arange(classes), per)
    x = centres[y] + 0.1 * rng.normal(size=(y.size, dim)).astype(np.float32)
    torch.manual_seed(0)
    gen = Generator(8, 5, dim, hidden=64)
    sem = torch.from_numpy(rng.normal(size=(classes, 8)).astype(np.float32))

    def mean_error() -> float:
        with torch.no_grad():
            out = gen(sem[torch.from_numpy(y)], torch.randn(y.size, 5)).numpy()
        means = np.stack([out[y == c].mean(0) for c in range(classes)])
        return float(np.linalg.norm(means - centres, axis=1).mean())

    before = mean_error()
    fit = fit_generator(gen, sem, x, y, epochs=60, seed=0, batch_size=50, lr=1e-2)
    assert fit.loss_after < 0.5 * fit.loss_before
    assert mean_error() < 0.5 * before


def test_scale_ladder_and_choice():
    v = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]
    y = np.array([0, 0, 1, 1, 2, 2])
    xs, ys, rungs = scale_ladder(v, y, per_class=1)
    assert xs.shape == (3 * len(SCALES), 3) and np.array_equal(ys[:3], [0, 1, 2])
    assert np.allclose(np.linalg.norm(xs, axis=1), np.repeat(SCALES, 3))
    accepted = rungs == 3  # only the fourth scale passes
    scale, rates = choose_scale(accepted, rungs)
    assert scale == SCALES[3] and rates[str(SCALES[3])] == 1.0
    assert np.all(as_features(-v, 2.0) == 0)  # G outputs ReLU features: clipped at 0


# -- bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"warm-start": "dfzls"}, r"warm-start='dfzls': choose one of \['none', 'dfzsl'\]"),
        ({"warm-start": "dfzsl", "scenario": "dfzsl"}, "scenario='dfzsl' has no such generator"),
        ({"warm-start": "dfzsl", "scenario": "weights"}, "use scenario=whitebox or blackbox"),
        ({"warm-start-epochs": 0}, "warm-start-epochs"),
        ({"warm-start-epochs": 10**6}, "warm-start-epochs=1000000: at most"),
        ({"warm-start-epochs": 2.5}, "warm-start-epochs"),
        ({"warm-start-unseen": "maybe"}, "warm-start-unseen"),
    ],
)
def test_bad_warm_start_options_are_named(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config(raw)


def test_bad_regression_inputs_are_named():
    gen = Generator(2, 2, 3, hidden=8)
    sem = torch.zeros(2, 2)
    x, y = np.zeros((4, 3), np.float32), np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="4 features for 3 labels"):
        fit_generator(gen, sem, x, y[:3], epochs=1, seed=0)
    with pytest.raises(ValueError, match="features are 5-d, G outputs 3"):
        fit_generator(gen, sem, np.zeros((4, 5), np.float32), y, epochs=1, seed=0)
    with pytest.raises(ValueError, match="feature scale"):
        as_features(x, float("nan"))


# -- the curve script ------------------------------------------------------------------------


def test_hybrid_curve_scores_both_arms_at_their_round_trips(tmp_path):
    """simulations/bench/hybrid_curve.py on digits: each arm scored at rounds 0, 1 and its last;
    a point's round trips are what a run stopped there would have used, so the hybrid's
    points sit its warm start's round trips to the right; a test split needs val first."""
    import json

    from simulations.bench.hybrid_curve import main

    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    tiny = "dataset=digits,teacher=inductive,rounds=2,steps-per-round=2,student-epochs=2,"
    tiny += "samples-per-class=30,teacher-epochs=3,dfzsl-kappa=dfzsl,dfzsl-probes=200,"
    tiny += f"dfzsl-samples=40,cache-dir={tmp_path / 'cache'}"
    with pytest.raises(SystemExit, match="on --split val first"):
        main(["--split", "test", "--set", tiny, "--out", str(out), "--png", str(png)])
    main(["--set", tiny, "--eval-at", "0,1", "--out", str(out), "--png", str(png)])
    doc = json.loads(out.read_text())
    runs = {r["arm"]: r for r in doc["runs"]}
    assert set(runs) == {"azsl", "hybrid"} and png.is_file()
    for run in runs.values():
        assert [p["round"] for p in run["points"]] == [0, 1, 2]
        trips = [p["round_trips"] for p in run["points"]]
        # the run itself also spent two round trips (verification, evaluation) per earlier point
        assert trips == sorted(trips) and trips[-1] == run["round_trips"] - 2 * 2
        command = "python -m simulations.bench.hybrid_curve --set dataset=digits"
        assert run["command"].startswith(command)
    azsl, hybrid = runs["azsl"]["points"], runs["hybrid"]["points"]
    # set-up, verification, evaluation; the hybrid adds its set-up, probes, two verifications
    assert azsl[0]["round_trips"] == 3 and hybrid[0]["round_trips"] == 3 + 4
    assert runs["hybrid"]["warm_start"]["fitted_samples"] > 0 and runs["azsl"]["warm_start"] is None
