"""Filing finished runs' results.json under docs/results/runs/, one name per setting and seed,
so the page is rebuilt from what is committed; other numbers are never overwritten silently."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from simulations.report.collect import CollectError, Run, find_results, load_run
from simulations.report.paper_tables import experiment, signature


def archive_name(run: Run) -> Path:
    """``<experiment>/<setting hash>-seed<N>.json``: a rerun of one setting and seed lands on
    the same name, so filing it twice is noticed."""
    digest = hashlib.sha256(signature(run).encode()).hexdigest()[:10]
    return Path(experiment(run) or "no-experiment") / f"{digest}-seed{run.seed}.json"


def archive(items: Sequence[str], runs_dir: Path, replace: bool = False) -> list[Path]:
    """Copy finished runs' results.json into ``runs_dir``; refuse to overwrite other numbers."""
    found = [load_run(p) for p in find_results(items)]
    plan: list[tuple[Path, Path]] = []
    clashes = []
    planned: dict[Path, Path] = {}
    for run in found:
        dest = runs_dir / archive_name(run)
        twin = planned.get(dest)
        if twin is not None and twin.read_bytes() != run.path.read_bytes():
            clashes.append(f"{twin} and {run.path} are both {dest.name} of {dest.parent.name}")
        elif dest.exists() and dest.read_bytes() != run.path.read_bytes() and not replace:
            clashes.append(f"{run.path} -> {dest}")
        planned[dest] = run.path
        plan.append((run.path, dest))
    if clashes:  # checked before anything is copied: all or nothing
        raise CollectError(
            "these runs repeat a setting and seed already filed (or given twice) with other "
            "numbers; pass --replace to file a rerun instead of the filed run, or give one of "
            "two runs: " + "; ".join(clashes[:5])
        )
    for src, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return [dest for _, dest in plan]
