"""The owner's state: its data and teacher, trained once per (data, settings) and cached.

Everything here runs where the private features live. The teacher is trained at set-up
(the only message that may train: ``owner_state(train=True)``, bounded per run by
``max-setups``) and kept on the owner's disk (keyed by its data and teacher settings,
mode 0600, :mod:`azsl_flower.owner.files`) and in memory, so a SuperNode that answers each
message in a new process does not retrain it; every other message only loads it. The DP
releases' files (their lock, what the cache holds, ``epsilon-limit``, the statistics
release) are :mod:`azsl_flower.owner.releases`.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from azsl_flower.common.config import TEACHER_KEYS, resolve_cache_dir
from azsl_flower.common.models import fit, resolve_device, state_to_numpy, teacher_network
from azsl_flower.common.regularisers import REGISTRY, names_where, regulariser_kind
from azsl_flower.owner import dp
from azsl_flower.owner.data import OwnerData, load_owner_data
from azsl_flower.owner.dfzsl import train_cosine_teacher
from azsl_flower.owner.files import open_private, write_private
from azsl_flower.owner.oracle import FeedbackOracle, Regulariser, make_regulariser
from azsl_flower.owner.privacy import OwnerPrivacy
from azsl_flower.owner.releases import (
    _dp_statistics,
    _read_mechanism,
    _within_limit,
    no_teacher,
    release_lock,
    released,
)
from azsl_flower.wire.errors import Refused

__all__ = [
    "OwnerState",
    "check_settings",
    "owner_state",
    "released",
    "teacher_weights",
    # importable from here as before the DP-release helpers moved to owner/releases.py
    "no_teacher",
    "release_lock",
]


@dataclass
class OwnerState:
    data: OwnerData
    oracle: FeedbackOracle
    teacher_file: Path | None = None
    privacy: OwnerPrivacy = field(default_factory=OwnerPrivacy)
    # DP releases behind the teacher and the statistics (empty: not private)
    mechanisms: dict[str, dp.Mechanism] = field(default_factory=dict)
    # what the state is cached by (data, teacher, regulariser, DP settings): the run ledger
    # binds a run to the keys its set-ups made
    key: str = ""

    def spend(self, settings: dict) -> dp.PrivacySpend:
        """The (ε, δ) of everything this run's answers are computed from (set-up declares it).

        Evaluation answers per-class counts on the real *test* split, exactly: no DP release
        covers them (a crafted model reads test rows through them, docs/privacy.md), so no
        owner that answers them may declare ``covered``; they are bounded per run and per
        lifetime instead (:mod:`azsl_flower.owner.lifetime`). The declared ε is still that of
        the answers about generated features, when every release behind them is DP."""
        reg_used = (
            str(settings.get("regulariser-answer", "gradient")) != "none"
            or str(settings.get("scenario")) == "weights"
        )
        reg = self.oracle.regulariser
        not_covered = []
        if "teacher" not in self.mechanisms:
            not_covered.append("teacher (trained without DP)")
        if reg_used and reg.reads_data and "stats" not in self.mechanisms:
            not_covered.append(f"{settings.get('regulariser', 'kl')} regulariser statistics")
        answers_covered = not not_covered
        not_covered.append(EXACT_EVALUATION)
        return dp.PrivacySpend(
            delta=self.privacy.delta(int(self.data.train_y.size)),
            mechanisms=list(self.mechanisms.values()),
            covered=False,  # exact evaluation counts: never covered
            not_covered=not_covered,
            answers_covered=answers_covered,
            lifetime=released(self.teacher_file.parent) if self.teacher_file else [],
        )


_STATE: dict[str, OwnerState] = {}
EXACT_EVALUATION = (
    "evaluation counts (exact; bounded per run by max-eval-models and per lifetime by "
    "lifetime-eval-models and lifetime-calibration-values)"
)


def check_settings(settings: dict, privacy: OwnerPrivacy) -> None:
    """Refuse (sealed ``policy``), before any work, settings the state cannot be built from:
    the reason names the key, never an exception's text."""
    beta = settings.get("dirichlet-beta", 0.5)
    try:
        ok = math.isfinite(float(beta)) and float(beta) > 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(beta, bool):
        raise Refused("policy", f"dirichlet-beta={beta!r}: a finite number > 0")
    seed = settings.get("seed", 0)
    try:
        whole = not isinstance(seed, bool) and int(seed) == float(seed) >= 0  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise Refused("policy", f"seed={seed!r}: a whole number >= 0")
    reg = str(settings.get("regulariser", "kl"))
    kind = REGISTRY.get(reg)
    if privacy.dp_stats and (kind is None or not kind.privately_releasable):
        raise Refused(
            "policy",
            f"regulariser={reg} keeps real samples and has no DP release; this owner "
            f"(node-config stats-epsilon) answers regulariser="
            f"{names_where(lambda k: k.privately_releasable)}",
        )
    if privacy.dp_teacher and str(settings.get("scenario")) == "dfzsl":
        raise Refused(
            "policy",
            "scenario dfzsl's cosine teacher has no DP-SGD training yet; an owner with "
            "teacher-epsilon answers the AZSL scenarios",
        )


