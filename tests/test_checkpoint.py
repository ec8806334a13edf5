"""A ServerApp that dies mid-run resumes from its checkpoint and ends where it would have."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import ConfigError, parse_run_config
from simulations.run.inprocess import InProcessGrid
from strategies.server_app import run_azsl
from tests.conftest import FAST

ROUNDS = 6


class DyingGrid(InProcessGrid):
    """The service process 'dies' when it sends the generator round ``die_at``."""

    def __init__(self, owners: int, cfg: dict, die_at: int) -> None:
        super().__init__(client_app, owners, cfg)
        self.die_at, self.generator_rounds = die_at, 0

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "query.feedback":
            self.generator_rounds += 1
            if self.generator_rounds == self.die_at:
                raise KeyboardInterrupt("the ServerApp was stopped")
        return super().push_messages(messages)


def _cfg(tmp_path: Path, **extra: object) -> dict:
    return {
        **FAST,
        "rounds": ROUNDS,
        "output-dir": str(tmp_path / "out"),
        "cache-dir": str(tmp_path / "cache"),
        **extra,
    }


def _run(cfg: dict, grid: InProcessGrid | None = None) -> tuple[dict, Path]:
    grid = grid or InProcessGrid(client_app, 2, cfg)
    results, folder = run_azsl(grid, parse_run_config(cfg), run_id=grid.run_id)
    return results, Path(folder)


@pytest.mark.parametrize("scenario", ["whitebox", "blackbox"])
def test_a_stopped_service_resumes_where_it_stopped(tmp_path, scenario):
    ref, ref_dir = _run(_cfg(tmp_path / "ref", scenario=scenario))
    assert ref["resumed_from_round"] is None

    cfg = _cfg(tmp_path / "crash", scenario=scenario)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, DyingGrid(2, cfg, die_at=4))
    saved = list((tmp_path / "crash" / "out" / "checkpoints").glob("azsl-*.pt"))
    assert len(saved) == 1 and not list((tmp_path / "crash" / "out").glob("*/results.json"))

    resumed, folder = _run(cfg)
    assert resumed["resumed_from_round"] == 4
    assert [h["round"] for h in resumed["history"]] == list(range(1, ROUNDS + 1))
    assert resumed["round_trips"] == ref["round_trips"] - 3  # rounds 1-3 were not asked again
    # the same generator, bit for bit, as the run that was never stopped
    ref_g = torch.load(ref_dir / "generator.pt", weights_only=True)
    new_g = torch.load(folder / "generator.pt", weights_only=True)
    assert all(torch.equal(ref_g[k], new_g[k]) for k in ref_g)
    assert resumed["student"] == ref["student"]
    assert not saved[0].exists()  # a finished run leaves nothing to resume


def test_only_the_same_settings_resume(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, DyingGrid(2, cfg, die_at=3))
    other, _ = _run({**cfg, "seed": 1})  # other settings: a fresh run beside the checkpoint
    assert other["resumed_from_round"] is None
    (checkpoint,) = (tmp_path / "out" / "checkpoints").glob("azsl-*.pt")
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="delete it or set resume='never'"):
        _run(cfg)
    assert checkpoint.read_bytes() == b"not a checkpoint"  # nothing is lost
    checkpoint.write_bytes(good)
    fresh, _ = _run({**cfg, "resume": "never"})  # asked to start over: it does
    assert fresh["resumed_from_round"] is None and fresh["round_trips"] == other["round_trips"]
