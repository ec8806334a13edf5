"""The hybrid (run-config ``warm-start=dfzsl``, method ``hybrid``): DFZSL's phases, then AZSL's.

Before AZSL's generator rounds, the service runs DFZSL's phases over the same transport and
roster (one count of round trips, queries and failures): a set-up in which the owners
declare their cosine teacher, the probes (or released heads) that give the class
directions, the concentration ladder, the virtual features and their verification, all
answered by the owners' *cosine* teachers (the requests say scenario ``dfzsl``). One more
verification, by the AZSL teachers, picks the scale the generator's features should have;
then the generator is fitted to the features (:mod:`azsl_flower.service.warm_start`).

:class:`HybridStrategy` is AZSL's rounds with that warm start before them; DFZSL's phases
are :class:`~strategies.dfzsl.DFZSLPhases` joined to the run's link with scenario
``dfzsl`` in their settings (AZSL's own module never imports DFZSL's).
"""

from __future__ import annotations

import time
from logging import INFO

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower.common.config import Scenario
from azsl_flower.service import ensemble
from azsl_flower.service.dfzsl.learner import DFZSLLearner, DFZSLSettings
from azsl_flower.service.generator import GeneratorTrainer
from azsl_flower.service.warm_start import (
    SCALE_SAMPLES,
    as_features,
    choose_scale,
    fit_generator,
    scale_ladder,
)
from azsl_flower.wire import schema
from strategies.azsl import AZSLStrategy
from strategies.checks import check_setup
from strategies.dfzsl import DFZSLPhases
from strategies.phases import OwnerPhases
from strategies.requests import Request
from strategies.roster import OwnerError

__all__ = ["HybridStrategy", "dfzsl_phases", "warm_start"]


class HybridStrategy(AZSLStrategy):
    """AZSL whose generator starts from DFZSL's virtual features (issue 14)."""

    def warm_start(
        self, *, grid: Grid, trainer: GeneratorTrainer, declared: ensemble.Declarations
    ) -> tuple[dict[str, object], dict[str, list[int]]]:
        """The warm start, unless a checkpoint will be resumed (its generator is past it)."""
        if self._resumable():
            return {}, {}
        return warm_start(self, grid, trainer, declared)


def dfzsl_phases(owner: OwnerPhases) -> DFZSLPhases:
    """DFZSL's phases talking over ``owner``'s transport and roster; its requests carry
    scenario=dfzsl, so the owners answer them with their cosine teacher."""
    settings = {**owner.settings, "scenario": Scenario.DFZSL.value}
    return DFZSLPhases(owner.cfg, owner.classes, owner.device, link=owner.link, settings=settings)


def warm_start(
    owner: OwnerPhases, grid: Grid, trainer: GeneratorTrainer, declared: ensemble.Declarations
) -> tuple[dict[str, object], dict[str, list[int]]]:
    """Fit ``trainer``'s generator to DFZSL's virtual features; what results.json shows,
    and who answered each of the warm start's round trips that counts as a phase."""
    cfg, t0 = owner.cfg, time.monotonic()
    dz = dfzsl_phases(owner)
    nodes = list(owner.roster.live)
    check = check_setup(owner.classes.num_classes, weights=False, dfzsl=True)
    request = Request(schema.SETUP, "warm-start-setup", [{}], nodes, check)
    replies = dz.delivery.ask(grid, request)
    if not replies:
        raise OwnerError("no owner answered the warm start's set-up; see the failures above")
    heads = dz.read_cosine_setup({n: r[0] for n, r in replies.items()})
    learner = DFZSLLearner(
        DFZSLSettings.from_config(cfg),
        owner.classes.semantics,
        declared.trainable,
        np.setdiff1d(declared.unseen, declared.trainable),
        owner.device,
    )
    directions, probed = dz.directions(grid, heads, declared.dim)
    contributors = {"dfzsl-probe": probed} if probed else {}
    phase = "warm-start-verification"
    kappa, verified, asked = dz.virtual_features(grid, learner, directions, phase)
    contributors |= asked
    keep = verified.keep
    if not keep.any():
        raise OwnerError(
            "warm start: the cosine teachers accepted no virtual feature; raise "
            "dfzsl-kappa-factor or use warm-start=none"
        )
    v, y = verified.x[keep], verified.y[keep]
    xs, ys, rungs = scale_ladder(v, y, SCALE_SAMPLES)
    scaled = owner.verify(grid, xs, ys, "warm-start-scale")
    contributors["warm-start-scale"] = scaled.nodes
    scale, rates = choose_scale(scaled.keep, rungs)
    x = as_features(v, scale)
    unseen = 0
    if cfg.warm_start_unseen and learner.unseen.size:
        xu, yu = learner.unseen_features(v, y, learner.align(directions), kappa)
        x, y, unseen = np.concatenate([x, as_features(xu, scale)]), np.concatenate([y, yu]), yu.size
    fit = fit_generator(
        trainer.generator,
        trainer.sem,
        x,
        y,
        cfg.warm_start_epochs,
        cfg.seed,
        cfg.batch_size,
    )
    log(
        INFO,
        "warm start: %d virtual features (%d unseen-class), scale %g (AZSL teachers accept "
        "%.0f%%), generator loss %.3f -> %.3f",
        fit.samples,
        unseen,
        scale,
        100 * rates[str(scale)],
        fit.loss_before,
        fit.loss_after,
    )
    report = {
        "method": "dfzsl",
        "kappa": kappa,
        "virtual_accepted": int(keep.sum()),
        "virtual_generated": int(keep.size),
        "scale": scale,
        "scale_pass_rate": rates,
        "scale_queries": int(ys.size),
        "unseen_features": int(unseen),
        "fitted_samples": fit.samples,
        "loss_before": fit.loss_before,
        "loss_after": fit.loss_after,
        "seconds": time.monotonic() - t0,
        **{f"dfzsl_{k}": val for k, val in learner.report.items()},
    }
    return report, contributors
