"""Run configuration: defaults, pyproject mirror, and rejection of bad values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from azsl_flower.common import modes
from azsl_flower.common.config import (
    CHOICES,
    DEFAULTS,
    POSITIVE,
    ConfigError,
    parse_owner_classes,
    parse_run_config,
)
from azsl_flower.owner import data, oracle, partition
from azsl_flower.wire import crypto

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.fixture(scope="module")
def flwr_config() -> dict:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_defaults_parse():
    cfg = parse_run_config(None)
    assert cfg.as_dict() == DEFAULTS
    assert parse_run_config({}) == cfg
    assert cfg.scenario.whitebox  # default scenario is whitebox


def test_pyproject_has_every_default_key(flwr_config):
    assert sorted(set(DEFAULTS) - set(flwr_config)) == []


def test_pyproject_has_no_unknown_key(flwr_config):
    assert sorted(set(flwr_config) - set(DEFAULTS)) == []


def test_pyproject_values_equal_defaults(flwr_config):
    for key in sorted(set(DEFAULTS) & set(flwr_config)):
        assert flwr_config[key] == DEFAULTS[key], key
        assert type(flwr_config[key]) is type(DEFAULTS[key]), key


def test_pyproject_table_parses_like_defaults(flwr_config):
    # what `flwr run .` passes without overrides must give the default configuration
    cfg = parse_run_config(flwr_config).as_dict()
    assert {k: cfg[k] for k in flwr_config} == {k: DEFAULTS[k] for k in flwr_config}


def test_overrides_are_coerced():
    cfg = parse_run_config({"rounds": "3", "alpha": 2, "lr-student": "0.01", "seed": 4.0})
    assert cfg.rounds == 3 and type(cfg.rounds) is int
    assert cfg.alpha == 2.0 and type(cfg.alpha) is float
    assert cfg.lr_student == pytest.approx(0.01)
    assert cfg.seed == 4 and type(cfg.seed) is int


def test_unknown_key():
    with pytest.raises(ConfigError, match="epochs"):
        parse_run_config({"epochs": 3})


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_bad_choice(key):
    with pytest.raises(ConfigError, match=rf"{key}='bogus'.*{CHOICES[key][0]}"):
        parse_run_config({key: "bogus"})


@pytest.mark.parametrize("key", POSITIVE)
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive(key, value):
    with pytest.raises(ConfigError, match=rf"{key}=.*must be > 0"):
        parse_run_config({key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [("rounds", "many"), ("rounds", 2.5), ("alpha", "strong"), ("batch-size", None)],
)
def test_bad_type(key, value):
    with pytest.raises(ConfigError, match=rf"{key}=.*expected"):
        parse_run_config({key: value})


def test_negative_alpha():
    with pytest.raises(ConfigError, match="alpha"):
        parse_run_config({"alpha": -0.5})
    assert parse_run_config({"alpha": 0}).alpha == 0.0  # zero switches R off: allowed


@pytest.mark.parametrize("value", [0, -0.5, 1.5, "nan"])
def test_quorum_is_a_fraction(value):
    with pytest.raises(ConfigError, match=r"quorum=.*\(0, 1\]"):
        parse_run_config({"quorum": value})
    assert parse_run_config({"quorum": 1}).quorum == 1.0


def test_xlsa17_needs_data_dir():
    with pytest.raises(ConfigError, match="data-dir"):
        parse_run_config({"dataset": "xlsa17"})
    cfg = parse_run_config({"dataset": "xlsa17", "data-dir": "/some/where"})
    assert cfg.data_dir == "/some/where"


def test_weights_scenario_rejects_mmd():
    with pytest.raises(ConfigError, match=r"scenario=weights.*regulariser=mmd"):
        parse_run_config({"scenario": "weights", "regulariser": "mmd"})
    assert parse_run_config({"scenario": "weights", "regulariser": "kl"}).scenario.whitebox
    assert not parse_run_config({"scenario": "blackbox", "regulariser": "mmd"}).scenario.whitebox


@pytest.mark.parametrize("device", ["gpu", "cuda0", ""])
def test_bad_device(device):
    with pytest.raises(ConfigError, match="device"):
        parse_run_config({"device": device})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_good_device(device):
    assert parse_run_config({"device": device}).device == device


def test_owner_settings_are_config_values():
    cfg = parse_run_config({"teacher": "inductive", "alpha": 0.5})
    s = cfg.owner_settings()
    assert s["teacher"] == "inductive" and s["alpha"] == 0.5
    assert set(s) <= set(DEFAULTS)
    # everything the owner's cached teacher depends on travels with each request
    assert {"dataset", "data-dir", "feature-file", "teacher-epochs", "lr-teacher", "seed"} <= set(s)


# ---------------------------------------------------------------------------------------
# Partitions and ensemble weighting
# ---------------------------------------------------------------------------------------


def test_partition_defaults_keep_the_old_behaviour():
    cfg = parse_run_config(None)
    assert cfg.partition == "iid" and cfg.ensemble_weighting == "coverage"
    assert cfg.dirichlet_beta == 0.5 and cfg.owner_classes == ""


def test_partition_keys_reach_the_owners():
    s = parse_run_config({"partition": "dirichlet", "dirichlet-beta": 0.1}).owner_settings()
    assert s["partition"] == "dirichlet" and s["dirichlet-beta"] == 0.1
    assert "owner-classes" in s
    # the combination rule is the service's business, owners never need it
    assert "ensemble-weighting" not in s


@pytest.mark.parametrize("beta", [0, -0.5, float("inf"), float("nan")])
def test_dirichlet_beta_must_be_positive_and_finite(beta):
    with pytest.raises(ConfigError, match="dirichlet-beta"):
        parse_run_config({"partition": "dirichlet", "dirichlet-beta": beta})


def test_explicit_partition_needs_owner_classes():
    with pytest.raises(ConfigError, match="partition=explicit needs owner-classes"):
        parse_run_config({"partition": "explicit"})
    cfg = parse_run_config({"partition": "explicit", "owner-classes": "0,1,2;3,4;5-9"})
    assert cfg.owner_classes == "0,1,2;3,4;5-9"


def test_owner_classes_without_explicit_partition_is_refused():
    with pytest.raises(ConfigError, match="only read with partition=explicit"):
        parse_run_config({"owner-classes": "0-4;5-9"})


def test_parse_owner_classes():
    assert parse_owner_classes("0,1,2;3,4;5-9") == [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9]]
    assert parse_owner_classes(" 2 , 0-1 ; 1,1 ") == [[0, 1, 2], [1]]  # spaces, repeats
    assert parse_owner_classes("7") == [[7]]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0,1;;2", r"group 2 is empty"),
        ("0,1;2,3;", r"group 3 is empty"),
        ("0,a;2", r"group 1 .*'a' is not a class index"),
        ("0;5-3", r"group 2: bad class index or range '5-3'"),
        ("0;-1", r"group 2 .*'-1' is not a class index"),
        ("0;1-2-3", r"'1-2-3' is not a class index"),
        ("0;1.5", r"'1.5' is not a class index"),
        ("0-99999999", r"bad class index or range"),
    ],
)
def test_bad_owner_classes_are_refused_with_the_fix(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_owner_classes(spec)
    with pytest.raises(ConfigError, match="owner-classes"):
        parse_run_config({"partition": "explicit", "owner-classes": spec})


@pytest.mark.parametrize(
    ("raw", "value"), [("false", False), ("True", True), ("0", False), (1, True)]
)
def test_switches_take_true_false(raw, value):
    assert parse_run_config({"verification": raw}).verification is value


def test_a_misspelt_switch_is_refused_not_read_as_false():
    with pytest.raises(ConfigError, match=r"verification='no': expected bool"):
        parse_run_config({"verification": "no"})


def test_pyproject_table_is_generated_from_defaults(monkeypatch):
    from azsl_flower.common import pyproject_sync

    root = Path(__file__).resolve().parents[1]
    text = (root / "pyproject.toml").read_text()
    assert pyproject_sync.synced(text) == text  # the committed table is the generated one
    monkeypatch.setitem(pyproject_sync.DEFAULTS, "feature-step", 0.5)  # a changed default
    assert "feature-step = 0.5\n" in pyproject_sync.synced(text) != text


def test_each_option_list_is_written_once():
    """Config validation reads the list the implementation checks against (issue 22): a copy
    in CHOICES would drift, and the run config would accept what the code refuses."""
    assert CHOICES["regulariser"] is modes.REGULARISERS is oracle.REGULARISERS
    assert CHOICES["regulariser-answer"] is modes.REGULARISER_ANSWERS
    assert CHOICES["encryption"] is crypto.SUITES
    assert partition.PARTITIONS is CHOICES["partition"] and data.SPLITS is CHOICES["split"]


def test_every_regulariser_and_suite_the_config_accepts_is_implemented():
    """What parse_run_config lets through, the owner's oracle builds and a channel speaks."""
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    y = np.repeat(np.arange(3), 4)
    for name in CHOICES["regulariser"]:
        parse_run_config({"regulariser": name})
        oracle.make_regulariser(name, x, y)
    me, peer = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    for suite in CHOICES["encryption"]:
        parse_run_config({"encryption": suite})
        assert crypto.Channel(me, peer.public_key(), 1, suite).suite == suite
