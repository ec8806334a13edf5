"""The DFZSL page and its real-data baselines, on synthetic inputs."""

from __future__ import annotations

import numpy as np

from azsl_flower.owner.data import OwnerData
from simulations.bench.dfzsl_baselines import ridge_prototypes, score
from simulations.report.dfzsl_page import section


def _data(rng: np.random.Generator) -> tuple[OwnerData, np.ndarray]:
    """Four classes whose mean features are a linear map of their semantics."""
    sem = np.eye(4) + 0.1
    means = sem @ rng.standard_normal((4, 16)) + 3.0

    def draw(classes: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(classes, n)
        return (means[y] + 0.05 * rng.standard_normal((y.size, 16))).astype(np.float32), y

    (tx, ty), (sx, sy), (ux, uy) = draw([0, 1, 2], 20), draw([0, 1, 2], 5), draw([3], 5)
    data = OwnerData(tx, ty, sx, sy, ux, uy, np.array([0, 1, 2]), np.array([3]), 4, "synthetic")
    return data, sem


def test_ridge_prototypes_score_seen_classes_from_real_means():
    data, sem = _data(np.random.default_rng(0))
    scores = score(data, ridge_prototypes(data, sem, lam=1e-3))
    assert scores["s"] == 1.0 and scores["zsl"] == 1.0  # one unseen class: ZSL is trivial
    # a huge calibration pushes every seen sample to the unseen class
    assert score(data, ridge_prototypes(data, sem, lam=1e-3), calibration=1e6)["s"] == 0.0


def _run(case: str, seed: int, zsl: float, h: float) -> dict:
    m = {"zsl": zsl, "u": zsl, "s": 0.5, "h": h}
    return {
        "case": case,
        "split": "test",
        "seed": seed,
        "classifier": m,
        "prototypes": m,
        "calibration": {"applied": 3.0},
        "method": {"kappa": 100.0, "expected_cosine": 0.1},
        "round_trips": 5,
        "queries_used": 100,
        "overrides": {"teacher": "inductive"},
    }


def test_page_reports_each_case_and_the_verdict():
    doc = {"runs": [_run("bb-dim-vmf", 0, 0.10, 0.15), _run("bb-dim-vmf", 1, 0.12, 0.17)]}
    page = section(doc)
    assert "| 2 | 11.0 ± 1.0 |" in page  # two seeds: mean ± std
    assert "ZSL T1 11.0 (-4.0 points from the target" in page and "target missed" in page
    doc["runs"] = [_run("bb-dim-vmf", 0, 0.2, 0.3)]
    assert "target met" in section(doc)
    nested = section(doc, level=2)
    assert nested.startswith("## DFZSL") and "\n### Test classes" in nested
