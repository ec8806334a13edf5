"""What a method is, and the one table of methods a run can pick (run-config ``method``).

A :class:`Method` is an :class:`~strategies.phases.OwnerPhases` (set-up, verification,
evaluation with the owners) with its own rounds, in the style of Flower's strategies: the
run calls :meth:`Method.start` with keyword arguments and gets one typed
:class:`~azsl_flower.service.results.RunResult`. The loop is the same for every method:
set-up, the method's :meth:`~Method.learn` (its rounds, returning a typed :class:`Learnt`),
then the delivery of its models to the owners' evaluation; the loop, and only the loop,
assembles the result (who contributed to each phase, the phases' seconds, the run's wall
time), once.

Adding a method is one module with a :class:`Method` subclass and one line in
:data:`METHODS`; a plug-in needs no line at all (``method=package.module:Class``: the
service imports it; owners never read this key).
"""

from __future__ import annotations

import importlib
import inspect
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from azsl_flower.common.config import ConfigError, RunConfig, Scenario
from azsl_flower.common.metrics import zsl_gzsl
from azsl_flower.service import ensemble
from azsl_flower.service.results import RunResult
from azsl_flower.service.tracking import RunEvents
from azsl_flower.wire import schema
from strategies.phases import OwnerPhases
from strategies.requests import Evaluation

__all__ = ["METHODS", "Learnt", "Method", "auto_method", "load_method", "method_class"]

# name -> "module:Class". Import paths, so that choosing a method imports only its module
# (AZSL never imports DFZSL) and built-in methods load the way plug-ins do.
METHODS: dict[str, str] = {
    "azsl": "strategies.azsl:AZSLStrategy",
    "dfzsl": "strategies.dfzsl:DFZSLStrategy",
    "hybrid": "strategies.hybrid:HybridStrategy",
}
_PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass
class Learnt:
    """What a method's rounds produced, for the loop to evaluate and report."""

    models: dict[str, torch.nn.Module]  # scored by the owners; the first is the student
    saved: dict[str, torch.nn.Module]  # written beside results.json
    verification: dict[str, object]  # results.json "verification"
    contributors: dict[str, list[int]] = field(default_factory=dict)  # phase -> who answered
    # seconds per phase; "setup"/"evaluation" add to the loop's own round trips' time
    phase_seconds: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    method: dict[str, Any] = field(default_factory=dict)  # results.json "method" (if any)
    baseline: dict[str, object] = field(default_factory=dict)
    resumed_from_round: int | None = None
    delivered: str = ""  # the delivered model's name among models ("": the first)


