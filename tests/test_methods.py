"""A method is a plug-in (issue 22): the run-config ``method`` key picks one from the one
table (strategies/methods.py), or imports a plug-in; today's choice is the default; a bad
choice fails before anything is sent; AZSL's module never imports DFZSL's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import ConfigError, parse_run_config
from azsl_flower.common.semantics import load_class_side
from azsl_flower.wire import schema
from azsl_flower.wire.channels import ServiceSecurity
from simulations.run.inprocess import InProcessGrid
from strategies.methods import METHODS, auto_method, method_class
from strategies.server_app import run_azsl
from tests.conftest import FAST, run_digits
from tests.plugins.tiny_method import PER_CLASS

TINY = "tests.plugins.tiny_method:TinyMethod"
ROOT = Path(__file__).resolve().parents[1]


def test_plugin_method_runs_end_to_end_through_the_real_phases(tmp_path):
    results, folder, grid = run_digits(tmp_path, owners=2, method=TINY, tensorboard=False)
    kinds = [m.metadata.message_type for m in grid.sent]
    # set-up, one verification, one evaluation: two owners each, nothing else
    expected = [schema.SETUP, schema.VERIFY, schema.EVALUATE]
    assert kinds == [k.message_type for k in expected for _ in range(2)]
    assert results["round_trips"] == 3
    assert results["method"]["name"] == "tiny"
    fed = results["federation"]
    assert fed["contributors"] == dict.fromkeys(
        ["setup", "verification", "evaluation"], [1000, 1001]
    )
    # digits, transductive teachers (the default): every class is trainable
    trainable = len(fed["seen_classes"]) + len(fed["unseen_classes"])
    assert results["verification"]["generated"] == PER_CLASS * trainable
    assert 0.0 <= results["student"]["h"] <= 1.0 and results["teacher"]["zsl"] > 0.5
    assert (folder / "student.pt").is_file() and (folder / "results.json").is_file()
    assert results["wall_seconds"] >= sum(results["phase_seconds"].values())


def _cfg(**raw: object):
    return parse_run_config({k.replace("_", "-"): v for k, v in raw.items()})


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ({}, "azsl"),
        ({"scenario": "blackbox"}, "azsl"),
        ({"scenario": "weights"}, "azsl"),
        ({"scenario": "dfzsl"}, "dfzsl"),
        ({"warm_start": "dfzsl"}, "hybrid"),
        ({"warm_start": "dfzsl", "method": "hybrid"}, "hybrid"),
        ({"scenario": "dfzsl", "method": "dfzsl"}, "dfzsl"),
    ],
)
def test_auto_keeps_todays_choice_and_names_resolve_to_the_table(raw, name):
    cfg = _cfg(**raw)
    assert auto_method(cfg) == name
    module, _, cls = METHODS[name].partition(":")
    assert method_class(cfg).__module__ == module and method_class(cfg).__name__ == cls


def _refused(tmp_path: Path, match: str, **raw: object) -> None:
    """``raw`` fails with ``match`` before any message or key file."""
    config = {**FAST, "output-dir": str(tmp_path / "out"), "cache-dir": str(tmp_path / "c")}
    config |= {k.replace("_", "-"): v for k, v in raw.items()}
    grid = InProcessGrid(client_app, 1, config)
    with pytest.raises(ConfigError, match=match):
        run_azsl(grid, parse_run_config(config), run_id=grid.run_id)
    assert grid.sent == [] and not (tmp_path / "c").exists()


def test_unknown_method_is_refused_naming_the_registered_ones(tmp_path):
    _refused(
        tmp_path,
        r"method='azls': not a registered method; choose auto, one of "
        r"\['azsl', 'dfzsl', 'hybrid'\], or a plug-in",
        method="azls",
    )


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"method": "dfzsl"}, r"method='dfzsl' contradicts scenario=whitebox .* run method 'azsl'"),
        ({"method": "hybrid"}, r"method='hybrid' contradicts .*warm-start=none"),
        ({"method": "azsl", "warm_start": "dfzsl"}, r"method='azsl' contradicts .* 'hybrid'"),
        ({"method": "azsl", "scenario": "dfzsl"}, r"method='azsl' contradicts .* 'dfzsl'"),
    ],
)
def test_a_registered_method_that_contradicts_scenario_or_warm_start_is_refused(
    tmp_path, raw, match
):
    _refused(tmp_path, match, **raw)


@pytest.mark.parametrize(
    ("method", "match"),
    [
        ("tests.plugins.no_such_module:TinyMethod", r"cannot import 'tests.plugins.no_such"),
        ("tests.plugins.tiny_method:NoSuchClass", r"'NoSuchClass' .* is not a Method subclass"),
        ("tests.plugins.tiny_method:PER_CLASS", r"'PER_CLASS' .* is not a Method subclass"),
        ("strategies.methods:Method", r"'Method' .* is not a Method subclass with a learn"),
    ],
)
def test_a_plugin_that_is_not_a_method_is_refused(tmp_path, method, match):
    _refused(tmp_path, match, method=method)


@pytest.mark.parametrize("value", ["", "Azsl", "a b", "module:", ":Class", "m:C:D", "x;y:Z"])
def test_run_config_refuses_a_malformed_method(value):
    with pytest.raises(ConfigError, match=r"run-config method=.*package.module:Class"):
        _cfg(method=value)


def test_dfzsl_phases_join_the_runs_link_with_their_own_settings():
    from strategies.dfzsl import DFZSLPhases
    from strategies.hybrid import HybridStrategy, dfzsl_phases

    cfg = _cfg(warm_start="dfzsl")
    run = HybridStrategy(
        cfg, load_class_side("digits"), torch.device("cpu"), ServiceSecurity("none", 0)
    )
    dz = dfzsl_phases(run)
    assert isinstance(dz, DFZSLPhases)
    # one transport and one roster: one count of round trips, queries and failures
    assert dz.transport is run.transport and dz.roster is run.roster
    assert dz.delivery.transport is run.transport and dz.delivery.roster is run.roster
    assert dz.settings["scenario"] == "dfzsl" and run.settings["scenario"] == "whitebox"
    assert dz.delivery.settings is dz.settings
    with pytest.raises(TypeError, match="security .* or link"):
        DFZSLPhases(cfg, run.classes, run.device)
    with pytest.raises(TypeError, match="security .* or link"):
        DFZSLPhases(cfg, run.classes, run.device, ServiceSecurity("none", 0), link=run.link)


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("strategies.azsl", ("strategies.dfzsl", "strategies.hybrid")),
        ("strategies.dfzsl", ("strategies.azsl", "strategies.hybrid")),
        ("strategies.server_app", ("strategies.azsl", "strategies.dfzsl", "strategies.hybrid")),
    ],
)
def test_a_method_module_imports_no_other_method(module, absent):
    code = f"import sys, {module}; print([m for m in {list(absent)!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
