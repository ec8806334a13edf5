"""Per-run plots: curves and scores from results.json, the owner-side t-SNE on digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from azsl_flower.common.config import DEFAULTS
from azsl_flower.common.models import Generator
from azsl_flower.common.semantics import load_class_side
from simulations.report.plots import feature_stats, main, owner_and_generated

PNG = b"\x89PNG\r\n\x1a\n"


def _run_folder(root: Path, owners: int = 1, history: bool = True) -> Path:
    """A finished digits run as the ServerApp writes it (untrained generator)."""
    root.mkdir(parents=True)
    cfg = {**DEFAULTS, "noise-dim": 5}
    metrics = {"zsl": 0.5, "u": 0.4, "s": 0.6, "h": 0.48}
    rounds = [{"round": r, "teacher_ce": 2.0 / r, "regulariser": 1.0 / r} for r in (1, 2, 3)]
    results = {
        "config": cfg,
        "dataset": "digits",
        "scenario": "whitebox",
        "teacher_setting": "transductive",
        "seed": 0,
        "num_owners": owners,
        "teacher": metrics,
        "student": metrics,
        "other_models": {},
        "history": rounds if history else [],
    }
    (root / "results.json").write_text(json.dumps(results))
    sem_dim = load_class_side("digits").semantics.shape[1]
    torch.manual_seed(0)
    torch.save(Generator(sem_dim, 5, 64, hidden=4096).state_dict(), root / "generator.pt")
    return root


def test_curves_scores_and_tsne_are_written(tmp_path):
    run = _run_folder(tmp_path / "run")
    made = main([str(run), "--tsne", "--per-class", "8"])
    assert [p.name for p in made] == ["scores.png", "curves.png", "tsne.png"]
    for path in made:
        assert path.parent == run / "plots" and path.read_bytes()[:8] == PNG


def test_owner_side_samples_are_unseen_classes_of_that_owner(tmp_path):
    run = _run_folder(tmp_path / "run", owners=2)
    real_x, real_y, gen_x, gen_y, names = owner_and_generated(run, 1, per_class=5)
    assert set(real_y) == set(gen_y) and len(set(real_y)) == 3  # digits: 3 unseen classes
    assert real_x.shape[1] == gen_x.shape[1] == 64 and len(names) == 10
    assert gen_y.size == 15 and real_y.size <= 15


def test_feature_stats_tell_a_faithful_generator_from_a_collapsed_one():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16) * 5 + 1.0
    y = np.repeat(np.arange(4), 30)
    real = centres[y] + rng.normal(0, 0.3, (y.size, 16))
    faithful = feature_stats(real, y, centres[y] + rng.normal(0, 0.3, (y.size, 16)), y)
    assert faithful["nearest_generated_mean_acc"] == 1.0
    assert faithful["cos_generated_vs_real_mean"] > 0.99
    collapsed = feature_stats(real, y, np.ones((y.size, 16)) + rng.normal(0, 0.01, (120, 16)), y)
    assert collapsed["cos_between_generated_means"] > 0.99 > faithful["cos_between_real_means"]
    assert collapsed["nearest_generated_mean_acc"] < 0.6


def test_stats_are_written_owner_side(tmp_path):
    run = _run_folder(tmp_path / "run")
    made = main([str(run), "--stats", "--per-class", "6"])
    stats = json.loads((run / "plots" / "feature_stats.json").read_text())
    assert made[-1].name == "feature_stats.json" and stats["classes"] == 3
    assert 0.0 <= stats["nearest_generated_mean_acc"] <= 1.0


def test_without_history_only_scores(tmp_path):
    run = _run_folder(tmp_path / "run", history=False)
    made = main([str(run), "--out", str(tmp_path / "figs")])
    assert [p.name for p in made] == ["scores.png"] and made[0].parent == tmp_path / "figs"


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--tsne", "--partition-id", "3"], "owners 0..0"),
        (["--tsne", "--per-class", "0"], "per-class must be >= 1"),
    ],
)
def test_bad_input_fails_clearly(tmp_path, args, match):
    run = _run_folder(tmp_path / "run")
    with pytest.raises(SystemExit, match=match):
        main([str(run), *args])


def test_missing_files_fail_clearly(tmp_path):
    with pytest.raises(SystemExit, match="results.json not found"):
        main([str(tmp_path)])
    run = _run_folder(tmp_path / "run")
    (run / "generator.pt").unlink()
    with pytest.raises(SystemExit, match="generator.pt not found"):
        main([str(run), "--tsne"])
