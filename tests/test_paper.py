"""docs/results.md builder on synthetic runs: table placement, dedup, Fig. 3, filing, selection."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from azsl_flower.common.config import DEFAULTS
from simulations.report.collect import CollectError
from simulations.report.paper import build, main
from simulations.report.paper_archive import archive

CALTECH = {"dataset": "xlsa17", "data-dir": "../shared/data/caltech101", "alpha": 50.0}


def _run(root: Path, name: str, seed: int, h: float, **config: object) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    cfg = {**DEFAULTS, **CALTECH, "seed": seed, "output-dir": str(folder), **config}
    results = {
        "config": cfg,
        "seed": seed,
        "num_owners": 1,
        "device": "cpu",
        "teacher": {"zsl": 0.9, "u": 0.9, "s": 0.9, "h": 0.9},
        "student": {"zsl": h, "u": h - 0.02, "s": h + 0.02, "h": h},
        "verification": {"pass_rate": 0.9},
        "wall_seconds": 100.0,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def _sweeps(root: Path) -> None:
    base = {"experiment": "table3_whitebox_transductive"}
    for seed, h in enumerate([0.80, 0.82, 0.84]):
        _run(root, f"wt-{seed}", seed, h, **base)
        _run(
            root,
            f"bt-{seed}",
            seed,
            h - 0.1,
            experiment="table3_blackbox_transductive",
            scenario="blackbox",
        )
        _run(root, f"none-{seed}", seed, h - 0.2, experiment="table5_losses", regulariser="none")
        # the preset's kl run repeats the base row's setting: counted once
        _run(root, f"kl-{seed}", seed, h, experiment="table5_losses")
        _run(
            root,
            f"onehot-{seed}",
            seed,
            0.5,
            experiment="ablation_onehot",
            scenario="blackbox",
            semantics="onehot",
        )
    for alpha, h in [(0.1, 0.6), (1.0, 0.7)]:
        _run(root, f"alpha-{alpha}", 0, h, experiment="fig3_alpha", alpha=alpha)
    _run(root, "other-data", 0, 0.1, experiment="fig3_alpha", alpha=5.0, **{"data-dir": "/x"})
    for alpha, h in [(0.1, 0.3), (1.0, 0.4)]:
        _run(root, f"val-{alpha}", 0, h, experiment="fig3_alpha", alpha=alpha, split="val")


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_builds_tables_figure_and_selection(tmp_path):
    _sweeps(tmp_path / "out")
    runs = tmp_path / "docs" / "results" / "runs"
    filed = archive([str(tmp_path / "out")], runs)
    assert len(filed) == 20 and all(p.is_relative_to(runs) for p in filed)
    page = tmp_path / "docs" / "results.md"
    text = build(runs, page)
    assert page.read_text() == text
    wt = _row(text, "whitebox, transductive")
    h = statistics.fmean([80, 82, 84]), statistics.stdev([80, 82, 84])
    assert f"| 3 | {h[0]:.1f} ± {h[1]:.1f}" in wt
    assert "blackbox, inductive: `" in text  # a missing row says how to produce it
    kl = _row(text, "CE + KL")
    assert "| 3 |" in kl  # the base row and table5's kl runs are the same runs
    assert "| 3 |" in _row(text, "CE") and "CE + MMD: `" in text
    assert "label-conditioned (one-hot)" in text and "without verification: `" in text
    # Fig. 3: alpha panel = 0.1, 1.0 and the base row's 50; other data is not a point
    fig3 = text.split("## Fig. 3")[1].split("## Choosing")[0]
    alpha_rows = [ln for ln in fig3.splitlines() if ln.startswith(("| 0.1 |", "| 1.0 |", "| 50"))]
    assert len(alpha_rows) == 3 and "| 5.0 |" not in fig3
    assert (page.parent / "results" / "fig3.png").stat().st_size > 0
    assert "![Fig. 3](results/fig3.png)" in text
    assert "noise-dim: not produced yet" in text
    # validation runs never enter a table; the selection names the best on val classes
    assert "Selected on validation classes by H: **alpha=1.0**" in text
    assert (page.parent / "results" / "table3.csv").is_file()


def test_refiling_other_numbers_needs_replace(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    _run(out, "a", 0, 0.8, experiment="table3_whitebox_transductive")
    (first,) = archive([str(out)], runs)
    archive([str(out)], runs)  # the same file again: fine
    _run(tmp_path / "again", "a", 0, 0.7, experiment="table3_whitebox_transductive")
    with pytest.raises(CollectError, match="--replace"):
        archive([str(tmp_path / "again")], runs)
    assert json.loads(first.read_text())["student"]["h"] == 0.8  # nothing overwritten
    archive([str(tmp_path / "again")], runs, replace=True)
    assert json.loads(first.read_text())["student"]["h"] == 0.7
    # two new runs of one setting and seed in one call: which one to file is not guessed
    with pytest.raises(CollectError, match="given twice"):
        archive([str(out), str(tmp_path / "again")], tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_cli_reports_problems(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no results.json"):
        main(["--archive", str(tmp_path / "nothing"), "--runs", str(tmp_path / "r")])
    main(["--runs", str(tmp_path / "r"), "--out", str(tmp_path / "page.md")])
    text = (tmp_path / "page.md").read_text()
    assert "whitebox, transductive: `" in text and "No validation sweep" in text
    assert "wrote" in capsys.readouterr().out


def test_committed_page_is_what_the_filed_runs_give(tmp_path):
    """docs/results.md is never edited by hand: rebuilding from docs/results/runs gives it."""
    repo = Path(__file__).resolve().parents[1]
    runs = tmp_path / "docs" / "results" / "runs"
    shutil.copytree(repo / "docs" / "results" / "runs", runs)
    text = build(runs, tmp_path / "docs" / "results.md")
    assert text == (repo / "docs" / "results.md").read_text(), (
        "docs/results.md is out of date: run `python -m simulations.report.paper` and commit it"
    )


def test_calibrated_rows_and_the_validation_curve(tmp_path):
    """Inductive runs with calibration > 0 get their own Table 3 row; split=val runs'
    calibration curves are averaged over seeds and the best value is named."""
    out = tmp_path / "out"
    ind = {"experiment": "table3_whitebox_inductive", "teacher": "inductive"}
    for seed in range(3):
        _run(out, f"plain-{seed}", seed, 0.05, **ind)
        _run(out, f"cal-{seed}", seed, 0.20, calibration=8.0, **ind)
        val = _run(out, f"val-{seed}", seed, 0.1, split="val", **ind)
        results = json.loads((val / "results.json").read_text())
        curve = [(0.0, 0.1), (4.0, 0.25 + 0.01 * seed), (8.0, 0.3 - 0.02 * seed)]
        results["calibration"] = {
            "applied": 0.0,
            "curve": [{"calibration": g, "zsl": h, "u": h, "s": 0.8, "h": h} for g, h in curve],
        }
        (val / "results.json").write_text(json.dumps(results))
    runs = tmp_path / "runs"
    archive([str(out)], runs)
    text = build(runs, tmp_path / "results.md")
    assert "| 3 | 5.0 ±" in _row(text, "whitebox, inductive")
    assert "| 3 | 20.0 ±" in _row(text, "whitebox, inductive, calibrated")
    assert "Calibration values used: whitebox, inductive, calibrated: 8." in text
    assert "blackbox, inductive, calibrated: `" in text and "calibration=<selected" in text
    val_part = text.split("## Choosing")[1]
    assert "| 8.0 | 3 | 28.0 ± 2.0 | 80.0 ± 0.0 | 28.0 ± 2.0 |" in val_part
    # 8.0 (28.0 ± 2.0) beats 4.0 (26.0 ± 1.0) by 2.0: not more than the larger std
    assert "**calibration=8.0** (28.0 ± 2.0 over 3 seed(s)); next calibration=4.0" in val_part
    assert "2.0 behind, within the seed-to-seed std" in val_part
    assert "Selected on validation classes by H: **dataset" not in val_part  # one setting
