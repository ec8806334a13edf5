"""An owner's private features: the xlsa17 layout, the embedded digits default, splits.

:func:`load_owner_data` returns a data owner's private features, split for its teacher
setting and (in simulation) its partition. Only the owner side imports this module; what
the service may read (class names and semantic vectors) is
:func:`azsl_flower.common.semantics.load_class_side`, which never opens a features file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from azsl_flower.common.config import CHOICES
from azsl_flower.common.semantics import (
    DIGITS_NAMES,
    REQUIRED_SPLIT_KEYS,
    SEVEN_SEGMENT,
    DataError,
    _check_finite,
    _loadmat,
    _read_class_side,
    _require,
)
from azsl_flower.owner.partition import (
    PARTITIONS,
    class_holders,
    deal_samples,
    describe_partition,
    dirichlet_proportions,
    owner_slice,
)

__all__ = [
    "DIGITS_UNSEEN",
    "OwnerData",
    "SPLITS",
    "digits_table",
    "load_owner_data",
    "read_xlsa17",
    "validation_splits",
]

DIGITS_UNSEEN = (2, 5, 9)
DIGITS_VAL = (3, 7)  # seen classes held out as validation-unseen (val_loc)
SPLIT_SEED = 0  # the dataset split is part of the dataset, not of a run's seed
SPLITS = CHOICES["split"]  # the benchmark's classes, or its validation ones

SPLIT_KEYS = (
    "trainval_loc",
    "test_seen_loc",
    "test_unseen_loc",
    "train_loc",
    "val_loc",
    "tunseen_train_loc",
    "tunseen_test_loc",
)


@dataclass
class Table:
    """A whole dataset as read from disk: features N x d, 0-based labels, 0-based splits."""

    features: np.ndarray
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    names: list[str]
    att: np.ndarray  # C x A, one row per class
    source: str


@dataclass
class OwnerData:
    """One owner's private data, split for its teacher setting (all labels global, 0-based)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_seen_x: np.ndarray
    test_seen_y: np.ndarray
    test_unseen_x: np.ndarray
    test_unseen_y: np.ndarray
    seen_classes: np.ndarray
    unseen_classes: np.ndarray
    num_classes: int
    fingerprint: str

    @property
    def dim(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def covered_classes(self) -> np.ndarray:
        """Classes the teacher is trained on (its label coverage)."""
        return np.unique(self.train_y)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def read_xlsa17(data_dir: str | Path, feature_file: str = "res101.mat") -> Table:
    """Read an xlsa17 folder: ``feature_file`` + ``att_splits.mat`` (1-based indices)."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise DataError(f"data-dir {data_dir} does not exist or is not a folder.")
    names, att, split_mat = _read_class_side(data_dir / "att_splits.mat")
    _require(split_mat, REQUIRED_SPLIT_KEYS, data_dir / "att_splits.mat")
    feat_path = data_dir / feature_file
    fmat = _loadmat(feat_path, "features file")
    _require(fmat, ("features", "labels"), feat_path)
    labels = np.asarray(fmat["labels"]).ravel().astype(np.int64)
    feats = np.asarray(fmat["features"], dtype=np.float32)
    if feats.ndim != 2 or labels.size not in feats.shape:
        raise DataError(
            f"{feat_path}: 'features' has shape {feats.shape} but there are {labels.size} labels; "
            "expected d x N (or N x d)."
        )
    features = feats.T if feats.shape[0] != labels.size else feats
    if features.shape[0] == features.shape[1] == labels.size:
        features = feats.T  # xlsa17 stores d x N; ambiguous square case follows the layout
    _check_finite(features, str(feat_path))
    if labels.min() < 1 or labels.max() > len(names):
        raise DataError(
            f"{feat_path}: labels range {labels.min()}..{labels.max()} but att_splits.mat names "
            f"{len(names)} classes; labels must be 1-based class indices 1..{len(names)}."
        )
    splits: dict[str, np.ndarray] = {}
    for key in SPLIT_KEYS:
        if key in split_mat:
            loc = np.asarray(split_mat[key]).ravel().astype(np.int64)
            if loc.size and (loc.min() < 1 or loc.max() > labels.size):
                raise DataError(
                    f"{data_dir / 'att_splits.mat'}: {key} indexes {loc.min()}..{loc.max()} but "
                    f"the features file has {labels.size} samples (indices are 1-based)."
                )
            splits[key] = loc - 1
    return Table(features, labels - 1, splits, names, att, str(feat_path.resolve()))


def digits_table() -> Table:
    """scikit-learn's handwritten digits (shipped in its wheel), split like xlsa17."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    seen = [c for c in range(10) if c not in DIGITS_UNSEEN]
    splits: dict[str, list[int]] = {k: [] for k in SPLIT_KEYS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(0.8 * idx.size))
        if c in seen:
            splits["trainval_loc"] += idx[:cut].tolist()
            splits["test_seen_loc"] += idx[cut:].tolist()
            key = "val_loc" if c in DIGITS_VAL else "train_loc"
            splits[key] += idx[:cut].tolist()
        else:
            splits["test_unseen_loc"] += idx.tolist()
            splits["tunseen_train_loc"] += idx[:cut].tolist()
            splits["tunseen_test_loc"] += idx[cut:].tolist()
    names = list(DIGITS_NAMES)
    return Table(
        x,
        y,
        {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in splits.items()},
        names,
        SEVEN_SEGMENT.copy(),
        "sklearn:digits",
    )


# ---------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------


_TABLE_CACHE: dict[tuple, Table] = {}


def _table(dataset: str, data_dir: str, feature_file: str) -> Table:
    if dataset == "digits":
        key: tuple = ("digits",)
    elif dataset == "xlsa17":
        if not data_dir:
            raise DataError("dataset=xlsa17 needs data-dir (a folder in the xlsa17 layout).")
        fp = Path(data_dir).expanduser() / feature_file
        stat = fp.stat() if fp.exists() else None
        key = ("xlsa17", str(fp.resolve()), stat.st_mtime_ns if stat else 0)
    else:
        raise DataError(f"unknown dataset {dataset!r}; choose digits or xlsa17.")
    if key not in _TABLE_CACHE:  # owners answer many messages in one process: read once
        _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = (
            digits_table() if dataset == "digits" else read_xlsa17(data_dir, feature_file)
        )
    return _TABLE_CACHE[key]


def validation_splits(splits: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """xlsa17's validation protocol as a split: ``train_loc`` classes are seen, ``val_loc``
    classes play the unseen ones, and test classes are never touched.

    For choosing hyper-parameters without looking at test classes. Each train_loc class's
    images are dealt 80/20 into training and seen-test, each val class's 80/20 into the
    transductive teacher's share and unseen-test (inductive: all of them are unseen-test).
    """
    missing = [k for k in ("train_loc", "val_loc") if k not in splits or not splits[k].size]
    if missing:
        raise DataError(
            f"split=val needs {missing} in att_splits.mat (xlsa17's validation classes); "
            "this dataset has none: use split=test"
        )
    train, val = splits["train_loc"], splits["val_loc"]
    shared = np.intersect1d(labels[train], labels[val])
    if shared.size:
        raise DataError(f"train_loc and val_loc share class(es) {shared.tolist()}; not a ZSL split")
    seen_train, seen_test = _split_per_class(train, labels)
    val_train, val_test = _split_per_class(val, labels)
    return {
        "trainval_loc": seen_train,
        "test_seen_loc": seen_test,
        "test_unseen_loc": np.sort(val),
        "tunseen_train_loc": val_train,
        "tunseen_test_loc": val_test,
    }


def load_owner_data(
    dataset: str,
    data_dir: str = "",
    feature_file: str = "res101.mat",
    teacher: str = "transductive",
    partition_id: int = 0,
    num_partitions: int = 1,
    partition: str = "iid",
    seed: int = 0,
    dirichlet_beta: float = 0.5,
    owner_classes: str = "",
    split: str = "test",
) -> OwnerData:
    """An owner's private split. Transductive: trainval + tunseen_train; inductive: trainval.

    ``split=val``: the same on :func:`validation_splits` (test classes never loaded).

    With several simulated owners, ``partition`` decides who holds which samples (see
    :func:`class_holders` and :func:`split_owners`); train and test splits follow the same
    rule, so an owner is tested on the classes it holds, in about the proportions it holds.
    """
    _check_request(teacher, partition, partition_id, num_partitions, split)
    t = _table(dataset, data_dir, feature_file)
    s = t.splits if split == "test" else validation_splits(t.splits, t.labels)
    splits = _teacher_splits(s, t.labels, teacher)
    seen = np.unique(t.labels[s["trainval_loc"]])
    unseen = np.unique(t.labels[s["test_unseen_loc"]])
    if np.intersect1d(seen, unseen).size:
        raise DataError("trainval_loc and test_unseen_loc share classes; the split is not ZSL.")
    num_classes = len(t.names)
    held = class_holders(partition, num_partitions, seen, unseen, num_classes, seed, owner_classes)
    train, test_seen, test_unseen = _owner_share(
        splits, t.labels, partition, held, partition_id, num_partitions, seed, dirichlet_beta
    )
    if train.size == 0:
        raise _no_training_sample(partition, teacher, partition_id, num_partitions)
    described = describe_partition(partition, seed, dirichlet_beta, owner_classes)
    ident = f"{t.source}|{teacher}|{partition_id}/{num_partitions}|{described}|{t.features.shape}"
    if split != "test":  # the historical key for split=test, so cached teachers stay valid
        ident += f"|split={split}"
    h = hashlib.sha256(ident.encode())
    h.update(np.ascontiguousarray(t.features[train[:64]]).tobytes())
    return OwnerData(
        train_x=t.features[train],
        train_y=t.labels[train],
        test_seen_x=t.features[test_seen],
        test_seen_y=t.labels[test_seen],
        test_unseen_x=t.features[test_unseen],
        test_unseen_y=t.labels[test_unseen],
        seen_classes=seen,
        unseen_classes=unseen,
        num_classes=num_classes,
        fingerprint=h.hexdigest()[:16],
    )


def _check_request(
    teacher: str, partition: str, partition_id: int, num_partitions: int, split: str
) -> None:
    """The loader's arguments, refused before any file is opened."""
    if teacher not in ("transductive", "inductive"):
        raise DataError(f"unknown teacher setting {teacher!r}; choose transductive or inductive.")
    if partition not in PARTITIONS:
        raise DataError(f"unknown partition {partition!r}; choose one of {list(PARTITIONS)}.")
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id {partition_id} outside 0..{num_partitions - 1}.")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}.")


def _teacher_splits(
    s: dict[str, np.ndarray], labels: np.ndarray, teacher: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, test-seen and test-unseen indices of the whole dataset for a teacher setting:
    a transductive teacher also trains on part of the unseen classes' images
    (``tunseen_train_loc``) and is tested on the rest; an inductive one on seen classes only."""
    if teacher == "transductive":
        if "tunseen_train_loc" in s and "tunseen_test_loc" in s:
            tu_train, tu_test = s["tunseen_train_loc"], s["tunseen_test_loc"]
        else:  # documented fallback: 80/20 split of each unseen class's test images
            tu_train, tu_test = _split_per_class(s["test_unseen_loc"], labels)
        train = np.concatenate([s["trainval_loc"], tu_train])
        test_unseen = tu_test
    else:
        train, test_unseen = s["trainval_loc"], s["test_unseen_loc"]
    return train, s["test_seen_loc"], test_unseen


def _owner_share(
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    labels: np.ndarray,
    partition: str,
    held: np.ndarray,
    partition_id: int,
    num_partitions: int,
    seed: int,
    dirichlet_beta: float,
) -> list[np.ndarray]:
    """This owner's part of each split: every split is dealt by the same rule, so an owner
    is tested on the classes it holds, in about the proportions it holds."""
    num_classes = held.shape[1]  # held: owners x classes (class_holders)
    props = (
        dirichlet_proportions(num_partitions, num_classes, dirichlet_beta, seed)
        if partition == "dirichlet"
        else None
    )
    if partition == "iid":  # exactly the historical slices (sorted), so old runs reproduce
        return [owner_slice(idx, partition_id, num_partitions) for idx in splits]
    return [
        idx[deal_samples(idx, labels, partition, held, props, seed, k) == partition_id]
        for k, idx in enumerate(splits)
    ]


def _no_training_sample(
    partition: str, teacher: str, partition_id: int, num_partitions: int
) -> DataError:
    """Why an owner got no training sample under its partition, and what to change."""
    what = "seen classes" if teacher == "inductive" else "classes"
    fix = {
        "dirichlet": "raise dirichlet-beta or use fewer owners",
        "explicit": f"give every owner at least one of the {what} in owner-classes",
    }.get(partition, f"use at most as many owners as there are {what}")
    return DataError(
        f"owner {partition_id} of {num_partitions} gets no training sample under "
        f"partition={partition} with teacher={teacher}; {fix}"
    )


def _split_per_class(idx: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    a: list[np.ndarray] = []
    b: list[np.ndarray] = []
    for c in np.unique(labels[idx]):
        members = rng.permutation(idx[labels[idx] == c])
        cut = int(round(0.8 * members.size))
        a.append(members[:cut])
        b.append(members[cut:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))
