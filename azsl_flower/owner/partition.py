"""Simulated owners out of one dataset: who holds which classes and which samples.

A deployed owner holds its own data; in simulation each SuperNode (``partition-id`` of
``num-partitions``) takes a share of one dataset by the run's ``partition`` rule. Train
and test splits follow the same rule, so an owner is tested on the classes it holds.
"""

from __future__ import annotations

import numpy as np

from azsl_flower.common.config import CHOICES, owner_groups, parse_owner_classes
from azsl_flower.common.semantics import DataError

__all__ = [
    "PARTITIONS",
    "class_holders",
    "deal_samples",
    "describe_partition",
    "dirichlet_proportions",
    "owner_slice",
]

PARTITIONS = CHOICES["partition"]  # how simulated owners share one dataset
PARTITION_STREAM = 0x0A2B  # keeps partition draws apart from other uses of the run seed
IID_SEED = 1  # the iid deal's fixed shuffle (seed-independent, so old runs reproduce)


def owner_slice(idx: np.ndarray, partition_id: int, num_partitions: int) -> np.ndarray:
    """IID share of a split for one owner: a fixed shuffle dealt round-robin."""
    if num_partitions == 1:
        return idx
    perm = np.random.default_rng(IID_SEED).permutation(idx)
    return np.sort(perm[partition_id::num_partitions])


def _partition_rng(seed: int, stream: int) -> np.random.Generator:
    """Independent, reproducible draws per purpose, all from the run seed."""
    return np.random.default_rng([int(seed), PARTITION_STREAM, stream])


def class_holders(
    partition: str,
    num_partitions: int,
    seen: np.ndarray,
    unseen: np.ndarray,
    num_classes: int,
    seed: int = 0,
    owner_classes: str = "",
) -> np.ndarray:
    """Owners x classes: which owners may hold samples of a class.

    iid and dirichlet: every owner (the sample split decides). class-disjoint: seen and unseen
    classes are each shuffled with the run seed and dealt round-robin, the unseen deal going
    on where the seen one stopped so owners end up with about as many classes each.
    explicit: the owner-classes groups, checked against the federation and the class list.
    """
    held = np.zeros((num_partitions, num_classes), dtype=bool)
    if partition in ("iid", "dirichlet"):
        held[:] = True
    elif partition == "class-disjoint":
        rng = _partition_rng(seed, 0)
        order = np.concatenate([rng.permutation(seen), rng.permutation(unseen)]).astype(np.int64)
        held[np.arange(order.size) % num_partitions, order] = True
    elif partition == "explicit":
        groups = owner_groups(owner_classes, num_partitions, num_classes, DataError)
        for o, g in enumerate(groups):
            held[o, g] = True
        nobody = np.flatnonzero(~held.any(0)).tolist()
        if nobody:
            raise DataError(
                f"class(es) {nobody} belong to no owner in owner-classes={owner_classes!r}; "
                f"list every class 0..{num_classes - 1} (seen and unseen) in at least one group, "
                "or their test images would never be evaluated"
            )
    else:
        raise DataError(f"unknown partition {partition!r}; choose one of {list(PARTITIONS)}.")
    return held


def dirichlet_proportions(
    num_partitions: int, num_classes: int, beta: float, seed: int = 0
) -> np.ndarray:
    """Classes x owners: each class's share per owner, ~ Dirichlet(beta) (small beta: skewed)."""
    if not (np.isfinite(beta) and beta > 0):
        raise DataError(f"dirichlet-beta={beta!r} must be a finite number > 0")
    p = _partition_rng(seed, 1).dirichlet(np.full(num_partitions, float(beta)), size=num_classes)
    p = np.nan_to_num(p)
    total = p.sum(1, keepdims=True)
    return np.divide(p, total, out=np.full_like(p, 1.0 / num_partitions), where=total > 0)


def deal_samples(
    idx: np.ndarray,
    labels: np.ndarray,
    partition: str,
    held: np.ndarray,
    proportions: np.ndarray | None = None,
    seed: int = 0,
    stream: int = 0,
) -> np.ndarray:
    """The owner of every sample of one split (aligned with ``idx``; -1: nobody).

    iid: the historical fixed shuffle dealt round-robin over all samples (seed-independent, so
    the default reproduces earlier runs). dirichlet: per class, a seeded shuffle cut at the
    class's cumulative proportions. class-disjoint/explicit: per class, a seeded shuffle dealt
    round-robin over the owners holding it (one holder: it gets them all).
    """
    num_partitions = held.shape[0]
    owner = np.full(idx.size, -1, dtype=np.int64)
    if partition == "iid":
        for o in range(num_partitions):
            owner[np.isin(idx, owner_slice(idx, o, num_partitions))] = o
        return owner
    if partition == "dirichlet" and proportions is None:
        raise ValueError("partition=dirichlet needs the classes x owners proportions")
    rng = _partition_rng(seed, 2 + stream)
    y = labels[idx]
    for c in np.unique(y):
        pos = rng.permutation(np.flatnonzero(y == c))
        if partition == "dirichlet":
            cuts = np.round(np.cumsum(proportions[c])[:-1] * pos.size).astype(np.int64)
            owner[pos] = np.repeat(np.arange(num_partitions), np.diff([0, *cuts, pos.size]))
        else:
            who = np.flatnonzero(held[:, c])
            if who.size:
                owner[pos] = who[(np.arange(pos.size) + int(c)) % who.size]
    return owner


def describe_partition(partition: str, seed: int, dirichlet_beta: float, owner_classes: str) -> str:
    """What determines the split, for the data fingerprint (and so the teacher cache)."""
    if partition == "iid":
        return "iid"  # seed-independent
    if partition == "dirichlet":
        return f"dirichlet(beta={float(dirichlet_beta)!r},seed={int(seed)})"
    if partition == "explicit":
        groups = parse_owner_classes(owner_classes)
        return f"explicit({';'.join(','.join(map(str, g)) for g in groups)},seed={int(seed)})"
    return f"{partition}(seed={int(seed)})"
