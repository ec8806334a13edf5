"""The owner's teacher files on its disk: which one is in use, and a bounded cache of them.

Every teacher setting a set-up asks for leaves a file (``owner/state.py`` trains and writes
it); these keep the cache from filling the owner's disk without deleting a DP release.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

__all__ = ["mark_used", "prune_teachers"]


class _HasTeacherFile(Protocol):
    teacher_file: Path | None


def mark_used(state: _HasTeacherFile) -> None:
    """Mark the state's teacher file most recently used, so pruning (oldest first) keeps
    the teachers runs are answering from."""
    current = state.teacher_file
    if current is not None and current.is_file() and not current.is_symlink():
        os.utime(current)


def prune_teachers(state: _HasTeacherFile, keep: int) -> None:
    """Keep the ``keep`` most recently used teacher files of this cache (0: keep all).

    Every new teacher setting a set-up asks for (epochs, learning rate, split) leaves a
    file; a bounded cache keeps that from filling the owner's disk. Set-up prunes after it
    trains, so the cache never holds more than ``keep`` files, except DP teachers: each
    counts as one of the ``keep`` but is never deleted (a release: deleted, a later run
    would make another one). The teacher in use stays."""
    if not keep or state.teacher_file is None:
        return
    current = state.teacher_file
    mark_used(state)  # most recently used
    files = sorted(
        current.parent.glob("teacher-*.pt"), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    for old in files[keep:]:
        # a DP teacher is a release: deleted, a later run would make another one
        if old != current and not old.with_suffix(".dp.json").exists():
            old.unlink(missing_ok=True)
