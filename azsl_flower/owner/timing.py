"""Where one message's time went inside the owner's ClientApp process: its own log only.

A deployed owner answers each message in a fresh ClientApp process (Flower 1.42 starts one
per message), so a round trip pays process start, imports, state load, crypto and compute.
With ``AZSL_OWNER_TIMINGS=1`` in the SuperNode's environment (the loopback deployment sets
it), each message adds one ``azsl-owner-timing {json}`` line to stderr, which the SuperNode
writes to the owner's log; ``simulations/deploy`` reads it back to split a round trip's wall
time. The sealed reply carries none of it: how long an owner took stays the owner's.

Standard library only, imported before anything else of ours, so the first mark is taken
before the app's imports. Off by default: :func:`mark` is then a no-op and keeps nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ENV", "PREFIX", "enabled", "extend", "mark", "process_age", "take", "timed"]

ENV = "AZSL_OWNER_TIMINGS"  # "1": one timing line per message on stderr
PREFIX = "azsl-owner-timing "  # what starts such a line in the owner's log


def enabled() -> bool:
    """Whether this owner logs its timings (read each time: tests set it, cost is nil)."""
    return os.environ.get(ENV) == "1"


def process_age() -> float | None:
    """Seconds since this process started (psutil if installed, else Linux ``/proc``);
    ``None`` where neither can tell."""
    try:
        import psutil  # type: ignore[import-untyped]  # optional: not a dependency

        return max(0.0, time.time() - float(psutil.Process().create_time()))
    except Exception:  # psutil absent, or unable to read this process: try /proc
        pass
    try:
        stat = Path("/proc/self/stat").read_text()
        # field 22 (starttime, clock ticks after boot), counted after the ")" of field 2
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return max(0.0, boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _origin() -> tuple[float, float, str]:
    """(monotonic, epoch) of this process's start, or of this import where unknown."""
    age = process_age()
    mono, epoch = time.monotonic(), time.time()
    if age is None:
        return mono, epoch, "import"
    return mono - age, epoch - age, "process"


_ORIGIN = _origin()
_marks: list[tuple[str, float]] = []


def mark(name: str) -> None:
    """Note that ``name`` is done now (nothing kept while timings are off)."""
    if enabled():
        _marks.append((name, time.monotonic()))


def take(since: float) -> list[tuple[str, float]]:
    """The marks so far, as seconds after monotonic time ``since``, and cleared: what the
    owner worker hands back to the ClientApp that forwarded the message."""
    out = [(name, round(t - since, 6)) for name, t in _marks]
    _marks.clear()
    return out


def extend(marks: list[tuple[str, float]]) -> None:
    """Add marks taken elsewhere (the worker's, shifted to this process's monotonic clock)."""
    if enabled():
        _marks.extend(marks)


def record(kind: str, node: int, run: int, message: str) -> dict[str, Any]:
    """This message's timings: the process's start (epoch seconds) and each mark's seconds
    after it; the marks are cleared (the next message in this process starts afresh)."""
    mono, epoch, origin = _ORIGIN
    at = {name: round(t - mono, 4) for name, t in _marks}
    _marks.clear()
    return {
        "kind": kind,
        "node": node,
        "run": run,
        "message": message,
        "pid": os.getpid(),
        "origin": origin,
        "started": round(epoch, 4),
        "at": at,
    }


def timed(handler: Callable[[Any, Any], Any], msg: Any, context: Any) -> Any:
    """``handler(msg, context)``, and (timings on) its timing line on stderr afterwards; a
    failure to write that line never costs the reply."""
    if not enabled():
        return handler(msg, context)
    mark("handler")
    try:
        return handler(msg, context)
    finally:
        mark("done")
        try:
            line = record(
                str(msg.metadata.message_type),
                int(context.node_id),
                int(context.run_id),
                str(msg.metadata.message_id),
            )
            print(PREFIX + json.dumps(line), file=sys.stderr, flush=True)
        except Exception as exc:  # diagnostics only: say so, answer anyway
            print(f"{PREFIX}unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