class Method(OwnerPhases, ABC):
    """One way of learning from the owners: set-up, its rounds, delivery of its models."""

    @abstractmethod
    def learn(
        self,
        *,
        grid: Grid,
        setup: dict[int, schema.Payload],
        declared: ensemble.Declarations,
        events: RunEvents,
    ) -> Learnt:
        """The method's rounds between set-up (``setup``: each owner's answer) and evaluation."""

    def evaluate(
        self, grid: Grid, models: dict[str, torch.nn.Module], unseen: np.ndarray
    ) -> tuple[Evaluation, list[int]]:
        """Every model to every owner in one round trip; the counts, and who answered."""
        replies = self.delivery.ask(grid, self.configure_evaluate(models, unseen))
        return self.aggregate_evaluate(replies, list(models)), list(replies)

    def start(
        self, *, grid: Grid, events: RunEvents | None = None, started: float | None = None
    ) -> RunResult:
        """Set-up, :meth:`learn`, evaluation; the one RunResult (``started``: when the run
        began, by ``time.monotonic``; its wall time counts from there)."""
        events = events or RunEvents()
        t0 = time.monotonic()
        started = t0 if started is None else started
        setup, declared = self.setup(grid)
        phases = {"setup": time.monotonic() - t0}
        learnt = self.learn(grid=grid, setup=setup, declared=declared, events=events)
        for name, seconds in learnt.phase_seconds.items():
            phases[name] = phases.get(name, 0.0) + seconds
        t = time.monotonic()
        evaluation, evaluated = self.evaluate(grid, learnt.models, declared.unseen)
        phases["evaluation"] = phases.get("evaluation", 0.0) + time.monotonic() - t
        contributors = {"setup": list(setup), **learnt.contributors, "evaluation": evaluated}
        result = self._run_result(evaluation, learnt, phases, contributors, started)
        events.finished(result)
        return result

    def _run_result(
        self,
        evaluation: Evaluation,
        learnt: Learnt,
        phases: dict[str, float],
        contributors: dict[str, list[int]],
        started: float,
    ) -> RunResult:
        """results.json's content: the first of ``learnt.models`` is reported as student."""
        cfg, space = self.cfg, self.cfg.teacher.zsl_space
        main = next(iter(learnt.models))
        curve = evaluation.curves[main]
        calibration: dict[str, object] = {"applied": cfg.calibration}
        if curve:
            calibration["curve"] = curve
            calibration["selected"] = max(curve, key=lambda p: p["h"])["calibration"]
        faults = self.transport.faults
        weighting = str(cfg.ensemble_weighting)
        others = {n: zsl_gzsl(c, space) for n, c in evaluation.models.items() if n != main}
        delivered = learnt.delivered or main
        return RunResult(
            config=cfg,
            device=str(self.device),
            teacher=zsl_gzsl(evaluation.teacher, space),
            student=zsl_gzsl(evaluation.models[main], space),
            delivered={"name": delivered, **zsl_gzsl(evaluation.models[delivered], space)},
            other_models=others,
            per_owner_teacher={str(n): zsl_gzsl(c, space) for n, c in evaluation.per_owner.items()},
            calibration=calibration,
            verification=learnt.verification,
            federation=self.roster.report(main, space, cfg.partition, weighting, contributors),
            history=learnt.history,
            traffic=self.transport.traffic,
            crypto=self.transport.security.stats,
            suite=self.transport.security.suite,
            faults_injected=faults.injected if faults is not None else {},
            phase_seconds=phases,
            wall_seconds=time.monotonic() - started,
            resumed_from_round=learnt.resumed_from_round,
            models=learnt.saved,
            method=learnt.method,
            privacy={str(n): d for n, d in self.privacy.items()},
            baseline=learnt.baseline,
        )


def auto_method(cfg: RunConfig) -> str:
    """``method=auto``: scenario dfzsl runs DFZSL, warm-start=dfzsl the hybrid, else AZSL."""
    if cfg.scenario is Scenario.DFZSL:
        return "dfzsl"
    return "hybrid" if cfg.warm_start == "dfzsl" else "azsl"


def method_class(cfg: RunConfig) -> type[Method]:
    """The run's method: ``auto``, a name in :data:`METHODS` (which must agree with the
    scenario and warm-start keys that choose it), or a plug-in ``module:Class``."""
    name, auto = cfg.method, auto_method(cfg)
    if name == "auto":
        name = auto
    elif name in METHODS:
        if name != auto:
            raise ConfigError(
                f"run-config method={name!r} contradicts scenario={cfg.scenario} and "
                f"warm-start={cfg.warm_start}, which run method {auto!r}: use method=auto, or "
                "set them for it (dfzsl: scenario=dfzsl; hybrid: warm-start=dfzsl; azsl: "
                "scenario whitebox, blackbox or weights and warm-start=none)"
            )
    elif not _PLUGIN.fullmatch(name):
        raise ConfigError(
            f"run-config method={name!r}: not a registered method; choose auto, one of "
            f"{sorted(METHODS)}, or a plug-in as package.module:Class"
        )
    return load_method(METHODS.get(name, name))


def load_method(path: str) -> type[Method]:
    """Import ``module:Class`` and check it is a concrete :class:`Method`."""
    module, _, attr = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ImportError as exc:
        raise ConfigError(f"run-config method={path!r}: cannot import {module!r} ({exc})") from None
    if not (isinstance(found, type) and issubclass(found, Method)) or inspect.isabstract(found):
        raise ConfigError(
            f"run-config method={path!r}: {attr!r} in {module!r} is not a Method subclass "
            "with a learn() (see strategies/methods.py)"
        )
    return found