def owner_state(
    settings: dict,
    partition_id: int,
    num_partitions: int,
    privacy: OwnerPrivacy | None = None,
    train: bool = True,
) -> OwnerState:
    """Load this owner's data and teacher (train it once; reuse from memory or disk cache).

    ``privacy`` (the owner's node config): a DP-SGD teacher and/or DP statistics, each
    made once and kept in the cache with what it spent, so a restarted owner never
    releases again with fresh noise. ``train=False`` (every message but set-up): only
    what the cache holds; :func:`no_teacher` is raised where it holds no teacher or DP
    release for these settings, so no such message makes the owner train or release."""
    privacy = privacy or OwnerPrivacy()
    check_settings(settings, privacy)
    data = _load_data(settings, partition_id, num_partitions)
    keys = _keys(data, settings, privacy, partition_id)
    cache = resolve_cache_dir(settings.get("cache-dir"))
    path = cache / f"teacher-{keys.teacher}.pt"
    memory = f"{cache}|{keys.state}"  # one process may serve owners with other caches
    cached = _STATE.get(memory)
    # a set-up makes sure its teacher is on disk (a restarted owner needs it there)
    if cached is not None and cached.privacy == privacy and (not train or path.is_file()):
        return cached
    device = resolve_device(str(settings.get("device", "auto")))
    mechanisms: dict[str, dp.Mechanism] = {}
    teacher, spent = _make_teacher(data, settings, privacy, partition_id, path, device, train)
    if teacher is None:  # train=False and the cache holds none (never made, or pruned)
        raise no_teacher()
    if spent is not None:
        mechanisms["teacher"] = spent
    teacher.eval()
    reg = _regulariser(data, settings, privacy, cache, keys.stats, train, mechanisms)
    classes = data.covered_classes
    oracle = FeedbackOracle(teacher, classes, data.num_classes, reg.to(device), device)
    while len(_STATE) >= 8:  # a simulation process may serve several owners: bound memory
        _STATE.pop(next(iter(_STATE)))
    _STATE[memory] = OwnerState(data, oracle, path, privacy, mechanisms, keys.state)
    return _STATE[memory]


def _load_data(settings: dict, partition_id: int, num_partitions: int) -> OwnerData:
    """This owner's share of the dataset the settings name, split as they ask."""
    return load_owner_data(
        str(settings["dataset"]),
        str(settings.get("data-dir", "")),
        str(settings.get("feature-file", "res101.mat")),
        str(settings["teacher"]),
        partition_id,
        num_partitions,
        partition=str(settings.get("partition", "iid")),
        seed=int(settings.get("seed", 0)),
        dirichlet_beta=float(settings.get("dirichlet-beta", 0.5)),
        owner_classes=str(settings.get("owner-classes", "")),
        split=str(settings.get("split", "test")),
    )


