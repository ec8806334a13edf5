"""Encryption through the whole loop: what Flower carries, hostile relays, unknown keys."""

from __future__ import annotations

import numpy as np
import pytest

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import ConfigError, parse_run_config
from azsl_flower.wire import codec
from azsl_flower.wire.crypto import write_keypair
from simulations.run.inprocess import InProcessGrid
from strategies.azsl import OwnerError
from strategies.server_app import run_azsl
from tests.conftest import FAST, run_digits

LEARNS = {"rounds": 20, "steps_per_round": 10, "samples_per_class": 100, "student_epochs": 10}


def _only_ciphertext(msg) -> None:  # noqa: ANN001
    rd = msg.content
    assert list(rd.keys()) == [codec.ENVELOPE]
    assert not rd.config_records and not rd.metric_records
    for name, arr in rd.array_records[codec.ENVELOPE].items():
        assert arr.dtype == "uint8" and arr.stype == codec.RAW_BYTES, name
        assert name.split(".")[0] in ("header", "body")


def test_flower_messages_carry_only_ciphertext(tmp_path):
    results, _, grid = run_digits(tmp_path, owners=2, scenario="whitebox")
    assert grid.sent and grid.replies
    for msg in [*grid.sent, *grid.replies]:
        assert not msg.has_error()
        _only_ciphertext(msg)
    enc = results["encryption"]
    assert enc["suite"] == "aes-256-gcm"
    assert enc["ciphertext_bytes"] > enc["plaintext_bytes"] > 0
    assert results["rejected_messages"] == {} and results["retries"] == 0
    # the per-run simulation keys are gone once the run is over
    assert not list((tmp_path / "cache" / "keys").glob("run-*"))


def test_hostile_relay_is_caught_and_the_run_still_learns(tmp_path):
    clean, _, _ = run_digits(tmp_path, owners=2, **LEARNS)
    hostile, _, _ = run_digits(
        tmp_path, owners=2, fault_tamper=0.05, fault_replay=0.05, max_retries=4, **LEARNS
    )
    injected = sum(hostile["faults_injected"].values())
    rejected = sum(hostile["rejected_messages"].values())
    assert hostile["faults_injected"]["tamper"] > 0 and hostile["faults_injected"]["replay"] > 0
    assert rejected == injected  # every fault caught, nothing else refused
    assert {"replay", "authentication-failed"} <= set(hostile["rejected_messages"])
    assert hostile["retries"] >= 1 and hostile["round_trips"] > clean["round_trips"]
    assert len(hostile["rejections"]) == rejected
    # the same accuracy band as without a hostile relay
    assert clean["student"]["h"] > 0.5
    assert abs(hostile["student"]["h"] - clean["student"]["h"]) < 0.15


def _deployed_grid(tmp_path, allowed: list[str], owners: int = 2, **extra: object):
    """Keys from files, as at real institutions; only ``allowed`` owners are on the list."""
    keys = tmp_path / "keys"
    write_keypair(keys, "service")
    for i in range(owners):
        write_keypair(keys / "owners", f"owner-{i}")
    (keys / "allowed").mkdir()
    for name in allowed:
        (keys / "allowed" / f"{name}.pub").write_bytes(
            (keys / "owners" / f"{name}.pub").read_bytes()
        )
    raw = {
        **FAST,
        "output-dir": str(tmp_path / "out"),
        "cache-dir": str(tmp_path / "cache"),
        "service-key": str(keys / "service.key"),
        "owner-keys": str(keys / "allowed"),
        **extra,
    }
    grid = InProcessGrid(client_app, owners, raw)
    for i, ctx in enumerate(grid.contexts.values()):
        ctx.node_config["owner-key"] = str(keys / "owners" / f"owner-{i}.key")
        ctx.node_config["service-pub"] = str(keys / "service.pub")
    return grid, parse_run_config(raw)


def test_owner_with_an_unlisted_key_is_refused_and_dropped(tmp_path):
    grid, cfg = _deployed_grid(tmp_path, allowed=["owner-0"])
    results, _ = run_azsl(grid, cfg, run_id=grid.run_id)
    assert results["num_owners"] == 1
    assert results["federation"]["dropped_node_ids"] == [1001]
    # the unlisted owner found nothing sealed for its key; once the listed key was bound to
    # the other node, no key was left for it and it was dropped without another message
    assert results["rejected_messages"] == {"wrong-key": 1}
    assert set(results["per_owner_teacher"]) == {"1000"} and results["teacher"]["h"] > 0.5


def test_no_listed_owner_fails_clearly(tmp_path):
    grid, cfg = _deployed_grid(tmp_path, allowed=[])
    (tmp_path / "keys" / "allowed" / "stranger").mkdir()
    write_keypair(tmp_path / "keys" / "allowed", "stranger")
    with pytest.raises(OwnerError, match="no owner left"):
        run_azsl(grid, cfg, run_id=grid.run_id)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_fault_injection_is_refused_outside_simulation(tmp_path):
    grid, cfg = _deployed_grid(tmp_path, ["owner-0"], owners=1, **{"fault-tamper": 0.5})
    grid.contexts[1000].node_config.pop("partition-id")  # what a deployed SuperNode looks like
    with pytest.raises(ConfigError, match="simulations only"):
        run_azsl(grid, cfg, run_id=grid.run_id)
    raw = {**cfg.as_dict(), "encryption": "none"}
    with pytest.raises(ConfigError, match="need encryption"):
        run_azsl(grid, parse_run_config(raw), run_id=grid.run_id)


def test_sealed_payloads_are_not_readable_floats(tmp_path):
    """Generated features sent to owners must not appear in any byte string on the wire."""
    _, _, grid = run_digits(tmp_path, owners=1, rounds=1)
    feedback = [m for m in grid.sent if m.metadata.message_type == "query.feedback"]
    assert feedback
    body = feedback[0].content.array_records[codec.ENVELOPE]["body.0"].data
    floats = np.frombuffer(body[: len(body) // 4 * 4], dtype=np.float32)
    # ciphertext looks like noise: no run of sane, non-negative ReLU features
    sane = np.isfinite(floats) & (np.abs(floats) < 100) & (floats >= 0)
    assert sane.mean() < 0.6
