"""A regulariser is one class and one registry line (issue 22): a regulariser defined here,
registered in the test only, runs through the run config, the owner's state and oracle, its
DP statistics release and the service's rebuild in scenario weights, with no other file
edited. And the parts that read the run config take only their own settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from azsl_flower.common import regularisers
from azsl_flower.common.config import CHOICES, ConfigError, parse_run_config
from azsl_flower.common.regularisers import F32, I64, REGISTRY, RegulariserKind
from azsl_flower.owner.oracle import Regulariser, make_regulariser
from azsl_flower.owner.privacy import owner_privacy
from azsl_flower.owner.state import owner_state
from azsl_flower.service.checkpoint import Checkpointer, CheckpointSettings
from azsl_flower.wire.errors import Refused
from strategies.sources import _sent_regulariser
from tests.conftest import FAST

DIGITS_CLIP = 80.0  # digits rows are 64 pixels of 0..16: L2 norm mostly < 80


class MeanL2(Regulariser):
    """Test-only R: squared distance of each generated class mean to the owner's."""

    name: ClassVar[str] = "mean-l2"

    def __init__(self, mean: torch.Tensor, classes: torch.Tensor) -> None:
        self.mean, self.index = mean.float(), {int(c): i for i, c in enumerate(classes)}

    @classmethod
    def from_features(cls, x: np.ndarray, y: np.ndarray, seed: int = 0) -> MeanL2:
        classes = np.unique(y)
        mean = np.stack([x[y == c].mean(0) for c in classes])
        return cls(torch.from_numpy(mean), torch.from_numpy(classes))

    @classmethod
    def from_stats(cls, stats: dict[str, np.ndarray]) -> MeanL2:
        return cls(torch.from_numpy(stats["mean"]), torch.from_numpy(stats["classes"]))

    def stats(self) -> dict[str, np.ndarray]:
        classes = np.array(sorted(self.index, key=self.index.get), dtype=np.int64)
        return {"mean": self.mean.numpy(), "classes": classes}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        terms = [
            (x[y == c].mean(0) - self.mean[self.index[int(c)]]).pow(2).mean()
            for c in torch.unique(y).tolist()
            if int(c) in self.index
        ]
        return torch.stack(terms).mean() if terms else x.sum() * 0.0


def _register(monkeypatch: pytest.MonkeyPatch, dp_release: bool = False) -> None:
    """MeanL2's registry line; the run config's option list re-derived from the registry
    (it is derived once, when common/regularisers.py is imported)."""
    stats = (("mean", F32, 2), ("classes", I64, 1))
    kind = RegulariserKind("mean-l2", f"{__name__}:MeanL2", stats, dp_release=dp_release)
    monkeypatch.setitem(REGISTRY, kind.name, kind)
    monkeypatch.setitem(CHOICES, "regulariser", tuple(REGISTRY))


def _settings(tmp_path: Path, **over: object) -> dict:
    raw = {**FAST, "cache-dir": str(tmp_path / "cache"), "scenario": "blackbox"}
    return parse_run_config(raw | over).owner_settings()


def test_the_config_option_list_is_the_registry():
    """What the run config accepts is what the registry holds: not a copy of it."""
    assert CHOICES["regulariser"] is regularisers.REGULARISERS
    assert tuple(REGISTRY) == regularisers.REGULARISERS


def test_a_registered_regulariser_runs_through_config_owner_and_oracle(tmp_path, monkeypatch):
    _register(monkeypatch)
    parse_run_config({"regulariser": "mean-l2"})
    parse_run_config({"regulariser": "mean-l2", "scenario": "weights"})  # it has statistics
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    assert isinstance(make_regulariser("mean-l2", x, np.repeat(np.arange(3), 4)), MeanL2)
    settings = _settings(tmp_path, regulariser="mean-l2")
    st = owner_state(settings, 0, 1)
    assert isinstance(st.oracle.regulariser, MeanL2)
    assert "mean-l2 regulariser statistics" in st.spend(settings).not_covered
    y = np.repeat(st.data.covered_classes[:4], 8)
    pool = np.random.default_rng(1).normal(size=(y.size, st.data.dim)).astype(np.float32)
    out = st.oracle.feedback(pool, y, 16, whitebox=False, alpha=1.0)
    assert out["reg"].min() > 0 and np.abs(out["grad"]).max() > 0


def test_scenario_weights_rebuilds_a_registered_regulariser_from_its_statistics(monkeypatch):
    _register(monkeypatch)
    mean, classes = np.ones((2, 3), np.float32), np.array([4, 7])
    rebuilt = _sent_regulariser("mean-l2", {"reg_mean": mean, "reg_classes": classes})
    assert isinstance(rebuilt, MeanL2) and rebuilt.index == {4: 0, 7: 1}
    # the run's regulariser has no statistics: what an owner sends anyway is not used
    sent = {"reg_mean": mean, "reg_var": mean, "reg_classes": classes}
    assert type(_sent_regulariser("none", sent)) is Regulariser


def test_a_registered_regulariser_with_a_dp_release_is_answered_from_it(tmp_path, monkeypatch):
    policy = owner_privacy({"stats-epsilon": 1.0, "stats-clip": DIGITS_CLIP})
    _register(monkeypatch, dp_release=False)
    with pytest.raises(Refused, match="regulariser=mean-l2 .*no DP release.*kl or none"):
        owner_state(_settings(tmp_path, regulariser="mean-l2"), 0, 1, policy)
    _register(monkeypatch, dp_release=True)
    st = owner_state(_settings(tmp_path, regulariser="mean-l2"), 0, 1, policy)
    assert isinstance(st.oracle.regulariser, MeanL2) and "stats" in st.mechanisms
    exact = MeanL2.from_features(st.data.train_x, st.data.train_y).mean
    assert not torch.allclose(st.oracle.regulariser.mean, exact)  # the noisy release


def test_weights_refuses_a_registered_regulariser_without_statistics(monkeypatch):
    monkeypatch.setitem(REGISTRY, "keeps-rows", RegulariserKind("keeps-rows", "x:Y"))
    monkeypatch.setitem(CHOICES, "regulariser", tuple(REGISTRY))
    with pytest.raises(ConfigError, match="regulariser=keeps-rows .*use kl or none"):
        parse_run_config({"regulariser": "keeps-rows", "scenario": "weights"})


def test_checkpointer_reads_only_its_settings(tmp_path):
    """A Checkpointer is made from its own four values and the run's fingerprint."""
    cp = Checkpointer(CheckpointSettings(tmp_path, every=2, rounds=5, resume="never"), "f00d")
    assert cp.path == tmp_path / "azsl-f00d.pt"
    assert [r for r in range(1, 6) if cp.due(r)] == [2, 4, 5]
    cp.save(2, {"w": torch.zeros(1)}, {})
    assert cp.path.is_file() and cp.load() is None  # resume=never: start over
    cfg = parse_run_config({"output-dir": str(tmp_path / "out"), "checkpoint-every": 3})
    assert CheckpointSettings.from_config(cfg) == CheckpointSettings(
        tmp_path / "out" / "checkpoints", 3, cfg.rounds, cfg.resume
    )
