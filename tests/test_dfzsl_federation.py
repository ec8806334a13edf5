"""Scenario dfzsl end to end through real Flower Messages and the real ClientApp (digits,
in-process grid), and once through a real ``flwr run`` simulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config
from azsl_flower.wire import codec
from simulations.run.inprocess import InProcessGrid
from strategies.roster import OwnerError
from strategies.server_app import run_azsl
from tests.boundary import owner_modules_imported_by
from tests.conftest import flwr_run

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "scenario": "dfzsl",
    "teacher": "inductive",
    "teacher-epochs": 15,
    "student-epochs": 15,
    "dfzsl-probes": 200,
    "dfzsl-samples": 60,
    "dfzsl-kappa": "dfzsl",  # DFZSL's own rule: one round trip fewer than the default
    "tensorboard": False,
}


def _grid(tmp_path: Path, owners: int = 1, node: dict | None = None, **overrides: object):
    cfg = {**FAST, "output-dir": str(tmp_path / "out"), "cache-dir": str(tmp_path / "cache")}
    cfg.update({k.replace("_", "-"): v for k, v in overrides.items()})
    grid = InProcessGrid(client_app, owners, cfg)
    for ctx in grid.contexts.values():
        ctx.node_config.update(node or {})
    return grid, cfg


def _run(tmp_path: Path, owners: int = 1, node: dict | None = None, **overrides: object):
    grid, cfg = _grid(tmp_path, owners, node, **overrides)
    results, folder = run_azsl(grid, parse_run_config(cfg), run_id=grid.run_id)
    return results, Path(folder), grid


def _kinds(grid: InProcessGrid) -> list[str]:
    return [m.metadata.message_type for m in grid.sent]


def test_blackbox_dfzsl_learns_unseen_digits_in_four_round_trips(tmp_path):
    results, folder, grid = _run(tmp_path, owners=2, encryption="none")
    # set-up, one probe round trip, verification, evaluation
    assert results["round_trips"] == 4
    assert _kinds(grid).count("query.dfzsl_probe") == 2  # one message per owner
    assert results["scenario"] == "dfzsl" and (folder / "classifier.pt").is_file()
    method = results["method"]
    assert method["kappa_rule"] == "dfzsl" and method["kappa"] > 0
    assert 0 <= method["alignment_misfit"] < 1
    assert results["verification"]["kept"] > 0
    # unseen digits come only from aligned semantics: above chance (1/3) over the 3 unseen
    assert results["student"]["zsl"] > 0.34
    assert results["student"]["s"] > 0.6
    # probes are metered like any query: probes + verification per owner
    spc, seen = FAST["dfzsl-samples"], 7
    for q in results["federation"]["queries"].values():
        assert q["queries_used"] == FAST["dfzsl-probes"] + spc * seen
    # the owners released no head: no reply carries one, only logits on the probes
    for reply in grid.replies:
        for part in codec.unbundle(reply.content):
            arrays = part.array_records["arrays"]
            assert "cosine_head" not in arrays and "weights" not in part
            if reply.metadata.message_type == "query.dfzsl_probe":
                assert set(arrays) == {"logits"}
                assert arrays["logits"].numpy().shape == (FAST["dfzsl-probes"], seen)


def test_released_head_needs_no_probe_and_gives_the_same_directions(tmp_path):
    head, _, grid = _run(tmp_path / "h", node={"dfzsl-release-head": True}, dfzsl_directions="head")
    assert "query.dfzsl_probe" not in _kinds(grid) and head["round_trips"] == 3
    probed, _, _ = _run(tmp_path / "p")
    # 200 probes > 64 dimensions: black-box matching is exact, so the runs agree
    assert head["method"]["kappa"] == pytest.approx(probed["method"]["kappa"], rel=1e-3)


def test_head_mode_without_the_owners_consent_fails_clearly(tmp_path):
    with pytest.raises(OwnerError, match="dfzsl-release-head"):
        _run(tmp_path, dfzsl_directions="head")


def test_dimension_kappa_verifies_a_ladder_in_one_more_round_trip(tmp_path):
    results, _, grid = _run(tmp_path, dfzsl_kappa="dimension")
    assert results["round_trips"] == 5
    assert _kinds(grid).count("query.verify") == 2
    ladder = results["method"]["ladder"]
    rates = list(ladder.values())
    assert rates[-1] >= rates[0]  # tighter rungs are accepted at least as often
    assert results["method"]["expected_cosine"] > 0.04


def test_transductive_owner_directions_cover_the_unseen_digits(tmp_path):
    results, _, _ = _run(tmp_path, teacher="transductive")
    assert results["method"]["unseen_generated"] == 0  # every class has a direction
    assert results["student"]["h"] > 0.5


def test_budget_bounds_the_probes(tmp_path):
    with pytest.raises(OwnerError, match="dfzsl-probe"):
        _run(tmp_path, node={"query-budget": 100})


def test_owner_refuses_probes_outside_dfzsl(tmp_path):
    """An owner in another scenario does not answer a dfzsl probe (a policy refusal, no data)."""
    from azsl_flower.owner.handlers import Job, _dfzsl_probe
    from azsl_flower.owner.policy import OwnerPolicy
    from azsl_flower.wire import schema
    from azsl_flower.wire.errors import Refused

    grid, cfg = _grid(tmp_path)
    settings = parse_run_config({**cfg, "scenario": "blackbox"}).owner_settings()
    payload = schema.Payload(
        {"x": np.zeros((3, 64), np.float32)},
        {},
        None,
        settings,  # type: ignore[arg-type]
    )
    policy = OwnerPolicy.from_node_config(grid.contexts[1000].node_config)
    with pytest.raises(Refused, match="outside scenario=dfzsl") as info:
        _dfzsl_probe(Job(payload, settings, policy))
    assert info.value.code == "policy"


def test_service_side_dfzsl_imports_no_owner_module():
    """DFZSL's service side imports no owner module but the oracle (walked from the package)."""
    proc = owner_modules_imported_by("strategies.dfzsl", "azsl_flower.service.dfzsl.learner")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_flwr_run_dfzsl_simulation(tmp_path):
    """`flwr run . --run-config "scenario='dfzsl' ..."` on the managed local SuperLink."""
    results, log = flwr_run(
        tmp_path,
        "scenario='dfzsl' teacher='inductive' teacher-epochs=5 student-epochs=5 "
        "dfzsl-probes=128 dfzsl-samples=30",
    )
    assert results["scenario"] == "dfzsl" and results["num_owners"] == 2
    # the default dimension-aware kappa: set-up, probes, ladder, verification, evaluation
    assert results["round_trips"] == 5 and results["method"]["kappa_rule"] == "dimension"
