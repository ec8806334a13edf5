"""Run configuration: one table of defaults, checked once, passed explicitly (no globals).

The keys, their defaults, option lists and enums are :mod:`azsl_flower.common.defaults`;
what one key's value looks like on its own (its type, the ``device``, ``calibration-grid``
and ``owner-classes`` syntax, :class:`ConfigError`) is :mod:`azsl_flower.common.config_values`.
Both are re-exported here. This module parses a raw run config into a :class:`RunConfig`:
each key's choices and sign, then the ranges and the rules between keys, in one fixed order
(so a run config with two faults is always refused for the same one). Adding a key: its
default in DEFAULTS, its field in :class:`RunConfig`, its sign in ``POSITIVE`` or
``NON_NEGATIVE`` and any other check in the ``_check_*`` rule of its concern.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any

from azsl_flower.common.config_methods import check_method_keys
from azsl_flower.common.config_values import (
    ConfigError,
    check_known_keys,
    coerce,
    is_device_name,
    parse_calibration_grid,
    parse_owner_classes,
)
from azsl_flower.common.defaults import (
    CHOICES,
    DEFAULTS,
    ENUMS,
    OWNER_KEYS,
    TEACHER_KEYS,
    Scenario,
    TeacherSetting,
    Weighting,
)
from azsl_flower.common.modes import parse_teacher_answer
from azsl_flower.common.regularisers import REGISTRY, names_where

__all__ = [
    "DEFAULTS",
    "CHOICES",
    "RunConfig",
    "Scenario",
    "TeacherSetting",
    "Weighting",
    "owner_groups",
    "parse_run_config",
    "resolve_cache_dir",
    # importable from here as before the keys moved to common/defaults.py (re-exports)
    "ENUMS",
    "OWNER_KEYS",
    "TEACHER_KEYS",
    # importable from here as before the value parsers moved to common/config_values.py
    "ConfigError",
    "check_known_keys",
    "is_device_name",
    "parse_calibration_grid",
    "parse_owner_classes",
]


# rounds=0: an untrained generator (a baseline); checkpoint-every=0: no checkpoints
NON_NEGATIVE = ("rounds", "seed", "max-retries", "checkpoint-every", "student-gaussian-samples")
POSITIVE = (
    "noise-dim",
    "steps-per-round",
    "batch-size",
    "classes-per-batch",
    "lr-generator",
    "feature-step",
    "pool-epochs",
    "lr-student",
    "student-epochs",
    "kd-temperature",
    "teacher-epochs",
    "lr-teacher",
    "samples-per-class",
    "poll-interval",
    "timeout",
    "dirichlet-beta",
    "dfzsl-probes",
    "dfzsl-kappa-factor",
    "dfzsl-samples",
    "warm-start-epochs",
)


@dataclass(frozen=True)
class RunConfig:
    dataset: str
    data_dir: str
    feature_file: str
    semantics: str
    scenario: Scenario
    teacher: TeacherSetting
    regulariser: str
    alpha: float
    noise_dim: int
    rounds: int
    steps_per_round: int
    batch_size: int
    classes_per_batch: int
    lr_generator: float
    feature_step: float
    pool_epochs: int
    lr_student: float
    student_epochs: int
    student_loss: str
    kd_temperature: float
    student_gaussian_samples: int
    deliver: str
    teacher_epochs: int
    lr_teacher: float
    samples_per_class: int
    split: str
    verification: bool
    calibration: float
    calibration_grid: str
    seed: int
    device: str
    output_dir: str
    cache_dir: str
    poll_interval: float
    timeout: float
    encryption: str
    service_key: str
    owner_keys: str
    max_retries: int
    fault_tamper: float
    fault_replay: float
    partition: str
    dirichlet_beta: float
    owner_classes: str
    ensemble_weighting: Weighting
    teacher_answer: str
    regulariser_answer: str
    quorum: float
    checkpoint_dir: str
    checkpoint_every: int
    resume: str
    experiment: str
    tensorboard: bool
    tensorboard_dir: str
    dfzsl_directions: str
    dfzsl_probes: int
    dfzsl_kappa: str
    dfzsl_kappa_factor: float
    dfzsl_samples: int
    dfzsl_alignment: str
    dfzsl_ridge: float
    dfzsl_generator: str
    warm_start: str
    warm_start_epochs: int
    warm_start_unseen: bool
    method: str

    def as_dict(self) -> dict[str, Any]:
        """The run config as plain values (enums as their strings), keyed as on the command line."""
        return {f.name.replace("_", "-"): _plain(getattr(self, f.name)) for f in fields(self)}

    @property
    def asked_teacher_answer(self) -> str:
        """The teacher answer asked of owners; ``auto``: the least the run can use."""
        if self.teacher_answer != "auto":
            return self.teacher_answer
        return "logits" if self.ensemble_weighting is Weighting.JOINT else "probs"

    def owner_settings(self) -> dict[str, Any]:
        """What an owner needs to rebuild its state; sent with every request."""
        d = self.as_dict() | {"teacher-answer": self.asked_teacher_answer}
        return {k: d[k] for k in OWNER_KEYS}


def parse_run_config(raw: dict[str, Any] | None) -> RunConfig:
    """Merge ``raw`` over DEFAULTS, coerce types, and reject unknown keys or values."""
    raw = dict(raw or {})
    check_known_keys(raw)
    merged = {key: _parse_key(key, raw.get(key, default)) for key, default in DEFAULTS.items()}
    _check_learning(merged)
    _check_calibration(merged)
    check_method_keys(merged)
    _check_federation(merged)
    _check_deployment(merged)
    for key, enum in ENUMS.items():
        merged[key] = enum(merged[key])
    return RunConfig(**{k.replace("-", "_"): v for k, v in merged.items()})


def _parse_key(key: str, raw: Any) -> Any:
    """One key on its own: its default's type, one of its choices, its sign."""
    value = coerce(key, raw)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(
            f"run-config {key}={value!r}: choose one of {[str(c) for c in CHOICES[key]]}"
        )
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"run-config {key}={value!r}: must be > 0")
    if key in NON_NEGATIVE and value < 0:
        raise ConfigError(f"run-config {key}={value!r}: must be >= 0")
    return value


