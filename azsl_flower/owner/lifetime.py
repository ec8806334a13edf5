"""What this owner has answered over all its runs: the lifetime ledger.

Per-run limits (``max-eval-models``, ``max-setups``, ...) are no bound on a service that
starts run after run: each new run id brings a fresh run state. So what an owner releases
about its *test* split (models scored, calibration values scored) and the set-ups it does are
also counted in one file per owner identity, ``<runs folder>/lifetime-<who>.json``, against
the ``lifetime-*`` node-config keys. It is a :class:`~azsl_flower.owner.ledger.RunLedger`
under another name: the same lock, the same atomic write. :func:`azsl_flower.owner.budget.
reserve` takes it while it holds the run's lock (always in that order, so two messages never
wait on each other), so two messages at once and a restarted SuperNode cannot go over.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from azsl_flower.owner.ledger import RunLedger
from azsl_flower.owner.policy import OwnerPolicy

__all__ = [
    "FIELDS",
    "LIMITS",
    "USE",
    "LifetimeLedger",
    "declaration",
    "lifetime_of",
    "read_lifetime",
]

USE = "use"  # section of the lifetime file
# meter -> (node-config key, what it counts)
LIMITS: dict[str, tuple[str, str]] = {
    "setups": ("lifetime-setups", "set-up requests"),
    "eval_models": ("lifetime-eval-models", "models scored"),
    "eval_values": ("lifetime-calibration-values", "calibration values"),
}
FIELDS = tuple(LIMITS)


class LifetimeLedger(RunLedger):
    """``with LifetimeLedger(folder, who) as ledger:`` exclusive access to one owner's
    lifetime use (``get``/``put`` as for a run's state)."""

    def __init__(self, folder: Path, who: str) -> None:
        super().__init__(folder, 0, who)  # checks that ``who`` is a plain name
        self.path = Path(folder) / f"lifetime-{who}.json"

    def use(self) -> dict[str, int]:
        saved = self.get(USE) or {}
        return {f: int(saved.get(f, 0)) for f in FIELDS}


def lifetime_of(run: RunLedger) -> LifetimeLedger:
    """The lifetime ledger of the owner whose run state ``run`` is (same folder, same who)."""
    return LifetimeLedger(run.path.parent, run.who)


def read_lifetime(folder: Path, who: str) -> dict[str, int]:
    """An owner's lifetime use as last written (no lock: for reports and tests)."""
    try:
        saved = json.loads(LifetimeLedger(folder, who).path.read_text()).get(USE) or {}
    except FileNotFoundError:
        saved = {}
    return {f: int(saved.get(f, 0)) for f in FIELDS}


def declaration(use: dict[str, int], policy: OwnerPolicy) -> dict[str, Any]:
    """What set-up declares next to ``lifetime_epsilon``: the owner's use over all its runs
    (this set-up included) and its lifetime caps (0: none), so the service knows what is left."""
    return {
        "lifetime_use": {f: int(use.get(f, 0)) for f in FIELDS},
        "lifetime_limits": {key: policy.limit(key) for key, _ in LIMITS.values()},
    }
