"""Run-config values one key at a time: their types, and the keys that have a syntax.

:mod:`azsl_flower.common.config` merges a raw run config over DEFAULTS and checks the keys
against each other; what one key's value must look like on its own lives here, below it, so
that both it and the owner side (``is_device_name``) read one rule: the type a value is
coerced to (its default's), the known keys, and the syntax of ``device``,
``calibration-grid`` and ``owner-classes``. :class:`ConfigError` is defined here, and
:mod:`azsl_flower.common.config` imports every public name it uses from here, so importers
of the run config need not know the split. A key whose value has a syntax of its own gets
its parser here.
"""

from __future__ import annotations

import math
import re
from typing import Any

from azsl_flower.common.defaults import DEFAULTS

__all__ = [
    "MAX_CLASS_INDEX",
    "ConfigError",
    "check_known_keys",
    "coerce",
    "is_device_name",
    "parse_calibration_grid",
    "parse_owner_classes",
]

MAX_CLASS_INDEX = 10**6  # far above any dataset's class count; bounds what a range expands to


class ConfigError(ValueError):
    """An unknown option or a bad value; the message names the key and the choices."""


def check_known_keys(raw: dict[str, Any]) -> None:
    """Refuse keys that are not run-config keys, listing the known ones."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown run-config key(s) {unknown}; known keys: {sorted(DEFAULTS)}")


def coerce(key: str, value: Any) -> Any:
    """``value`` as the type of ``key``'s default: a bool from true/false/1/0, an int only
    from a whole number (2.0 yes, 2.5 no), a float, else a string."""
    default = DEFAULTS[key]
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                text = str(value).strip().lower()
                if text not in ("true", "false", "1", "0"):
                    raise ValueError
                value = text in ("true", "1")
        elif isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = int(value)
        elif isinstance(default, float):
            value = float(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"run-config {key}={value!r}: expected {type(default).__name__}"
        ) from None
    return value


def is_device_name(value: str) -> bool:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the device names the run config, an
    owner's node config and the benchmarks accept (one rule for all three)."""
    return re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None


def parse_calibration_grid(text: str) -> list[float]:
    """``calibration-grid``: comma-separated finite values >= 0, e.g. '0,1,2,5'."""
    try:
        grid = [float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        grid = []
    if not grid or not all(math.isfinite(g) and g >= 0 for g in grid):
        raise ConfigError(
            f"run-config calibration-grid={text!r}: comma-separated finite numbers >= 0, "
            "e.g. '0,1,2,5,10'"
        )
    return grid


def parse_owner_classes(spec: str) -> list[list[int]]:
    """Parse owner-classes ("0,1,2;3,4;5-9") into one sorted class list per owner.

    Only the syntax is checked here; the number of groups and the class range depend on the
    federation and the dataset, which the data loader checks. Overlapping groups are allowed:
    owners that list the same class share its samples.
    """
    example = "e.g. owner-classes='0,1,2;3,4;5-9'"
    groups: list[list[int]] = []
    for g, group in enumerate(str(spec).split(";"), start=1):
        members: set[int] = set()
        for token in (t.strip() for t in group.split(",")):
            if not token:
                continue
            lo, dash, hi = token.partition("-")
            try:
                a, b = int(lo), int(hi) if dash else int(lo)
            except ValueError:
                raise ConfigError(
                    f"owner-classes group {g} ({group.strip()!r}): {token!r} is not a class "
                    f"index (0-based) or a range a-b; {example}"
                ) from None
            if a < 0 or b < a or b >= MAX_CLASS_INDEX:
                raise ConfigError(
                    f"owner-classes group {g}: bad class index or range {token!r}; write a or "
                    f"a-b with 0 <= a <= b; {example}"
                )
            members.update(range(a, b + 1))
        if not members:
            raise ConfigError(
                f"owner-classes group {g} is empty: every owner needs at least one class "
                f"(one group per owner, separated by ';'); {example}"
            )
        groups.append(sorted(members))
    return groups
