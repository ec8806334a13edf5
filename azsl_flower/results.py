"""Run outputs: results.json and checkpoints in a fresh folder, never over an earlier run."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_run", "format_table"]


def _fresh_dir(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        cand = root / (stamp if i == 0 else f"{stamp}-{i}")
        if not cand.exists():
            return cand
    raise FileExistsError(f"no free run folder under {root}")


def write_run(
    output_dir: str,
    results: dict[str, Any],
    checkpoints: dict[str, torch.nn.Module],
    move_in: dict[str, Path] | None = None,
) -> Path:
    """Write everything to a temporary folder, then rename it into place in one step.

    A failed run leaves no folder that looks like a run, and an existing folder is never
    reused (rename fails rather than overwrite). ``move_in`` {name: folder}: folders the
    run wrote elsewhere meanwhile (TensorBoard logs), moved in before the rename.
    """
    root = Path(output_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".incomplete-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    for name, model in checkpoints.items():
        torch.save(model.state_dict(), tmp / f"{name}.pt")
    for name, folder in (move_in or {}).items():
        shutil.move(str(folder), str(tmp / name))
    final = _fresh_dir(root)
    results = dict(results, output_dir=str(final.resolve()))
    (tmp / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    while True:
        try:
            os.rename(tmp, final)  # fails if final appeared meanwhile (non-empty dir)
            return final
        except OSError:
            if not final.exists():
                raise
            final = _fresh_dir(root)


def format_table(results: dict[str, Any]) -> str:
    """The teacher-vs-student table printed at the end of a run."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"AZSL on {results['dataset']} ({results['scenario']}, "
        f"{results['teacher_setting']} teacher, {results['num_owners']} owner(s))"
    )
    for col in ("model", "ZSL T1", "u", "s", "H"):
        table.add_column(col, justify="right" if col != "model" else "left")
    rows = [("teacher (upper bound)", results["teacher"]), ("student", results["student"])]
    rows += [(name, m) for name, m in results.get("other_models", {}).items()]
    for name, m in rows:
        table.add_row(name, *(f"{100 * m[k]:.1f}" for k in ("zsl", "u", "s", "h")))
    console = Console(width=100, record=True, file=io.StringIO(), force_terminal=False)
    console.print(table)
    footer = (
        f"rounds={results['rounds']} messages={results['messages']} "
        f"sent={results['bytes_sent'] / 1e6:.1f} MB "
        f"received={results['bytes_received'] / 1e6:.1f} MB "
        f"wall={results['wall_seconds']:.1f} s"
    )
    cal = results.get("calibration") or {}
    if cal.get("curve"):  # a split=val run: the value to use in the test run
        best = next(p for p in cal["curve"] if p["calibration"] == cal["selected"])
        footer += (
            f"\ncalibration on validation classes: best {best['calibration']} "
            f"(u {100 * best['u']:.1f}, s {100 * best['s']:.1f}, H {100 * best['h']:.1f}); "
            f"use calibration={best['calibration']} for the test run"
        )
    return console.export_text() + footer
