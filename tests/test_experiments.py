"""Hydra presets: configs/ mirrors DEFAULTS, and the launcher and the ServerApp compose the
same run config for every preset (composition only; one tiny run end to end)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import yaml
from flwr.app import Context, RecordDict

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import CHOICES, DEFAULTS, ConfigError, parse_run_config
from azsl_flower.common.presets import (
    CONFIG_DIR_ENV,
    GROUP_KEYS,
    GROUPS,
    compose_settings,
    config_dir,
    presets,
    resolve_run_config,
)
from simulations.run.inprocess import InProcessGrid
from simulations.run.launch import run_config_from
from strategies.server_app import main as server_main
from strategies.server_app import run_azsl

ROOT = Path(__file__).resolve().parents[1]
PRESETS = presets()


@pytest.fixture(scope="module")
def flwr_defaults() -> dict:
    """What Flower hands the ServerApp before the user's --run-config: pyproject's table."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_config_dir_is_the_repositorys():
    assert config_dir() == (ROOT / "configs").resolve()


def test_config_yaml_equals_defaults():
    settings = compose_settings()
    assert settings.pop("owners") == 1
    assert settings == DEFAULTS
    for key, value in settings.items():
        assert type(value) is type(DEFAULTS[key]), key


def test_every_yaml_leaf_is_a_run_config_key():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        leaves = set(data) - {"defaults", "hydra"}
        assert leaves <= set(DEFAULTS) | {"owners"}, (path, leaves - set(DEFAULTS))
        assert not any(isinstance(data[k], dict | list) for k in leaves), path


@pytest.mark.parametrize("key", GROUP_KEYS)
def test_group_options_cover_the_choices(key):
    """`scenario=blackbox` means the same whether it is a group option or a plain key."""
    for value in CHOICES[key]:
        extra = ["data-dir=/somewhere"] if value == "xlsa17" else []
        assert compose_settings("", [f"{key}={value}", *extra])[key] == value


def test_every_group_option_composes_and_parses():
    for group in GROUPS:
        for option in sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml")):
            settings = compose_settings("", [f"{group}={option}"])
            path = ROOT / "configs" / group / f"{option}.yaml"
            written = yaml.safe_load(path.read_text()) or {}
            # every key the option file sets reaches the composed run config
            assert {k: settings[k] for k in written} == written, path
            settings.pop("owners")
            if settings["dataset"] == "xlsa17" and not settings["data-dir"]:
                settings["data-dir"] = "/somewhere"  # the generic xlsa17 option leaves it to fill
            cfg = parse_run_config(settings)
            if group in ("scenario", "teacher", "regulariser"):  # option name = key value
                assert cfg.as_dict()[group] == option


def test_presets_exist():
    assert {"default", "smoke", "caltech_whitebox", "caltech_blackbox"} <= set(PRESETS)
    assert sum(p.startswith("table3_") for p in PRESETS) == 4


@pytest.mark.parametrize("preset", PRESETS)
def test_launcher_and_server_app_compose_the_same_run_config(preset, flwr_defaults):
    overrides = {"seed": 1, "rounds": 5, "scenario": "blackbox", "noise-dim": 7}
    launcher, owners = run_config_from(
        compose_settings(preset, [f"{k}={v}" for k, v in overrides.items()])
    )
    # flwr run . --run-config "experiment='PRESET' seed=1 rounds=5 scenario='blackbox' ..."
    app, app_owners = resolve_run_config({**flwr_defaults, "experiment": preset, **overrides})
    assert app == launcher
    assert app_owners == owners
    assert app.experiment == preset and (app.seed, app.rounds, app.noise_dim) == (1, 5, 7)
    # the same overrides inside the experiment key, in the launcher's syntax
    spec = " ".join([preset, *(f"{k}={v}" for k, v in overrides.items())])
    assert resolve_run_config({**flwr_defaults, "experiment": spec})[0] == launcher
    # and without overrides: the preset as it is
    plain, _ = run_config_from(compose_settings(preset))
    assert resolve_run_config({**flwr_defaults, "experiment": preset})[0] == plain