def _check_learning(merged: dict[str, Any]) -> None:
    """What the generator learns from: the regulariser's weight, the dataset's files, a
    regulariser the scenario can compute, and the teacher answer (normalised here) that the
    ensemble weighting needs."""
    if not (math.isfinite(merged["alpha"]) and merged["alpha"] >= 0):
        raise ConfigError(f"run-config alpha={merged['alpha']!r}: must be a finite number >= 0")
    if merged["dataset"] == "xlsa17" and not merged["data-dir"]:
        raise ConfigError("dataset=xlsa17 needs data-dir=<folder with att_splits.mat + features>")
    if merged["scenario"] == "weights" and not REGISTRY[merged["regulariser"]].sendable:
        raise ConfigError(
            f"scenario=weights cannot use regulariser={merged['regulariser']} (it needs real "
            f"features at the service); use {names_where(lambda k: k.sendable)}"
        )
    kind = REGISTRY[merged["regulariser"]]
    if merged["regulariser-answer"] == "statistics" and not kind.sendable:
        raise ConfigError(
            f"regulariser-answer=statistics cannot use regulariser={merged['regulariser']} (it "
            f"has no class statistics to send); use {names_where(lambda k: k.sendable)}, or "
            "regulariser-answer=gradient"
        )
    if merged["teacher-answer"] != "auto":
        try:
            merged["teacher-answer"] = str(parse_teacher_answer(merged["teacher-answer"]))
        except ValueError as exc:
            raise ConfigError(f"run-config {exc} (or auto)") from None
    if merged["ensemble-weighting"] == "joint" and merged["teacher-answer"] not in (
        "logits",
        "auto",
    ):
        raise ConfigError(
            "ensemble-weighting=joint needs every owner's logits (teacher-answer=logits); "
            f"with teacher-answer={merged['teacher-answer']} use coverage or confidence"
        )


