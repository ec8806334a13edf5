"""The regulariser registry: every regulariser R the run config may name, one line each.

Each line (a :class:`RegulariserKind`) says what both roles and the run config must know
about one regulariser without importing torch: its name, the per-class statistics the
owners send in scenario ``weights`` (the wire's ``reg_<name>`` arrays), whether those
statistics have a DP release (``stats-epsilon``), whether it keeps real samples, and the
class that computes it (``module:Class``, imported on first use, so parsing a run config,
the wire schema and the ``azsl-flower`` command stay free of torch). The classes are
:class:`azsl_flower.owner.oracle.Regulariser` subclasses; the service's closed-form fit of
what a regulariser's gradients reveal is keyed by the same name in
:data:`azsl_flower.service.baseline.REVEALED_FITS`.

A new regulariser: its class, and its line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["REGISTRY", "REGULARISERS", "RegulariserKind", "names_where", "regulariser_kind"]

F32, I64 = "float32", "int64"


@dataclass(frozen=True)
class RegulariserKind:
    """What is known about one regulariser before any data is read."""

    name: str
    # "module:Class" of the Regulariser that computes it (owner side; the service in weights)
    implementation: str
    # per-class statistics it is computed from, as (name, dtype, rank): what an owner sends
    # in scenario weights (wire arrays reg_<name>) and what the service rebuilds it from
    statistics: tuple[tuple[str, str, int], ...] = ()
    # its statistics are class means and variances, so the Gaussian release of those
    # (node-config stats-epsilon, owner/releases.py) is its DP release
    dp_release: bool = False
    # it reads the owner's data at all (``none`` does not: nothing to release or cover)
    reads_data: bool = True

    @property
    def has_statistics(self) -> bool:
        """Whether the service can be sent what it is computed from (scenario weights)."""
        return bool(self.statistics)

    @property
    def sendable(self) -> bool:
        """Scenario weights can use it: the service rebuilds it from the owners' statistics
        (or it reads no data at all)."""
        return self.has_statistics or not self.reads_data

    @property
    def privately_releasable(self) -> bool:
        """An owner with ``stats-epsilon`` can answer it: its statistics have a DP release
        (or it reads no data at all)."""
        return self.dp_release or not self.reads_data

    def load(self) -> Any:
        """The Regulariser class (imports its module, and torch, on first use)."""
        module, _, name = self.implementation.partition(":")
        return getattr(importlib.import_module(module), name)


_ORACLE = "azsl_flower.owner.oracle"
_CLASS_STATS = (("mean", F32, 2), ("var", F32, 2), ("classes", I64, 1))

REGISTRY: dict[str, RegulariserKind] = {
    k.name: k
    for k in (
        RegulariserKind("none", f"{_ORACLE}:Regulariser", reads_data=False),
        RegulariserKind("kl", f"{_ORACLE}:KLRegulariser", _CLASS_STATS, dp_release=True),
        # keeps real samples: nothing it could send, and no DP release
        RegulariserKind("mmd", f"{_ORACLE}:MMDRegulariser"),
    )
}

# The option list the run config's `regulariser` is checked against (common/defaults.py).
REGULARISERS = tuple(REGISTRY)


def regulariser_kind(name: str) -> RegulariserKind:
    """The registered regulariser ``name``; a clear error naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown regulariser {name!r}; choose one of {tuple(REGISTRY)}."
        ) from None


def names_where(test: Callable[[RegulariserKind], bool]) -> str:
    """The registered regularisers that pass ``test``, for an error message ("kl or none"):
    those that read data first."""
    names = sorted((k.name for k in REGISTRY.values() if test(k)), key=lambda n: n == "none")
    return " or ".join(names)
