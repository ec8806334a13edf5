"""Shared fixtures: the real data folder (skipped cleanly when absent) and a writer of tiny
synthetic folders in the xlsa17 layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# CI clones the repository with ../shared beside it; the real data lives in shared/data.
DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real(sub: str) -> Path:
    path = DATA_ROOT / sub
    if not path.is_dir():
        pytest.skip(
            f"real data not found at {path}: clone the repository with ../shared/data beside it "
            "(see shared/data/README.md)"
        )
    return path


@pytest.fixture(scope="session")
def caltech_dir() -> Path:
    path = _real("caltech101")
    if not (path / "effnetlite0.mat").is_file() or not (path / "att_splits.mat").is_file():
        pytest.skip(f"{path} lacks effnetlite0.mat or att_splits.mat")
    return path


@pytest.fixture(scope="session")
def xlsa17_root() -> Path:
    return _real("xlsa17")


@pytest.fixture
def fresh_table_cache(monkeypatch):
    """Isolate tests from data._TABLE_CACHE (the loader keeps one table in memory)."""
    from azsl_flower.owner import data

    monkeypatch.setattr(data, "_TABLE_CACHE", {})


@pytest.fixture
def write_xlsa17():
    """Factory writing a small xlsa17 folder with scipy.io.savemat.

    Classes 0..seen-1 are seen, the rest unseen; ``per_class`` samples each. Feature column 0
    holds the sample's 0-based index so tests can recover which rows a split picked. Labels,
    locations and the feature matrix follow the xlsa17 conventions (1-based, d x N).
    """
    import scipy.io

    def write(
        folder: Path,
        *,
        num_classes: int = 5,
        seen: int = 3,
        per_class: int = 10,
        dim: int = 4,
        tunseen: bool = False,
        features=None,
        labels=None,
        att_keys: dict | None = None,
        drop_att_keys: tuple[str, ...] = (),
        feature_file: str = "res101.mat",
    ) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        y = np.repeat(np.arange(num_classes), per_class)  # 0-based
        n = y.size
        x = rng.random((n, dim)).astype(np.float32)
        x[:, 0] = np.arange(n)
        trainval, test_seen, test_unseen, tu_train, tu_test = [], [], [], [], []
        for c in range(num_classes):
            idx = np.flatnonzero(y == c)
            cut = int(round(0.8 * idx.size))
            if c < seen:
                trainval += idx[:cut].tolist()
                test_seen += idx[cut:].tolist()
            else:
                test_unseen += idx.tolist()
                tu_train += idx[:cut].tolist()
                tu_test += idx[cut:].tolist()
        loc = {
            "trainval_loc": np.asarray(trainval),
            "test_seen_loc": np.asarray(test_seen),
            "test_unseen_loc": np.asarray(test_unseen),
        }
        if tunseen:
            loc["tunseen_train_loc"] = np.asarray(tu_train)
            loc["tunseen_test_loc"] = np.asarray(tu_test)
        att = rng.random((6, num_classes)).astype(np.float32)  # A x C
        names = np.empty((num_classes, 1), dtype=object)
        for c in range(num_classes):
            names[c, 0] = np.array([f"{c:03d}.class_{c}"])
        att_mat = {
            "att": att,
            "allclasses_names": names,
            **{k: (v + 1).reshape(-1, 1) for k, v in loc.items()},  # 1-based columns
        }
        att_mat.update(att_keys or {})
        for k in drop_att_keys:
            att_mat.pop(k)
        scipy.io.savemat(str(folder / "att_splits.mat"), att_mat)
        feat = x.T if features is None else features  # d x N
        lab = (y + 1).reshape(-1, 1) if labels is None else labels  # N x 1, 1-based
        scipy.io.savemat(str(folder / feature_file), {"features": feat, "labels": lab})
        return {"x": x, "y": y, "att": att, "loc": loc, "dir": folder}

    return write


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Teachers, keys and channel state written by tests never land in the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AZSL_CACHE_DIR", str(tmp_path_factory.mktemp("azsl-cache")))
        yield