def _check_calibration(merged: dict[str, Any]) -> None:
    """Calibrated stacking: the offset, and the grid a ``split=val`` run also scores."""
    if not (math.isfinite(merged["calibration"]) and merged["calibration"] >= 0):
        raise ConfigError(
            f"run-config calibration={merged['calibration']!r}: a finite number >= 0, "
            "subtracted from the seen classes' logits (0: plain argmax)"
        )
    parse_calibration_grid(merged["calibration-grid"])


def _check_federation(merged: dict[str, Any]) -> None:
    """The federation: the relay's fault rates, the quorum that must stay, and how
    simulated owners share the data (``owner-classes`` only with ``partition=explicit``)."""
    for key in ("fault-tamper", "fault-replay"):
        if not 0.0 <= merged[key] <= 1.0:
            raise ConfigError(f"run-config {key}={merged[key]!r}: a fraction in [0, 1]")
    if not 0.0 < merged["quorum"] <= 1.0:  # NaN fails too
        raise ConfigError(
            f"run-config quorum={merged['quorum']!r}: the fraction of the owners present at "
            "set-up that must stay in the run, in (0, 1] (1.0: every owner; 0.5: half)"
        )
    if not math.isfinite(merged["dirichlet-beta"]):
        raise ConfigError(
            f"run-config dirichlet-beta={merged['dirichlet-beta']!r}: must be a finite number > 0"
        )
    if merged["partition"] == "explicit":
        if not merged["owner-classes"].strip():
            raise ConfigError(
                "partition=explicit needs owner-classes, one group of classes per owner "
                "separated by ';', e.g. owner-classes='0,1,2;3,4;5-9'"
            )
        parse_owner_classes(merged["owner-classes"])  # syntax now; counts when owners load
    elif merged["owner-classes"].strip():
        raise ConfigError(
            f"run-config owner-classes={merged['owner-classes']!r} is only read with "
            f"partition=explicit (partition is {merged['partition']!r}); set both or neither"
        )


def _check_deployment(merged: dict[str, Any]) -> None:
    """Where the run executes: both key files or neither, and a device name."""
    if bool(merged["service-key"]) != bool(merged["owner-keys"]):
        raise ConfigError(
            "set both service-key (the service's private key) and owner-keys (the owners' "
            "public keys), or neither (simulation: per-run keys are generated)"
        )
    if not is_device_name(merged["device"]):
        raise ConfigError(f"run-config device={merged['device']!r}: choose auto, cpu, cuda, cuda:N")


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def owner_groups(
    spec: str, owners: int, num_classes: int, error: type[ValueError] = ConfigError
) -> list[list[int]]:
    """``owner-classes`` checked against the federation: one group per owner, classes in range.

    The service checks it before any message (``ConfigError``), each simulated owner when it
    loads its data (``error``: the loader's ``DataError``).
    """
    groups = parse_owner_classes(spec)
    if len(groups) != owners:
        raise error(
            f"owner-classes={spec!r} has {len(groups)} group(s) but {owners} owners are "
            "connected; give exactly one ';'-separated group per owner"
        )
    outside = sorted({c for g in groups for c in g if c >= num_classes})
    if outside:
        raise error(
            f"owner-classes names class(es) {outside} but the dataset has {num_classes} "
            f"classes (0-based: 0..{num_classes - 1})"
        )
    return groups


def resolve_cache_dir(value: object = "") -> Path:
    """Where teachers (owners) and per-run simulation keys live: option, env, home."""
    raw = str(value or "") or os.environ.get("AZSL_CACHE_DIR") or "~/.cache/azsl-flower"
    return Path(raw).expanduser()
