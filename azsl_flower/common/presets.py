"""Experiment presets: Hydra configs (``configs/``) composed into one run configuration.

Both entry points compose the same way, so a preset means the same run everywhere:

* the launcher (``python -m simulations.run.launch experiment=NAME key=value ...``) lets Hydra
  compose ``configs/config.yaml`` with its command-line overrides;
* the ServerApp (``flwr run . --run-config "experiment='NAME ...'"``) calls
  :func:`resolve_run_config`, which composes the same tree with Hydra's compose API.

Every leaf of the composed config is a run-config key of :mod:`azsl_flower.common.config`, plus
``owners`` (how many SuperNodes a simulation starts), so :func:`parse_run_config` still
checks every value.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from logging import INFO
from pathlib import Path
from typing import Any

from azsl_flower.common.config import (
    DEFAULTS,
    ConfigError,
    RunConfig,
    check_known_keys,
    parse_run_config,
)

__all__ = [
    "CONFIG_DIR_ENV",
    "GROUPS",
    "config_dir",
    "compose_settings",
    "presets",
    "resolve_run_config",
    "settings_from_cfg",
    "pop_owners",
]

CONFIG_DIR_ENV = "AZSL_CONFIG_DIR"
# Config groups whose option names are also the values of the run-config key of that name:
# `dataset=xlsa17` on either entry point picks configs/dataset/xlsa17.yaml.
GROUPS = ("dataset", "scenario", "teacher", "regulariser", "federation", "model")
GROUP_KEYS = ("dataset", "scenario", "teacher", "regulariser")
EXTRA_KEYS = ("owners",)  # composed leaves that are not run-config keys


DEFAULTS_NODE = "run_defaults"  # the config-store entry configs/config.yaml starts from


def register_defaults() -> None:
    """Put DEFAULTS in Hydra's config store, so configs/ never repeats a default value."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=DEFAULTS_NODE, node=dict(DEFAULTS))


def config_dir() -> Path:
    """The ``configs/`` folder: $AZSL_CONFIG_DIR, else beside the package.

    Beside the package covers a checkout (editable install) and the app folder that
    ``flwr run .`` bundles and installs (its FAB keeps every ``*.yaml``), where the
    package is imported from that folder.
    """
    env = os.environ.get(CONFIG_DIR_ENV)
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent
    candidates += [here.parents[1] / "configs", Path.cwd() / "configs"]
    for cand in candidates:
        if (cand / "config.yaml").is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"no Hydra configs found (looked for config.yaml in {tried}); run from the "
        f"repository, or set {CONFIG_DIR_ENV} to its configs/ folder"
    )


def presets(root: Path | None = None) -> list[str]:
    """Names of the experiment presets (configs/experiment/*.yaml)."""
    folder = (root or config_dir()) / "experiment"
    return sorted(p.stem for p in folder.glob("*.yaml"))


def settings_from_cfg(cfg: Any, experiment: str | None) -> dict[str, Any]:
    """A composed DictConfig as a flat {run-config key or owners: value} dict.

    ``experiment`` (the chosen preset) becomes the ``experiment`` key, so results.json
    records which preset a run came from. Keys that are neither run-config keys nor
    ``owners`` are refused: a typo in a YAML file must not pass silently.
    """
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # the launcher's own settings (run folders, sweeps)
    settings = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(settings, dict)
    unknown = sorted(set(settings) - set(DEFAULTS) - set(EXTRA_KEYS))
    if unknown:
        raise ConfigError(
            f"the Hydra configs set unknown key(s) {unknown}; every leaf must be a run-config "
            f"key of azsl_flower/config.py or one of {list(EXTRA_KEYS)}"
        )
    nested = sorted(k for k, v in settings.items() if isinstance(v, dict | list))
    if nested:
        raise ConfigError(f"the Hydra configs give {nested} a mapping or list; use plain values")
    settings["experiment"] = experiment or ""
    return {str(k): v for k, v in settings.items()}