@dataclass(frozen=True)
class _Keys:
    """What the owner's state is cached by: the teacher file, the whole state (teacher,
    regulariser, DP settings) and the DP statistics release ("" without one)."""

    teacher: str
    state: str
    stats: str


def _keys(data: OwnerData, settings: dict, privacy: OwnerPrivacy, partition_id: int) -> _Keys:
    """The cache keys of these settings (their values are those of the cache's file names:
    changing them would retrain every cached teacher)."""
    teacher_cfg = {k: settings.get(k) for k in TEACHER_KEYS}
    cosine = str(settings.get("scenario")) == "dfzsl"  # DFZSL's cosine teacher, not the MLP
    if cosine:  # only then in the key: cached MLP teachers keep their keys
        teacher_cfg["cosine-temperature"] = float(settings["dfzsl-temperature"])
    fp = privacy.fingerprint()
    dp_teacher = {k: fp[k] for k in fp if k.startswith(("teacher_e", "teacher_d", "dp_"))}
    if privacy.dp_teacher:
        teacher_cfg["dp"] = dp_teacher
    if privacy.teacher_network != "mlp" and not cosine:  # mlp teachers keep their keys
        teacher_cfg["network"] = privacy.teacher_network
    # a DP release depends on the owner's data and policy only: a service that varies its
    # seed or teacher settings must get the same release back, not a fresh draw of noise
    # to average away (nor a new spend). So those keys leave the key, and the DP teacher's
    # initial weights come from the owner's seed, its passes from dp-epochs.
    release_cfg = {k: v for k, v in teacher_cfg.items() if k not in SERVICE_CHOSEN}
    key = _digest(data, release_cfg if privacy.dp_teacher else teacher_cfg, partition_id)
    reg_name = str(settings.get("regulariser", "kl"))
    stats_cfg = f"{privacy.stats_epsilon}-{privacy.stats_clip}-{privacy.teacher_delta}"
    state_key = f"{key}-{reg_name}-{stats_cfg if privacy.dp_stats else 'exact'}"
    stats_key = ""
    if privacy.dp_stats:  # the statistics depend on the data and the release settings only
        stats_release = {k: v for k, v in release_cfg.items() if k not in ("dp", "network")}
        stats_key = _digest(data, stats_release, partition_id) + f"-{stats_cfg}"
    return _Keys(key, state_key, stats_key)


def _make_teacher(
    data: OwnerData,
    settings: dict,
    privacy: OwnerPrivacy,
    partition_id: int,
    path: Path,
    device: torch.device,
    train: bool,
) -> tuple[torch.nn.Module | None, dp.Mechanism | None]:
    """The teacher (cosine for dfzsl, DP-SGD with ``teacher-epsilon``, else the MLP) from
    the cache or trained, and what a DP teacher spent."""
    classes = data.covered_classes
    seed = (0 if privacy.dp_teacher else int(settings.get("seed", 0))) + 7919 * partition_id
    # The teacher's initial weights and dropout draw from a generator seeded here, not from
    # whatever the process ran before: the same teacher under `flwr run`, the Python
    # launchers and in-process tests, and the process's own RNG left as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if str(settings.get("scenario")) == "dfzsl":
            teacher = train_cosine_teacher(
                data.train_x,
                np.searchsorted(classes, data.train_y),
                classes.size,
                float(settings["dfzsl-temperature"]),
                device,
                path,
                epochs=int(settings.get("teacher-epochs", 40)),
                lr=float(settings.get("lr-teacher", 1e-3)),
                seed=seed,
                train=train,
            )
            return teacher, None
        if privacy.dp_teacher:
            with release_lock(path.parent):  # concurrent messages make one release, not two
                return _teacher(data, classes, device, path, settings, seed, privacy, train)
        return _teacher(data, classes, device, path, settings, seed, privacy, train)


