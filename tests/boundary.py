"""The import boundary between the roles, for the tests that check it.

The owner side's modules are read from the package, not listed by hand, so a new module in
``azsl_flower/owner/`` is kept out of the service's import graph without editing a test.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import azsl_flower.owner

ROOT = Path(__file__).resolve().parents[1]
# Scenario ``weights`` rebuilds owners' oracles from what they sent: feedback math, no data
# access. Every other owner module stays on the owner's side.
SERVICE_MAY_IMPORT = frozenset({"azsl_flower.owner.oracle"})


def owner_side(allowed: frozenset[str] = SERVICE_MAY_IMPORT) -> list[str]:
    """Every module under ``azsl_flower.owner`` (walked, subpackages included) but
    ``allowed``, and the ClientApp that serves them."""
    found = [
        m.name
        for m in pkgutil.walk_packages(azsl_flower.owner.__path__, "azsl_flower.owner.")
        if m.name not in allowed
    ]
    # a walk that found nothing would make every check pass
    assert "azsl_flower.owner.data" in found and "azsl_flower.owner.handlers" in found, found
    return [*found, "azsl_flower.client_app"]


def _imports(entry_points: list[str], forbidden: str) -> subprocess.CompletedProcess[str]:
    """Import ``entry_points`` in a fresh interpreter; exit status 1 and the loaded modules
    that satisfy ``forbidden`` (an expression in ``m``) on stdout if there are any."""
    code = (
        f"import sys, importlib; [importlib.import_module(e) for e in {entry_points!r}];"
        f"bad = sorted(m for m in sys.modules if {forbidden}); print(bad); sys.exit(bool(bad))"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def owner_modules_imported_by(*entry_points: str) -> subprocess.CompletedProcess[str]:
    """Whether importing ``entry_points`` loads an owner-side module (:func:`owner_side`)."""
    return _imports(list(entry_points), f"m in {owner_side()!r}")


# The service's Flower side, its learning code and the simulations (which play both roles).
SERVICE_SIDE = ("strategies", "simulations", "azsl_flower.service")


def service_modules_imported_by_owner_side() -> subprocess.CompletedProcess[str]:
    """Whether importing every owner-side module (none allowed out) loads a module of
    :data:`SERVICE_SIDE`: nothing imports upwards, and the owner never the service's code."""
    prefixes = tuple(p + "." for p in SERVICE_SIDE)
    return _imports(owner_side(frozenset()), f"m in {SERVICE_SIDE!r} or m.startswith({prefixes!r})")
