"""The owner's DP releases on its disk: the release lock, what the cache holds, the limit.

A DP release (a DP-SGD teacher, a Gaussian release of the class statistics) is made once
and kept in the owner's cache beside what it spent (mode 0600,
:mod:`azsl_flower.owner.files`), so a restarted owner answers from it instead of releasing
again with fresh noise. Here: the lock that makes concurrent messages share one release,
every release the cache holds (for ``epsilon-limit`` and the declared lifetime spend), the
limit check, and the statistics release (of any regulariser whose registry line has a
``dp_release``: KL's). The DP teacher's training is in
:mod:`azsl_flower.owner.state` (with the non-private teacher's), the mechanisms and the
accountant in :mod:`azsl_flower.owner.dp`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from azsl_flower.owner import dp
from azsl_flower.owner.data import OwnerData
from azsl_flower.owner.files import open_private, private_dir, write_private
from azsl_flower.owner.oracle import Regulariser
from azsl_flower.owner.privacy import OwnerPrivacy
from azsl_flower.wire.errors import Refused

__all__ = ["no_teacher", "release_lock", "released"]


def no_teacher() -> Refused:
    """The refusal of a message that would need a teacher (or DP release) no set-up made."""
    return Refused(
        "policy",
        "no teacher for these settings: this owner trains only at set-up (send a set-up "
        "request with these settings first)",
    )


@contextmanager
def release_lock(cache: Path) -> Iterator[None]:
    """Hold the owner's DP-release lock: two messages handled at once (a SuperNode runs each
    in its own process) find the release the first one made instead of making a second."""
    private_dir(cache)
    fd = os.open(cache / "dp-release.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def released(cache: Path) -> list[dp.Mechanism]:
    """Every DP release this owner's cache holds: each DP teacher and each statistics
    release, whatever run or training set it was made for."""
    out = [_read_mechanism(p) for p in sorted(cache.glob("teacher-*.dp.json"))]
    for path in sorted(cache.glob("dpstats2-*.npz")):
        with open_private(path) as fh, np.load(fh) as saved:
            out.append(dp.Mechanism(**json.loads(str(saved["mechanism"]))))
    return out


def _read_mechanism(path: Path) -> dp.Mechanism:
    with open_private(path) as fh:
        return dp.Mechanism(**json.loads(fh.read()))


def _within_limit(cache: Path, privacy: OwnerPrivacy, new: dp.Mechanism, delta: float) -> None:
    """Refuse (sealed ``policy``) a new release that would take everything this owner has
    released past its ``epsilon-limit`` (composed by Opacus's RDP accountant, ε at this δ)."""
    if not math.isfinite(privacy.epsilon_limit):
        return
    before = released(cache)
    total = dp.epsilon_of([*before, new], delta)
    if total > privacy.epsilon_limit:
        raise Refused(
            "policy",
            f"a new DP release ({new.name}) would bring the ε of all {len(before) + 1} releases "
            f"of this owner to {total:.2f}, above its epsilon-limit={privacy.epsilon_limit:g}; "
            "it answers only runs on training sets it has already released for",
        )


def _dp_statistics(
    kind: type[Regulariser],
    data: OwnerData,
    cache: Path,
    stats_key: str,
    privacy: OwnerPrivacy,
    train: bool = True,
) -> tuple[Regulariser, dp.Mechanism]:
    """A regulariser with a DP release (its registry line's ``dp_release``: it is computed
    from class means and variances), built from those statistics released once with the
    Gaussian mechanism.

    The noise comes from the operating system, never from the run's seed (the service
    knows it), and the release is kept on disk: the owner answers from the same noisy
    statistics for good instead of releasing again (``train=False``: only from disk).
    """
    path = cache / f"dpstats2-{hashlib.sha256(stats_key.encode()).hexdigest()[:24]}.npz"
    delta = privacy.delta(int(data.train_y.size))
    try:
        with open_private(path) as fh, np.load(fh) as saved:
            mean, var = saved["mean"], saved["var"]
            mech = dp.Mechanism(**json.loads(str(saved["mechanism"])))
    except FileNotFoundError:
        if not train:
            raise no_teacher() from None
        z = dp.stats_noise_multiplier(privacy.stats_epsilon, delta)
        _within_limit(cache, privacy, dp.stats_mechanism(z, privacy.stats_clip), delta)
        rng = np.random.default_rng(secrets.randbits(128))
        mean, var, mech = dp.gaussian_class_stats(
            data.train_x, data.train_y, data.covered_classes, privacy.stats_clip, z, rng
        )
        blob = np.array(json.dumps(asdict(mech)))
        write_private(path, lambda fh: np.savez(fh, mean=mean, var=var, mechanism=blob))
    reg = kind.from_stats({"mean": mean, "var": var, "classes": data.covered_classes})
    return reg, mech
