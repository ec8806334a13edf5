"""Shared fixtures and helpers: the real data folder (skipped cleanly when absent), a writer
of tiny synthetic xlsa17 folders, digits whose rows can be traced (``indexed_digits``), a
small digits job through the in-process grid (``run_digits``, ``FAST``), payloads of every
message kind (``make_payload``, ``KIND_CASES``) and owners that fail on cue (``FlakyGrid``).
Test modules import the helpers from ``tests.conftest``, never from each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config
from azsl_flower.wire.schema import KINDS
from simulations.run.inprocess import InProcessGrid
from strategies.server_app import run_azsl

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
def indexed_digits(monkeypatch, fresh_table_cache):
    """Digits whose feature column 0 is the sample index, so owners' rows and splits can be
    traced exactly (the digits images contain duplicates: rows alone cannot identify samples).
    Returns the real, unindexed table (its labels are the global labels of those indices)."""
    from azsl_flower.owner import data

    real = data.digits_table

    def table():
        t = real()
        t.features = np.hstack([np.arange(t.labels.size, dtype=np.float32)[:, None], t.features])
        return t

    monkeypatch.setattr(data, "digits_table", table)
    return real()


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


# ---------------------------------------------------------------------------------------
# Shared helpers (import them from tests.conftest)
# ---------------------------------------------------------------------------------------

FAST = {
    "rounds": 4,
    "steps-per-round": 3,
    "student-epochs": 3,
    "samples-per-class": 40,
    "teacher-epochs": 5,
}


def run_digits(tmp_path: Path, owners: int = 1, **overrides: object):
    """A small digits job through the in-process grid: (results, run folder, grid)."""
    cfg = {**FAST, "output-dir": str(tmp_path / "out"), "cache-dir": str(tmp_path / "cache")}
    cfg.update({k.replace("_", "-"): v for k, v in overrides.items()})
    grid = InProcessGrid(client_app, owners, cfg)
    results, folder = run_azsl(grid, parse_run_config(cfg), run_id=grid.run_id)
    return results, Path(folder), grid


PAYLOAD_SETTINGS = {"dataset": "digits", "alpha": 1.0, "teacher-epochs": 3}
KIND_CASES = [(name, d) for name in sorted(KINDS) for d in ("request", "reply")]


def _array(dtype: str, ndim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (5, 3)[:ndim] if ndim <= 2 else (2,) * ndim
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 100, shape).astype(dtype)


def _scalar(t: type):
    return {int: 7, float: 0.25, str: "s", bool: True}[t]


def make_payload(kind, direction, optional=True):
    spec = kind.request if direction == "request" else kind.reply
    fields = dict(spec.arrays)
    if optional:
        fields.update(spec.optional_arrays)
    arrays = {n: _array(dt, nd, i) for i, (n, (dt, nd)) in enumerate(sorted(fields.items()))}
    scalars = {n: _scalar(t) for n, t in spec.scalars.items()}
    weights = None
    if spec.weights == "required" or (spec.weights == "optional" and optional):
        weights = {
            "0.weight": np.ones((4, 3), dtype=np.float32),
            "0.bias": np.zeros(4, dtype=np.float32),
        }
    settings = dict(PAYLOAD_SETTINGS) if spec.settings else None
    return {"arrays": arrays, "scalars": scalars, "weights": weights, "settings": settings}


class FlakyGrid(InProcessGrid):
    """Owners that stop working mid-run: ``failing[node] = (after, mode)`` lets the node
    answer its first ``after`` messages, then answer with an error ('error', as a SuperNode
    whose ClientApp raised), never again ('silent', as a SuperNode that went away), or be
    away for ``offline_for`` seconds ('offline', as a restarting SuperNode: the SuperLink
    answers "node unavailable" and lists it again once it is back)."""

    CRASH = "<class 'OSError'>:<'owner crashed: disk full'>"  # real Flower's reason format

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: dict | None = None,
        failing: dict[int, tuple[int, str]] | None = None,
    ) -> None:
        super().__init__(client_app, num_nodes, run_config)
        self.failing = dict(failing or {})
        self.delivered: dict[int, int] = {}
        self.offline_for = 1.0  # 'offline': seconds a restarting SuperNode is away
        self.back_at: dict[int, float] = {}

    def get_node_ids(self) -> list[int]:
        now = time.monotonic()
        return [n for n in self.contexts if self.back_at.get(n, 0.0) <= now]

    def deliver(self, msg: Message) -> Message | None:
        node = msg.metadata.dst_node_id
        self.delivered[node] = self.delivered.get(node, 0) + 1
        after, mode = self.failing.get(node, (None, ""))
        if mode == "offline" and self.delivered[node] == after + 1:
            self.back_at[node] = time.monotonic() + self.offline_for  # it restarts now
        if self.back_at.get(node, 0.0) > time.monotonic():  # what the SuperLink answers
            return Message(
                Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node unavailable"), reply_to=msg
            )
        if mode != "offline" and after is not None and self.delivered[node] > after:
            if mode == "silent":
                return None
            return Message(Error(code=2, reason=self.CRASH), reply_to=msg)
        return super().deliver(msg)


def flwr_run(tmp_path: Path, run_config: str) -> tuple[dict, str]:
    """One real ``flwr run . --stream`` simulation (Flower's CLI, managed SuperLink, Ray),
    stopped afterwards: the one results.json it wrote, and its log."""
    from simulations.run.local_superlink import free_port, processes_of, stop

    flwr = Path(sys.executable).parent / "flwr"
    home = tmp_path / "flwr-home"  # outside the app folder: Flower bundles the app folder
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
        FLWR_LOCAL_CONTROL_API_PORT=str(free_port()),
        PATH=f"{flwr.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        AZSL_CACHE_DIR=str(tmp_path / "cache"),
    )
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    try:
        proc = subprocess.run(
            [
                str(flwr),
                "run",
                str(root),
                "--stream",
                "--run-config",
                f"{run_config} output-dir='{out}'",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        stop(str(home))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert not processes_of(str(home)), "local SuperLink still running"
    runs = list(out.glob("*/results.json"))
    assert len(runs) == 1, log[-4000:]
    return json.loads(runs[0].read_text()), log