def _check_preset(name: str, root: Path) -> None:
    available = presets(root)
    if name not in available:
        raise ConfigError(
            f"unknown experiment preset {name!r}; available: {', '.join(available)} "
            f"(files in {root / 'experiment'})"
        )


def compose_settings(experiment: str = "", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose configs/ for a preset ("" for none) and Hydra overrides, as the launcher does.

    ``overrides`` use the launcher's syntax (``seed=1``, ``scenario=blackbox``,
    ``federation=two_owners_iid``). Works whether or not Hydra is already initialised
    (the launcher's own Hydra state is restored afterwards).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    root = config_dir()
    overrides = list(overrides)
    if experiment:
        _check_preset(experiment, root)
        overrides = [f"experiment={experiment}", *overrides]
    if any(o.split("=", 1)[0].lstrip("+~") == "experiment" for o in overrides[1:]):
        raise ConfigError("give the experiment preset once (experiment=NAME)")
    register_defaults()
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    gh.clear()
    try:
        with initialize_config_dir(config_dir=str(root), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            chosen = cfg.hydra.runtime.choices.get("experiment")
    except (HydraException, OmegaConfBaseException) as exc:
        why = str(exc).split("\nConfig search path")[0].strip()
        raise ConfigError(f"cannot compose the experiment config {overrides}: {why}") from None
    finally:
        GlobalHydra.instance().clear()
        if saved is not None:
            GlobalHydra.instance().initialize(saved)
    return settings_from_cfg(cfg, chosen)


def pop_owners(settings: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(run-config dict, owners) from composed settings."""
    run = {k: v for k, v in settings.items() if k not in EXTRA_KEYS}
    owners = settings.get("owners", 1)
    if not isinstance(owners, int) or isinstance(owners, bool) or owners < 1:
        raise ConfigError(f"owners={owners!r}: the number of simulated owners, an integer >= 1")
    return run, owners


def resolve_run_config(raw: Mapping[str, Any] | None) -> tuple[RunConfig, int | None]:
    """The ServerApp's run config: plain keys, or a preset with the user's keys on top.

    ``experiment`` is empty (plain run config; owners None) or ``"NAME [overrides...]"``:
    the preset and optional Hydra overrides in the launcher's syntax. Flower hands the
    ServerApp the run config already merged with pyproject's defaults, so a key counts as
    given by the user when it differs from its default; such keys override the preset
    (a group key such as scenario picks that group option, as on the launcher's command
    line). To set a key back to its default inside a preset, put it in ``experiment``:
    ``experiment='caltech_blackbox alpha=10'``. Returns the run config and the preset's
    owner count.
    """
    raw = dict(raw or {})
    spec = str(raw.get("experiment", "") or "").strip()
    if not spec:
        return parse_run_config(raw), None
    check_known_keys(raw)  # before DEFAULTS[k] below
    try:
        name, *hydra_overrides = shlex.split(spec)
    except ValueError as exc:
        raise ConfigError(f"run-config experiment={spec!r}: {exc}") from None
    given = {k: v for k, v in raw.items() if k != "experiment" and not _same(v, DEFAULTS[k])}
    groups = [f"{k}={given.pop(k)}" for k in GROUP_KEYS if k in given]
    settings = compose_settings(name, [*hydra_overrides, *groups])
    settings.update(given)
    if str(settings["encryption"]) != str(raw.get("encryption", DEFAULTS["encryption"])):
        raise ConfigError(
            "set encryption as a run-config key, not in a preset or in experiment: the owners "
            "read it from the run config"
        )
    run, owners = pop_owners(settings)
    from flwr.common.logger import log

    log(INFO, "experiment %r composed from %s", spec, config_dir())
    return parse_run_config(run), owners


def _same(value: Any, default: Any) -> bool:
    """Flower may hand 10 for 10.0 or '0.001' for 0.001: compare as the default's type."""
    try:
        if isinstance(default, bool):
            return str(value).lower() == str(default).lower()
        if isinstance(default, int | float):
            return float(value) == float(default)
    except (TypeError, ValueError):
        return False
    return str(value) == str(default)
