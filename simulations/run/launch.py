"""Hydra launcher: one simulated AZSL run per composed config, or a sweep with --multirun.

    python -m simulations.run.launch experiment=caltech_whitebox seed=1
    python -m simulations.run.launch experiment=smoke scenario=blackbox rounds=5
    python -m simulations.run.launch --multirun experiment=caltech_blackbox seed=0,1,2
    python -m simulations.run.launch -m experiment=table3_blackbox_transductive   # its seeds
    python -m simulations.run.launch experiment=caltech_whitebox --cfg job        # print only

Overrides use Hydra's syntax: ``key=value`` for run-config keys (``data-dir=/x``), a group
option for ``dataset``, ``scenario``, ``teacher``, ``regulariser``, ``federation``,
``model``. Each run gets its own folder (``outputs/launch/<time>``, or
``outputs/multirun/<time>/<job number>``) holding Hydra's record of the config
(``.hydra/``) and the run folder itself (``<stamp>/results.json``, models, ``tb/``),
unless ``output-dir`` is given; curves and scores are plotted into ``<run folder>/plots``
(``python -m simulations.report.plots <run folder> --tsne`` adds the owner-side t-SNE). The same
preset and overrides give the same run config as
``flwr run . --run-config "experiment='NAME key=value ...'"`` (tested).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from azsl_flower.common.config import DEFAULTS, RunConfig, parse_run_config
from azsl_flower.common.presets import (
    config_dir,
    pop_owners,
    register_defaults,
    settings_from_cfg,
)

register_defaults()  # configs/config.yaml starts from DEFAULTS in Hydra's config store


def run_config_from(settings: dict[str, Any], job_dir: str | None = None) -> tuple[RunConfig, int]:
    """(RunConfig, owners) from composed settings; runs land in ``job_dir`` by default."""
    run, owners = pop_owners(settings)
    if job_dir is not None and run["output-dir"] == DEFAULTS["output-dir"]:
        run["output-dir"] = job_dir
    return parse_run_config(run), owners


def _plots(run_dir: Path) -> list[str]:
    """Curves and scores of a finished run (cheap); a plotting error never fails the run."""
    from simulations.report.plots import main as plots

    try:
        return [str(p) for p in plots([str(run_dir)])]
    except Exception as exc:  # the run itself succeeded
        logging.getLogger("flwr").warning("no plots for %s: %r", run_dir, exc)
        return []


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One job: compose, simulate, print where everything went; returns student H."""
    from hydra.core.hydra_config import HydraConfig

    from simulations.run.simulate import run

    runtime = HydraConfig.get().runtime
    settings = settings_from_cfg(cfg, runtime.choices.get("experiment"))
    run_cfg, owners = run_config_from(settings, runtime.output_dir)
    flwr_log = logging.getLogger("flwr")
    handler = logging.FileHandler(Path(runtime.output_dir) / "launch.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    flwr_log.addHandler(handler)
    try:
        results = run(run_cfg, owners)
    finally:
        flwr_log.removeHandler(handler)
        handler.close()
    summary = {"experiment": run_cfg.experiment, "owners": owners}
    summary |= {k: results[k] for k in ("teacher", "student", "output_dir")}
    summary["plots"] = _plots(Path(results["output_dir"]))
    print(json.dumps(summary, indent=1), flush=True)
    return float(results["student"]["h"])


if __name__ == "__main__":
    main()
