"""The owner's policy: what this data owner agrees to, from its node config only.

A data owner's SuperNode is started by the owner (``flower-supernode --node-config``); the
run config comes from whoever submits the run. Everything that decides what leaves the
owner, what its data and teacher are, or how much work a run may cost is therefore read
from the node config and checked here, once per message, before anything is answered. A
request outside the policy gets a sealed refusal that names the key to change
(:class:`~azsl_flower.wire.errors.Refused`); a node config this module cannot read stops
the owner with a message naming the key.

Simulated owners (``partition-id`` in the node config: Flower's simulation sets it, a
deployed SuperNode does not) stand in for owners inside one researcher's machine, so their
defaults follow the run config (``RUN``) and impose no caps. A deployed owner never takes
its data, cache, device, encryption or teacher seed from the service.

This module holds :class:`OwnerPolicy` (reading a node config, checking what the service
asks). The keys are the :data:`KEYS` table in :mod:`azsl_flower.owner.policy_keys`, their
value parsers and limits in :mod:`azsl_flower.owner.policy_values`; both are re-exported
here. Adding a key: one row in :data:`~azsl_flower.owner.policy_keys.KEYS` (name, deployed
default, simulated default, parser, meaning, what it protects), then read ``policy[name]``
where it is enforced. The README table is :func:`markdown_table` (a test keeps them equal).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from azsl_flower.common.config import CHOICES, DEFAULTS, Scenario, resolve_cache_dir
from azsl_flower.owner.policy_keys import _BY_NAME, KEYS, markdown_table
from azsl_flower.owner.policy_values import (
    DEFAULT_TEMPERATURE,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_SEED,
    RUN,
    TEMPERATURE_RANGE,
    PolicyError,
    PolicyKey,
    _suite,
    relative_file,
)
from azsl_flower.owner.privacy import (
    MAX_ANSWER_DECIMALS,
    MAX_DP_BATCH,
    MAX_DP_EPOCHS,
    MAX_DP_LR,
    MAX_EPSILON,
    OwnerPrivacy,
    owner_privacy,
)
from azsl_flower.owner.privacy import NODE_KEYS as PRIVACY_KEYS
from azsl_flower.wire.errors import Refused

__all__ = [
    "KEYS",
    "RUN",
    "OwnerPolicy",
    "PolicyError",
    "PolicyKey",
    "markdown_table",
    # importable from here as before the keys and values moved out (re-exports)
    "DEFAULT_TEMPERATURE",
    "MAX_ANSWER_DECIMALS",
    "MAX_COUNT",
    "MAX_DP_BATCH",
    "MAX_DP_EPOCHS",
    "MAX_DP_LR",
    "MAX_EPOCHS",
    "MAX_EPSILON",
    "MAX_SEED",
    "TEMPERATURE_RANGE",
    "relative_file",
]

# Run-config keys that define a simulated owner's share of one dataset (load_owner_data and
# the teacher / DP release key read them): a deployed owner holds all of its data, so for it
# they are always their defaults (iid, one share) and never part of what the service picks.
PARTITION_KEYS = ("partition", "dirichlet-beta", "owner-classes")
MAX_CALIBRATION_PER_REQUEST = 256


@dataclass(frozen=True)
class OwnerPolicy:
    """What this owner agrees to; built once per message from its node config."""

    values: Mapping[str, Any]
    simulated: bool
    explicit: frozenset[str]  # keys the node config set

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> OwnerPolicy:
        unknown = sorted(set(node_config) - set(_BY_NAME))
        if unknown:
            raise PolicyError(
                f"unknown node-config key(s) {unknown}; this owner knows {sorted(_BY_NAME)}"
            )
        simulated = "partition-id" in node_config
        values: dict[str, Any] = {}
        for key in KEYS:
            if key.name in node_config:
                values[key.name] = key.parse(key.name, node_config[key.name])
            else:
                default = key.simulated if simulated else key.default
                values[key.name] = default if default is RUN else _default(key, default)
        if simulated:
            pid, parts = values["partition-id"], values["num-partitions"] or 1
            if pid >= parts:
                raise PolicyError(f"node-config partition-id {pid} outside 0..{parts - 1}")
            values["num-partitions"] = parts
        if bool(values["owner-key"]) != bool(values["service-pub"]):
            raise PolicyError("set both owner-key and service-pub in this SuperNode's node config")
        if values["owner-key"] and values["encryption"] == "none":
            raise PolicyError(
                "node-config encryption='none' with owner-key set: an owner with keys never "
                "answers in clear text; remove encryption or choose a cipher suite"
            )
        policy = cls(values, simulated, frozenset(node_config))
        try:
            policy.privacy  # noqa: B018 - read once here: a bad combination stops the owner
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
        return policy

    @cached_property
    def privacy(self) -> OwnerPrivacy:
        """Response modes and differential privacy, from the keys this node config sets
        (parsed once per policy, that is once per message)."""
        return owner_privacy({k: self.values[k] for k in PRIVACY_KEYS if k in self.explicit})

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    # -- where things are ----------------------------------------------------------------------

    def _run_or_own(self, name: str, run_config: Mapping[str, object]) -> Any:
        """A key a simulated owner takes from the run config unless its node config sets it."""
        value = self.values[name]
        if value is RUN:
            return run_config.get(name, DEFAULTS.get(name, ""))
        return value

    def suite(self, run_config: Mapping[str, object], env: str | None = None) -> str:
        """The cipher suite: the node config's; a simulated owner without pinned keys takes
        the run's (``env``: $AZSL_ENCRYPTION for launchers without a run config)."""
        value = self.values["encryption"]
        if value is RUN:
            if self.values["owner-key"]:
                return str(DEFAULTS["encryption"])  # pinned keys: never the run's choice
            value = run_config.get("encryption") or env or DEFAULTS["encryption"]
            value = _suite("encryption", value)
        return str(value)

    def cache_dir(self, run_config: Mapping[str, object]) -> Path:
        return resolve_cache_dir(self._run_or_own("cache-dir", run_config))

    def limit(self, name: str) -> int:
        """A count limit of this policy (0: none)."""
        return int(self.values[name])

    # -- what the service may ask -------------------------------------------------------------

    def settings(self, requested: Mapping[str, object] | None, identity: str) -> dict[str, object]:
        """The settings this owner works with: the service's request, checked and overridden
        by the policy. ``identity``: what a deployed owner's teacher seed derives from.
        Raises :class:`Refused` for a request outside the policy."""
        s = dict(requested or {})
        scenario = str(s.get("scenario", DEFAULTS["scenario"]))
        if scenario not in self.values["allowed-scenarios"]:
            allowed = ",".join(sorted(self.values["allowed-scenarios"]))
            raise Refused(
                "policy",
                f"scenario {scenario!r} is not allowed by this owner (node-config "
                f"allowed-scenarios={allowed!r})"
                + (
                    "; weights sends its teacher and per-class feature statistics"
                    if scenario == Scenario.WEIGHTS
                    else ""
                ),
            )
        for key in ("teacher", "split", "regulariser"):
            value = str(s.get(key, DEFAULTS[key]))
            if value not in CHOICES[key]:
                raise Refused("policy", f"{key}={value!r}: choose one of {list(CHOICES[key])}")
        alpha = _float(s.get("alpha", DEFAULTS["alpha"]))
        if not (math.isfinite(alpha) and alpha >= 0):
            raise Refused("policy", f"alpha={s.get('alpha')!r}: a finite number >= 0")
        if self.simulated:
            for key in ("data-dir", "feature-file", "cache-dir", "device", "seed"):
                own = self.values[key]
                if own is not RUN and not (key == "seed" and own is None):
                    s[key] = own
            if s.get("data-dir") and "data-dir" in self.explicit and s.get("dataset") == "digits":
                s["dataset"] = "xlsa17"
        else:
            # the owner's own data, cache and device; the run's partition keys do not apply
            s["dataset"] = "xlsa17" if self.values["data-dir"] else "digits"
            s["data-dir"] = self.values["data-dir"]
            s["feature-file"] = self.values["feature-file"]
            s["cache-dir"] = self.values["cache-dir"]
            s["device"] = self.values["device"]
            s["seed"] = self.values["seed"] if self.values["seed"] is not None else _seed(identity)
            # every key that only shapes a simulated owner's share of one dataset is fixed:
            # a service that varies them (a new dirichlet-beta per run) would otherwise get a
            # new release key, so a fresh DP teacher and statistics release each time
            for key in PARTITION_KEYS:
                s[key] = DEFAULTS[key]
        try:
            s["feature-file"] = relative_file(
                "feature-file", s.get("feature-file", DEFAULTS["feature-file"])
            )
        except PolicyError as exc:
            raise Refused("policy", str(exc)) from None
        self.privacy.check(s)  # response modes: no more than this owner gives
        s["teacher-epochs"] = self._teacher_epochs(s.get("teacher-epochs"))
        s["lr-teacher"] = self._lr_teacher(s.get("lr-teacher"))
        if scenario == Scenario.DFZSL:  # the owner's temperature, never the service's
            s["dfzsl-temperature"] = self.values["dfzsl-temperature"]
        return s

    def _teacher_epochs(self, asked: object) -> int:
        own = self.values["teacher-epochs"]
        if own is not RUN and own is not None:
            return int(own)
        epochs = _float(asked if asked is not None else DEFAULTS["teacher-epochs"])
        cap = self.limit("max-teacher-epochs")
        if not (math.isfinite(epochs) and epochs >= 1 and epochs.is_integer()):
            raise Refused("policy", f"teacher-epochs={asked!r}: a whole number >= 1")
        if cap and epochs > cap:
            raise Refused(
                "policy",
                f"teacher-epochs={int(epochs)} is over this owner's max-teacher-epochs={cap}",
            )
        return int(epochs)

    def _lr_teacher(self, asked: object) -> float:
        own = self.values["lr-teacher"]
        if own is not RUN and own is not None:
            return float(own)
        lr = _float(asked if asked is not None else DEFAULTS["lr-teacher"])
        if not (math.isfinite(lr) and 0 < lr <= 1):
            raise Refused("policy", f"lr-teacher={asked!r}: a learning rate in (0, 1]")
        return lr

    @property
    def partition(self) -> tuple[int, int]:
        """(partition-id, num-partitions): a deployed owner holds all of its own data."""
        if not self.simulated:
            return 0, 1
        return int(self.values["partition-id"]), int(self.values["num-partitions"])


def _default(key: PolicyKey, default: Any) -> Any:
    return None if default is None else key.parse(key.name, default)


def _float(raw: object) -> float:
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _seed(identity: str) -> int:
    """A deployed owner's teacher seed from its own identity (key fingerprint)."""
    return int(hashlib.sha256(f"azsl-teacher-seed|{identity}".encode()).hexdigest()[:8], 16)


if __name__ == "__main__":  # python -m azsl_flower.owner.policy: the README table
    print(markdown_table())