def test_launcher_command_line_composes_like_the_compose_api():
    """hydra.main (the real launcher) against compose_settings, through --cfg job."""
    args = ["experiment=caltech_blackbox", "seed=2", "teacher=inductive", "alpha=0.5"]
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.run.launch", *args, "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = yaml.safe_load(proc.stdout)
    expected = compose_settings("caltech_blackbox", args[1:])
    assert printed.pop("experiment") == ""  # the launcher takes the preset name from Hydra
    assert expected.pop("experiment") == "caltech_blackbox"
    assert printed == expected


def test_preset_values_and_user_keys(flwr_defaults):
    cfg, owners = resolve_run_config({**flwr_defaults, "experiment": "caltech_blackbox"})
    assert (cfg.dataset, cfg.feature_file, cfg.alpha) == ("xlsa17", "effnetlite0.mat", 50.0)
    assert cfg.data_dir == "../shared/data/caltech101" and cfg.scenario == "blackbox"
    assert owners == 1
    # a key given with its default value cannot be told from an absent one: the
    # experiment key takes it instead
    cfg, _ = resolve_run_config({**flwr_defaults, "experiment": "caltech_blackbox", "alpha": 10})
    assert cfg.alpha == 50.0
    cfg, _ = resolve_run_config({**flwr_defaults, "experiment": "caltech_blackbox alpha=10"})
    assert cfg.alpha == 10.0
    cfg, owners = resolve_run_config(
        {**flwr_defaults, "experiment": "smoke federation=five_owners_class_disjoint"}
    )
    assert owners == 5 and cfg.partition == "class-disjoint" and cfg.rounds == 3
    # no experiment: the run config as it always was
    cfg, owners = resolve_run_config({**flwr_defaults, "rounds": 4})
    assert owners is None and cfg.rounds == 4 and cfg.experiment == ""


@pytest.mark.parametrize(
    ("experiment", "match"),
    [
        (
            "caltech_whitebx",
            "unknown experiment preset 'caltech_whitebx'; available: .*caltech_whitebox",
        ),
        ("smoke scenario=greybox", "(?s)Could not find 'scenario/greybox'.*whitebox"),
        ("smoke federation=ten_owners", "Available options in 'federation'"),
        ("smoke no-such-key=1", "no-such-key"),
        ("smoke encryption=none", "set encryption as a run-config key"),
        ("smoke 'unclosed", "No closing quotation"),
        ("smoke experiment=default", "experiment preset once"),
        ("smoke rounds=-1", "rounds=-1: must be >= 0"),
    ],
)
def test_bad_experiments_fail_clearly(experiment, match, flwr_defaults):
    with pytest.raises(ConfigError, match=match):
        resolve_run_config({**flwr_defaults, "experiment": experiment})


def test_unknown_key_with_an_experiment_is_refused():
    with pytest.raises(ConfigError, match="unknown run-config key"):
        resolve_run_config({"experiment": "smoke", "round": 3})


