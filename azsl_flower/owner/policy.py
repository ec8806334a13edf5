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

Adding a key: one row in :data:`KEYS` (name, deployed default, simulated default, parser,
meaning, what it protects), then read ``policy[name]`` where it is enforced. The README
table is :func:`markdown_table` (a test keeps them equal).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from azsl_flower.common.config import CHOICES, DEFAULTS, Scenario, resolve_cache_dir
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

__all__ = ["KEYS", "RUN", "OwnerPolicy", "PolicyError", "PolicyKey", "markdown_table"]

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


def _whole(name: str, raw: object, high: int, meaning: str) -> int:
    """A whole number in 0..high; refuses 1.5, 'ten' and True alike."""
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(str(raw).strip())
    except ValueError:
        value = -1
    if not 0 <= value <= high:
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
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise PolicyError(f"node-config {name}={raw!r}: choose auto, cpu, cuda or cuda:N")
    return value


def _temperature(name: str, raw: object) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = math.nan
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


KEYS: tuple[PolicyKey, ...] = (
    PolicyKey(
        "allowed-scenarios",
        "whitebox,blackbox",
        "whitebox,blackbox,weights,dfzsl",
        _scenarios,
        "scenarios this owner answers (comma list)",
        "`weights` (the teacher's weights and real per-class feature means and variances) "
        "only by explicit opt-in; leave out `whitebox` to refuse input gradients",
    ),
    PolicyKey(
        "encryption",
        "aes-256-gcm",
        RUN,
        _suite,
        "the cipher suite this owner speaks; an owner with `owner-key` never speaks `none`",
        "a service or relay cannot downgrade the owner to clear text",
    ),
    PolicyKey(
        "owner-key",
        "",
        "",
        _text,
        "this owner's X25519 private key file (`azsl-flower keys generate`)",
        "only the pinned service can read answers; a simulated owner without it uses the run's "
        "per-run keys",
    ),
    PolicyKey(
        "service-pub",
        "",
        "",
        _text,
        "the pinned service public key; messages sealed by any other key are refused",
        "no other party can query this owner",
    ),
    PolicyKey(
        "data-dir",
        "",
        RUN,
        _text,
        "this owner's xlsa17 folder (empty: scikit-learn's digits, a demo owner)",
        "the service cannot point the owner at other files",
    ),
    PolicyKey(
        "feature-file",
        "res101.mat",
        RUN,
        lambda n, r: relative_file(f"node-config {n}", r),
        "features file inside `data-dir` (relative, no `..`)",
        "the features file stays inside the data folder",
    ),
    PolicyKey(
        "cache-dir",
        "",
        RUN,
        _text,
        "teachers, run state (encrypted session, budget) and per-run keys (empty: "
        "`$AZSL_CACHE_DIR` or `~/.cache/azsl-flower`)",
        "the service cannot choose where the owner writes",
    ),
    PolicyKey("device", "auto", RUN, _device, "`auto`, `cpu`, `cuda`, `cuda:N`", "-"),
    PolicyKey(
        "seed",
        "",
        RUN,
        _optional_seed,
        f"teacher seed, up to {MAX_SEED} (empty: derived from this owner's key fingerprint)",
        "owners never share a seed; the service cannot make the owner train new teachers "
        "by changing its seed",
    ),
    PolicyKey(
        "teacher-epochs",
        "",
        RUN,
        _optional_epochs,
        f"teacher training epochs, 1..{MAX_EPOCHS} (empty: the run's value, up to "
        "`max-teacher-epochs`)",
        "the owner decides how its teacher is trained",
    ),
    PolicyKey(
        "lr-teacher",
        "",
        RUN,
        _optional_rate,
        "teacher learning rate in (0, 1] (empty: the run's value)",
        "as above",
    ),
    PolicyKey(
        "max-teacher-epochs",
        100,
        0,
        _count,
        "the most teacher epochs a run may ask for (0: no cap)",
        "bounded work per set-up",
    ),
    PolicyKey(
        "max-teachers",
        8,
        0,
        _count,
        "cached teacher files kept; the oldest are removed (0: keep all)",
        "bounded disk use when runs ask for other teacher settings",
    ),
    PolicyKey(
        "max-setups",
        4,
        0,
        _count,
        "set-up requests answered per run (each may train a teacher; 0: no limit)",
        "bounded work per run",
    ),
    PolicyKey(
        "query-budget",
        0,
        0,
        _count,
        "generated samples answered per run: feedback, verification and dfzsl probes together "
        "(0: no limit)",
        "how much the service learns about the teacher; held in the run state on disk, "
        "reserved under a lock, so concurrent requests and restarts cannot exceed it",
    ),
    PolicyKey(
        "max-eval-models",
        6,
        0,
        _count,
        "models scored on the owner's test split per run (0: no limit)",
        "each scored model returns per-class counts on real test features: a crafted model "
        "reads a little about them",
    ),
    PolicyKey(
        "max-calibration-values",
        128,
        0,
        _count,
        "calibration values scored per run, summed over models (0: no limit)",
        "as above: each value is one more set of counts",
    ),
    PolicyKey(
        "min-class-count",
        5,
        0,
        _count,
        "classes with fewer test samples than this are left out of evaluation counts",
        "counts of a class of one or two samples would tell about those samples",
    ),
    PolicyKey(
        "dfzsl-temperature",
        DEFAULT_TEMPERATURE,
        DEFAULT_TEMPERATURE,
        _temperature,
        "scenario dfzsl: the cosine teacher's temperature in "
        f"[{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}] (logits are cosines divided by it)",
        "-",
    ),
    PolicyKey(
        "dfzsl-release-head",
        False,
        False,
        _switch,
        "scenario dfzsl: send the teacher's class directions at set-up instead of answering probes",
        "by default the service learns the directions only from logits on probes, within "
        "`query-budget` (about one probe per feature dimension pins a linear head down)",
    ),
    PolicyKey(
        "teacher-answer",
        "logits",
        "logits",
        _text,
        "the most revealing teacher answer given: `logits` > `probs` > `topk:K` > `label`; "
        "below `probs` the owner refuses `whitebox` (per-sample losses and their input "
        "gradients reveal the whole softmax), below `logits` also `dfzsl` and `weights`",
        "what the service learns about the teacher per query, in every scenario "
        "(docs/privacy.md: extraction)",
    ),
    PolicyKey(
        "regulariser-answer",
        "gradient",
        "gradient",
        _text,
        "the most revealing regulariser answer: `gradient` > `value` > `none`; a black-box "
        "without `gradient` answers outputs only",
        "`gradient` lets the service solve for every class's feature mean and variance "
        "(docs/privacy.md); `none` keeps them home",
    ),
    PolicyKey(
        "answer-decimals",
        -1,
        -1,
        _text,
        f"round every number answered to this many decimals, 0..{MAX_ANSWER_DECIMALS} "
        "(-1: exact; float32 answers have no more digits)",
        "less precision per answer",
    ),
    PolicyKey(
        "teacher-epsilon",
        "",
        "",
        _text,
        f"train the teacher with DP-SGD (Opacus) to this ε in (0, {MAX_EPSILON:g}] "
        "(empty, 0 or `inf`: not private)",
        "every answer is post-processing of a DP model: the bound holds for any number of queries",
    ),
    PolicyKey(
        "teacher-delta",
        "",
        "",
        _text,
        "δ of every mechanism, below 1/n, n the training images (empty or 0: 1/(10 n)); "
        "1/n or more is refused at set-up",
        "no mechanism may publish a training image outright",
    ),
    PolicyKey(
        "stats-epsilon",
        "",
        "",
        _text,
        "release the regulariser's class statistics once with the Gaussian mechanism at this ε "
        f"in (0, {MAX_EPSILON:g}] (composed with the teacher's by Opacus's accountant; needs "
        "`stats-clip`)",
        "the class means and variances the regulariser answers about are noisy",
    ),
    PolicyKey(
        "stats-clip",
        "",
        "",
        _text,
        "per-record L2 bound for the statistics release, finite > 0 (choose it without looking "
        "at the data)",
        "one image's influence on the statistics",
    ),
    PolicyKey(
        "teacher-model",
        "auto",
        "auto",
        _text,
        "the teacher network: `mlp` (the paper's), `linear` (softmax regression) or `auto`: "
        "`linear` with `teacher-epsilon`, `mlp` without",
        "DP-SGD loses far less accuracy on the linear teacher "
        "(docs/benchmarks/dp-settings-val.json)",
    ),
    PolicyKey("dp-clip", 1.0, 1.0, _text, "DP-SGD per-sample gradient norm bound, finite > 0", "-"),
    PolicyKey(
        "dp-batch-size", 512, 512, _text, f"DP-SGD expected batch (Poisson), 1..{MAX_DP_BATCH}", "-"
    ),
    PolicyKey(
        "epsilon-limit",
        "",
        "",
        _text,
        "the most ε all of this owner's DP releases may compose to, over every run and training "
        "set (its cache keeps them; finite > 0; empty, 0 or `inf`: no limit); a release past "
        "it is refused",
        "a service cannot add up releases (transductive and inductive teacher, test and val "
        "split) beyond what the owner agreed to",
    ),
    PolicyKey(
        "dp-epochs",
        30,
        30,
        _text,
        f"DP-SGD passes over the owner's data, 1..{MAX_DP_EPOCHS}",
        "the owner's, so the service's `teacher-epochs` (or `seed`) never buys a new release",
    ),
    PolicyKey(
        "dp-lr",
        0.2,
        0.2,
        _text,
        f"DP-SGD learning rate in (0, {MAX_DP_LR:g}] (SGD, momentum 0.9)",
        "-",
    ),
    PolicyKey(
        "lifetime-setups",
        32,
        0,
        _count,
        "set-up requests answered over this owner's lifetime, all runs together (0: no limit)",
        "bounded work however many runs a service starts (each set-up may train a teacher); "
        "32 is 8 runs at `max-setups`, or 16 to 32 ordinary runs (one or two set-ups each); "
        "counted in the cache's lifetime file, under a lock",
    ),
    PolicyKey(
        "lifetime-eval-models",
        48,
        0,
        _count,
        "models scored on the owner's test split over its lifetime, all runs together "
        "(0: no limit)",
        "per-run caps do not bound a service that starts new runs: a crafted model reads about "
        "one exact value of one real test row per model scored, so 48 reads less than one 64-d "
        "digits row, while a default job (4 models a run) runs 12 times",
    ),
    PolicyKey(
        "lifetime-calibration-values",
        512,
        0,
        _count,
        "calibration values scored over the owner's lifetime, summed over models and runs "
        "(0: no limit)",
        "as above: each value is one more set of counts on real test rows; 512 is 6 validation "
        "runs (17 values x 4 models, plus their test runs' 4 each)",
    ),
    PolicyKey(
        "partition-id",
        None,
        None,
        _partition,
        "simulation only (Flower's simulation sets it): this owner's share of one dataset",
        "marks a simulated owner; never set it in a deployment",
    ),
    PolicyKey(
        "num-partitions",
        None,
        None,
        _partition,
        "simulation only: how many owners share the dataset",
        "-",
    ),
)
_BY_NAME = {k.name: k for k in KEYS}
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


def markdown_table() -> str:
    """The README's owner-policy table, generated from :data:`KEYS`."""

    def show(value: Any) -> str:
        if value is RUN:
            return "the run's"
        if value is None or value == "":
            return "–"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        return f"`{value}`"

    rows = [
        "| node-config key | deployed default | simulated default | meaning | protects |",
        "|---|---|---|---|---|",
    ]
    for k in KEYS:
        rows.append(
            f"| `{k.name}` | {show(k.default)} | {show(k.simulated)} | {k.meaning} | {k.protects} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # python -m azsl_flower.owner.policy: the README table
    print(markdown_table())
