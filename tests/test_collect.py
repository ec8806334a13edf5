"""The collector on synthetic results.json files: grouping, mean ± std, Markdown and CSV."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from azsl_flower.common.config import DEFAULTS
from simulations.report.collect import CollectError, collect, find_results, main


def _write(root: Path, name: str, seed: int, h: float, **config: object) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    cfg = {**DEFAULTS, "seed": seed, "output-dir": str(root / name), **config}
    metrics = {"zsl": h + 0.01, "u": h - 0.01, "s": h + 0.02, "h": h}
    results = {
        "config": cfg,
        "seed": seed,
        "num_owners": 1,
        "teacher": {"zsl": 0.9, "u": 0.9, "s": 0.9, "h": 0.9},
        "student": metrics,
        "verification": {"pass_rate": 0.5},
        "wall_seconds": 10.0 + seed,
        "rounds": 33,
        "bytes_sent": 1e6,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    hs = {"whitebox": [0.80, 0.84, 0.82], "blackbox": [0.70, 0.74]}
    for scenario, values in hs.items():
        for seed, h in enumerate(values):
            _write(root, f"{scenario}-{seed}", seed, h, scenario=scenario, device=f"cuda:{seed}")
    (root / ".incomplete-123").mkdir()  # a run that never finished is not collected
    (root / ".incomplete-123" / "results.json").write_text("{}")
    return root


def test_groups_by_differing_settings_with_mean_and_std(sweep, tmp_path):
    md_path, csv_path, md = collect([str(sweep)], tmp_path / "tables" / "t3")
    assert md_path == tmp_path / "tables" / "t3.md" and md_path.read_text() == md
    lines = md.splitlines()
    # only scenario differs (seed and device are not settings)
    assert lines[0].startswith("| scenario | seeds | T1 | u | s | H |")
    white = next(line for line in lines if line.startswith("| whitebox"))
    mean, std = statistics.fmean([80, 84, 82]), statistics.stdev([80, 84, 82])
    assert "| 3 |" in white and f"{mean:.1f} ± {std:.1f}" in white
    with csv_path.open() as f:
        rows = {r["scenario"]: r for r in csv.DictReader(f)}
    assert rows["blackbox"]["n"] == "2" and rows["blackbox"]["seeds"] == "0;1"
    assert float(rows["whitebox"]["student.h_mean"]) == pytest.approx(mean)
    assert float(rows["whitebox"]["student.h_std"]) == pytest.approx(std)
    assert float(rows["blackbox"]["wall_seconds_mean"]) == pytest.approx(10.5)


def test_single_run_and_explicit_grouping(tmp_path):
    _write(tmp_path / "r", "a", 0, 0.5, alpha=50.0)
    _, csv_path, md = collect([str(tmp_path / "r" / "a" / "results.json")], tmp_path / "one")
    assert "| dataset | scenario | teacher | seeds |" in md  # nothing differs: a fallback
    assert "50.0 |" in md and "±" not in md.split("\n\n")[0]
    with csv_path.open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["student.h_std"] == ""
    _write(tmp_path / "r", "b", 1, 0.7, alpha=10.0)
    _, _, md = collect([str(tmp_path / "r")], tmp_path / "two", group_by=["teacher"])
    assert "| transductive | 2 |" in md


def test_glob_patterns_and_bad_input(sweep, tmp_path, capsys):
    assert len(find_results([str(sweep / "white*")])) == 3
    assert len(find_results([str(sweep / "**" / "results.json")])) == 5
    with pytest.raises(CollectError, match="no results.json found"):
        find_results([str(tmp_path / "nothing-here")])
    with pytest.raises(CollectError, match="unknown metric"):
        collect([str(sweep)], tmp_path / "x", metrics=["student.f1"])
    with pytest.raises(CollectError, match="no run has setting"):
        collect([str(sweep)], tmp_path / "x", group_by=["colour"])
    (sweep / "broken").mkdir()
    (sweep / "broken" / "results.json").write_text("not json")
    with pytest.raises(CollectError, match="broken.*not a results.json"):
        collect([str(sweep)], tmp_path / "x")
    with pytest.raises(SystemExit, match="collect: .*not a results.json"):
        main([str(sweep), "--out", str(tmp_path / "y")])


def test_command_line(sweep, tmp_path, capsys):
    main([str(sweep), "--out", str(tmp_path / "cli.md"), "--metrics", "student.h,round_trips"])
    out = capsys.readouterr().out
    assert "| scenario | seeds | H | round trips |" in out and "wrote" in out
    assert (tmp_path / "cli.csv").is_file()


def test_select_names_the_best_setting_on_validation_runs_only(tmp_path):
    root = tmp_path / "val"
    for alpha, hs in {0.1: [0.60, 0.62], 1.0: [0.70, 0.66], 10.0: [0.50, 0.52]}.items():
        for seed, h in enumerate(hs):
            _write(root, f"a{alpha}-{seed}", seed, h, alpha=alpha, split="val")
    _, _, md = collect([str(root)], tmp_path / "sel", select_by="student.h")
    assert "Selected on validation classes by H: **alpha=1.0** (68.0 ± 2.8 over 2 seed(s))" in md
    assert "; next alpha=0.1 (61.0 ± 1.4), 7.0 behind, more than the seed-to-seed std" in md
    assert md.index("| 0.1 |") < md.index("| 1.0 |") < md.index("| 10.0 |")  # numeric order
    _write(root, "a0.1-2", 2, 0.90, alpha=0.1, split="val")  # 0.1 now 70.7 ± 16.8
    _, _, md = collect([str(root)], tmp_path / "sel1", select_by="student.h")
    assert "**alpha=0.1** (70.7 ± 16.8 over 3 seed(s)); next alpha=1.0" in md
    assert "2.7 behind, within the seed-to-seed std" in md
    _write(root, "test-run", 0, 0.99, alpha=0.5)  # split=test: scores on test classes
    with pytest.raises(CollectError, match="only takes runs on validation classes"):
        collect([str(root)], tmp_path / "sel2", select_by="student.h")
    with pytest.raises(CollectError, match="unknown metric 'H'"):
        collect([str(root / "a1.0-0")], tmp_path / "sel3", select_by="H")