def test_config_dir_env_and_missing(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("owners: 1\n")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "mine"))
    assert config_dir() == (tmp_path / "mine").resolve()
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "none"))
    monkeypatch.setattr("azsl_flower.common.presets.__file__", str(tmp_path / "pkg" / "x.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"no Hydra configs found.*{CONFIG_DIR_ENV}"):
        config_dir()


TINY = [
    "federation=one_owner",
    "rounds=2",
    "steps-per-round=2",
    "student-epochs=2",
    "samples-per-class=20",
]


def test_launcher_and_server_app_give_the_same_run(tmp_path, flwr_defaults):
    """Same preset + overrides + seed: the same trained generator and the same figures."""
    cache = str(tmp_path / "cache")
    settings = compose_settings("smoke", [*TINY, "seed=3", f"cache-dir={cache}"])
    cfg, owners = run_config_from(settings, job_dir=str(tmp_path / "launcher"))
    grid = InProcessGrid(client_app, owners, cfg.as_dict())  # owners find the run keys
    launched, folder = run_azsl(grid, cfg, run_id=grid.run_id)

    raw = {
        **flwr_defaults,
        "experiment": "smoke " + " ".join(TINY),
        "seed": 3,
        "cache-dir": cache,
        "output-dir": str(tmp_path / "app"),
    }
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=raw)
    server_main(InProcessGrid(client_app, owners, raw, run_id=context.run_id), context)
    (app_json,) = (tmp_path / "app").glob("*/results.json")
    served = json.loads(app_json.read_text())

    for key in ("teacher", "student", "verification", "history", "round_trips", "num_owners"):
        assert served[key] == launched[key], key
    assert {k: v for k, v in served["config"].items() if k != "output-dir"} == {
        k: v for k, v in launched["config"].items() if k != "output-dir"
    }
    g_launcher = torch.load(Path(folder) / "generator.pt", weights_only=True)
    g_app = torch.load(app_json.parent / "generator.pt", weights_only=True)
    assert all(torch.equal(g_launcher[k], g_app[k]) for k in g_launcher)
    assert served["config"]["experiment"] == "smoke" and served["num_owners"] == owners == 1


def _sweep_params(preset: str) -> dict[str, list[str]]:
    data = yaml.safe_load((ROOT / "configs" / "experiment" / f"{preset}.yaml").read_text()) or {}
    params = (data.get("hydra") or {}).get("sweeper", {}).get("params", {})
    return {k: str(v).split(",") for k, v in params.items()}


@pytest.mark.parametrize("preset", [p for p in PRESETS if _sweep_params(p)])
def test_every_swept_value_composes(preset):
    """`-m experiment=PRESET` sweeps hydra.sweeper.params: each value must make a valid run."""
    for key, values in _sweep_params(preset).items():
        assert len(values) > 1, (preset, key)
        for value in values:
            cfg, _ = run_config_from(compose_settings(preset, [f"{key}={value}"]))
            expected = parse_run_config({key: value}).as_dict()[key]  # coerced as Flower would
            assert cfg.as_dict()[key] == expected, (preset, key, value)


def test_inprocess_runner_gives_the_launchers_run(tmp_path, monkeypatch):
    """AZSL_RUNNER=inprocess: the same run as the loopback grid, without Ray."""
    from simulations.run.simulate import run

    cache = str(tmp_path / "cache")
    settings = compose_settings("smoke", [*TINY, "seed=5", f"cache-dir={cache}"])
    cfg, owners = run_config_from(settings, job_dir=str(tmp_path / "loop"))
    looped, _ = run_azsl(InProcessGrid(client_app, owners, cfg.as_dict(), run_id=1), cfg, run_id=1)
    cfg, owners = run_config_from(settings, job_dir=str(tmp_path / "inproc"))
    monkeypatch.setenv("AZSL_RUNNER", "inprocess")
    served = run(cfg, owners)
    assert Path(served["output_dir"]).parent == tmp_path / "inproc"
    for key in ("teacher", "student", "verification", "history", "round_trips"):
        assert served[key] == looped[key], key
    monkeypatch.setenv("AZSL_RUNNER", "threads")
    with pytest.raises(ValueError, match="unknown runner 'threads'"):
        run(cfg, owners)


def test_inprocess_runs_never_share_a_key_folder(tmp_path, monkeypatch):
    """Sweeps split over processes run side by side with one cache: each run's per-run
    keys must live in a folder of their own (a fixed run id made them delete and overwrite
    each other's keys: wrong-key and missing-key errors)."""
    import strategies.server_app as server_app
    from simulations.run.simulate import run

    made: list[int] = []
    real = server_app.provision_simulation_keys

    def spy(cache_dir, run_id, num_owners):  # noqa: ANN001, ANN202
        made.append(run_id)
        return real(cache_dir, run_id, num_owners)

    monkeypatch.setattr(server_app, "provision_simulation_keys", spy)
    monkeypatch.setenv("AZSL_RUNNER", "inprocess")
    settings = compose_settings("smoke", [*TINY, "rounds=1", f"cache-dir={tmp_path / 'c'}"])
    for name in ("a", "b"):
        cfg, owners = run_config_from(settings, job_dir=str(tmp_path / name))
        results = run(cfg, owners)
        assert Path(results["output_dir"]).parent == tmp_path / name  # each run finished
    assert len(made) == 2 and made[0] != made[1]
    assert InProcessGrid(client_app, 1).run_id != InProcessGrid(client_app, 1).run_id