def _regulariser(
    data: OwnerData,
    settings: dict,
    privacy: OwnerPrivacy,
    cache: Path,
    stats_key: str,
    train: bool,
    mechanisms: dict[str, dp.Mechanism],
) -> Regulariser:
    """The asked regulariser: from its DP release with ``stats-epsilon`` (what it spent
    goes into ``mechanisms``), else from the owner's features."""
    kind = regulariser_kind(str(settings.get("regulariser", "kl")))
    if privacy.dp_stats and kind.reads_data:  # check_settings refused those without a release
        with release_lock(cache):
            reg, mechanisms["stats"] = _dp_statistics(
                kind.load(), data, cache, stats_key, privacy, train
            )
        return reg
    return make_regulariser(kind.name, data.train_x, data.train_y, int(settings.get("seed", 0)))


# Run-config keys the service chooses freely (TEACHER_KEYS): never part of a DP release's key.
SERVICE_CHOSEN = ("seed", "teacher-epochs", "lr-teacher")


def _digest(data: OwnerData, cfg: dict[str, Any], partition_id: int) -> str:
    blob = json.dumps([data.fingerprint, cfg, partition_id], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def teacher_weights(state: OwnerState) -> dict[str, np.ndarray]:
    return state_to_numpy(state.oracle.teacher)


def _teacher(
    data: OwnerData,
    classes: np.ndarray,
    device: torch.device,
    path: Path,
    settings: dict,
    seed: int,
    privacy: OwnerPrivacy,
    train: bool = True,
) -> tuple[torch.nn.Module | None, dp.Mechanism | None]:
    """The owner's teacher from its disk cache, or trained on its data and cached; with
    ``teacher-epsilon``, trained with DP-SGD (Opacus), and what it spent beside it.
    ``train=False``: only from the cache ((None, None) when it holds none)."""
    teacher = teacher_network(privacy.teacher_network, data.dim, classes.size).to(device)
    spent_path = path.with_suffix(".dp.json")
    try:
        spent = _read_mechanism(spent_path) if privacy.dp_teacher else None
        with open_private(path) as fh:
            teacher.load_state_dict(torch.load(fh, map_location=device, weights_only=True))
        return teacher, spent
    except FileNotFoundError:
        if not train:
            return None, None
    local = np.searchsorted(classes, data.train_y)
    x = torch.from_numpy(data.train_x).to(device)
    epochs = int(settings.get("teacher-epochs", 40))
    lr = float(settings.get("lr-teacher", 1e-3))
    spent = None
    if privacy.dp_teacher:
        n, delta = int(local.size), privacy.delta(int(local.size))
        plan = dp.planned_teacher(
            privacy.teacher_epsilon, delta, n, privacy.dp_batch_size, privacy.dp_epochs
        )
        _within_limit(path.parent, privacy, plan, delta)
        spent = dp.train_dp_teacher(
            teacher,
            x,
            torch.from_numpy(local).to(device),
            epsilon=privacy.teacher_epsilon,
            delta=delta,
            epochs=privacy.dp_epochs,
            batch_size=privacy.dp_batch_size,
            max_grad_norm=privacy.dp_clip,
            lr=privacy.dp_lr,
            seed=secrets.randbits(63),  # DP noise and sampling: never the service's seed
        )
    else:
        fit(
            teacher,
            x,
            torch.from_numpy(local).to(device),
            F.cross_entropy,
            epochs=epochs,
            lr=lr,
            batch_size=128,
            seed=seed,
            weight_decay=1e-5,
        )
    if spent is not None:  # first: a teacher file without its spend is trained again
        blob = json.dumps(asdict(spent)).encode()
        write_private(spent_path, lambda fh: fh.write(blob))
    # owner-readable only (a teacher is private too), atomic: never half a file
    write_private(path, lambda fh: torch.save(teacher.state_dict(), fh))
    return teacher, spent
