"""Node-config values of the owner policy: their limits and parsers, and what a key is.

Each parser takes ``(name, raw)`` (the key's name, the node config's raw value) and returns
the parsed value or raises :class:`PolicyError` naming the key and what it accepts. A new
key whose values none of these parsers reads gets its parser here; its row (a
:class:`PolicyKey`; ``RUN`` as a default: the run config's value) goes in
:data:`azsl_flower.owner.policy_keys.KEYS`. :mod:`azsl_flower.owner.policy` re-exports the
public names, so importers of the policy need not know the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from azsl_flower.common.config import CHOICES, is_device_name

__all__ = [
    "DEFAULT_TEMPERATURE",
    "MAX_COUNT",
    "MAX_EPOCHS",
    "MAX_SEED",
    "RUN",
    "TEMPERATURE_RANGE",
    "PolicyError",
    "PolicyKey",
    "number",
    "relative_file",
    "whole_number",
]

RUN = object()  # simulated default: take the run config's value
DEFAULT_TEMPERATURE = 0.05  # scenario dfzsl: the cosine teacher's, unless the owner sets it
# The cosine teacher's logits are cosines divided by the temperature: at 1e-3 they stay
# within ±1000, where float32 softmax, cross-entropy and their gradients are finite (1e-320
# makes 1/T infinite and the logits NaN); above 10 every answer is nearly uniform.
TEMPERATURE_RANGE = (1e-3, 10.0)
MAX_COUNT = 10**12  # counts and budgets: beyond any run, and inside the wire's int64 scalars
MAX_SEED = 2**31 - 1  # every generator the owner seeds (torch, NumPy) takes it
MAX_EPOCHS = 10_000  # teacher-epochs the node config may set


class PolicyError(ValueError):
    """The owner's node config is wrong; the message names the key and what it accepts."""


def _text(name: str, raw: object) -> str:
    return str(raw).strip()


def whole_number(raw: object) -> int | None:
    """``raw`` as a whole number, or None for 1.5, 'ten' and True alike (every node-config
    count and size is read through this)."""
    if isinstance(raw, bool):
        return None
    try:
        return int(str(raw).strip())
    except ValueError:
        return None


def number(raw: object) -> float:
    """``raw`` as a float, NaN when it is none (the range checks then refuse it)."""
    try:
        return float(str(raw).strip())
    except ValueError:
        return math.nan


def _whole(name: str, raw: object, high: int, meaning: str) -> int:
    """A whole number in 0..high; refuses 1.5, 'ten' and True alike."""
    value = whole_number(raw)
    if value is None or not 0 <= value <= high:
        raise PolicyError(f"node-config {name}={raw!r}: give a whole number in 0..{high} {meaning}")
    return value


def _count(name: str, raw: object) -> int:
    """A count or a limit: a whole number in 0..MAX_COUNT (0: no limit)."""
    return _whole(name, raw, MAX_COUNT, "(0 = no limit)")


def _optional_seed(name: str, raw: object) -> int | None:
    """Empty: derived from the owner's key; else a seed in 0..MAX_SEED (0 reads as 1)."""
    if str(raw).strip() == "":
        return None
    return max(1, _whole(name, raw, MAX_SEED, "(empty: from this owner's key)"))


def _optional_epochs(name: str, raw: object) -> int | None:
    """Empty: the run's value (capped); else 1..MAX_EPOCHS epochs (0 reads as 1)."""
    if str(raw).strip() == "":
        return None
    return max(1, _whole(name, raw, MAX_EPOCHS, "(empty: the run's value)"))


def _optional_rate(name: str, raw: object) -> float | None:
    if str(raw).strip() == "":
        return None
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1):
        raise PolicyError(f"node-config {name}={raw!r}: a learning rate in (0, 1]")
    return value


def _scenarios(name: str, raw: object) -> frozenset[str]:
    names = {s.strip() for s in str(raw).split(",") if s.strip()}
    unknown = names - set(CHOICES["scenario"])
    if unknown or not names:
        raise PolicyError(
            f"node-config {name}={raw!r}: a comma list of {', '.join(CHOICES['scenario'])} "
            "(weights sends this owner's teacher and per-class feature statistics: opt in "
            "only knowingly)"
        )
    return frozenset(names)


def _suite(name: str, raw: object) -> str:
    value = str(raw).strip()
    if value not in CHOICES["encryption"]:
        raise PolicyError(
            f"node-config {name}={raw!r}: choose one of {', '.join(CHOICES['encryption'])}"
        )
    return value


def relative_file(name: str, raw: object) -> str:
    """A file name inside the data folder: relative, no '..', not a device or drive path."""
    value = str(raw).strip()
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if (
        not value
        or posix.is_absolute()
        or windows.is_absolute()
        or windows.drive
        or ".." in posix.parts
        or ".." in windows.parts
        or value.startswith("~")
    ):
        raise PolicyError(
            f"{name}={raw!r}: name a file inside the data folder (relative, without '..'), "
            "e.g. 'res101.mat'"
        )
    return value


def _partition(name: str, raw: object) -> int:
    return _count(name, raw)


def _device(name: str, raw: object) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: refused here, not at the first message."""
    value = str(raw).strip()
    if not is_device_name(value):
        raise PolicyError(f"node-config {name}={raw!r}: choose auto, cpu, cuda or cuda:N")
    return value


def _temperature(name: str, raw: object) -> float:
    value = number(raw)
    low, high = TEMPERATURE_RANGE
    if not (math.isfinite(value) and low <= value <= high):
        raise PolicyError(
            f"node-config {name}={raw!r}: the cosine teacher's temperature, a number in "
            f"[{low:g}, {high:g}] (logits are cosines divided by it: below {low:g} they leave "
            f"float32's range; default {DEFAULT_TEMPERATURE})"
        )
    return value


def _switch(name: str, raw: object) -> bool:
    text = str(raw).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise PolicyError(f"node-config {name}={raw!r}: true or false")
    return text in ("true", "1")


@dataclass(frozen=True)
class PolicyKey:
    """One node-config key of the owner policy."""

    name: str
    default: Any  # a deployed owner's value when the key is absent
    simulated: Any  # a simulated owner's value when absent (RUN: the run config's)
    parse: Callable[[str, object], Any]
    meaning: str
    protects: str
