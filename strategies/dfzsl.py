"""DFZSLStrategy: the service's side of scenario ``dfzsl`` (Tang et al., AAAI 2024).

Few round trips, each carrying everything it can: set-up (owners declare coverage, their
cosine teacher's temperature, and their head where their policy releases it); one probe
round trip (every probe feature at once) from which the class directions are recovered
by black-box matching; with ``dfzsl-kappa=dimension`` one verification of a ladder of
concentrations; one verification of the virtual features; one evaluation. Learning in
between is :class:`~azsl_flower.service.dfzsl.learner.DFZSLLearner`'s; set-up,
verification and evaluation are :class:`~strategies.phases.OwnerPhases`'.

:class:`DFZSLPhases` are DFZSL's own round trips, constructible over another run's link
(the hybrid, :mod:`strategies.hybrid`, asks them before AZSL's rounds);
:class:`DFZSLStrategy` is the method that runs them from set-up to evaluation.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.common.logger import log
from flwr.serverapp import Grid

from azsl_flower.service import ensemble
from azsl_flower.service.dfzsl.directions import match_directions, merge_directions, probe_features
from azsl_flower.service.dfzsl.learner import LADDER, DFZSLLearner, DFZSLSettings
from azsl_flower.service.tracking import RunEvents
from azsl_flower.wire import schema
from strategies.checks import check_probe
from strategies.methods import Learnt, Method
from strategies.phases import OwnerPhases
from strategies.requests import Request, Verified
from strategies.roster import OwnerError

__all__ = ["DFZSLPhases", "DFZSLStrategy"]


class DFZSLPhases(OwnerPhases):
    """DFZSL's round trips: the cosine set-up's reading, directions, virtual features."""

    temperatures: dict[int, float]

    # -- set-up: what dfzsl owners add ------------------------------------------------------

    def read_cosine_setup(self, setup: dict[int, schema.Payload]) -> dict[int, np.ndarray]:
        """Each owner's temperature (required) and released head (where it released one)."""
        self.temperatures, heads = {}, {}
        for node, r in setup.items():
            if "cosine_temperature" not in r.arrays:
                raise OwnerError(
                    f"owner node {node} declared no cosine teacher: it does not run scenario "
                    "dfzsl (update its ClientApp)"
                )
            t = float(r.arrays["cosine_temperature"].ravel()[0])
            if not (np.isfinite(t) and t > 0):
                raise OwnerError(f"owner node {node} declared temperature {t}: must be > 0")
            self.temperatures[node] = t
            if "cosine_head" in r.arrays:
                heads[node] = r.arrays["cosine_head"]
        return heads

    # -- directions -------------------------------------------------------------------------

    def configure_probe(self, probes: np.ndarray, nodes: list[int]) -> Request:
        check = check_probe(probes, self.roster.covered, self.temperatures)
        payload = {"arrays": {"x": probes}}
        return Request(schema.DFZSL_PROBE, "dfzsl-probe", [payload], nodes, check)

    def aggregate_probe(self, answers: dict[int, schema.Payload], probes: np.ndarray) -> np.ndarray:
        """Black-box matching per owner, merged over owners: one unit direction per class."""
        parts = []
        for node, r in answers.items():
            covered, logits = self.roster.covered[node], r.arrays["logits"]
            if logits.shape != (probes.shape[0], covered.size):
                raise OwnerError(
                    f"owner node {node} answered logits {logits.shape} for {probes.shape[0]} "
                    f"probes and {covered.size} declared classes"
                )
            parts.append((covered, match_directions(probes, logits, self.temperatures[node])))
        return merge_directions(parts, self.classes.num_classes)

    def directions(
        self, grid: Grid, heads: dict[int, np.ndarray], dim: int
    ) -> tuple[np.ndarray, list[int]]:
        """Read from released heads (dfzsl-directions=head) or recovered from probes; and
        who answered the probes (none asked: [])."""
        if self.cfg.dfzsl_directions == "head":
            missing = [n for n in self.roster.live if n not in heads]
            if missing:
                raise OwnerError(
                    f"dfzsl-directions=head, but owner node(s) {missing} do not release their "
                    "head (their node-config dfzsl-release-head is false); use "
                    "dfzsl-directions=blackbox"
                )
            parts = [(self.roster.covered[n], heads[n]) for n in self.roster.live]
            return merge_directions(parts, self.classes.num_classes), []
        # keep what verification will ask in reserve, as AZSL's generator rounds do
        reserve = self.cfg.dfzsl_samples * int(self.roster.declarations().trainable.size)
        nodes = self.ask_with_budget(self.cfg.dfzsl_probes, "dfzsl-probe", reserve)
        probes = probe_features(dim, self.cfg.dfzsl_probes, self.cfg.seed)
        replies = self.delivery.ask(grid, self.configure_probe(probes, nodes))
        if not replies:
            raise OwnerError("no owner answered the dfzsl probes; see the failures above")
        answers = {n: a[0] for n, a in replies.items()}
        return self.aggregate_probe(answers, probes), list(replies)

    # -- virtual features -------------------------------------------------------------------

    def virtual_features(
        self, grid: Grid, learner: DFZSLLearner, directions: np.ndarray, phase: str
    ) -> tuple[float, Verified, dict[str, list[int]]]:
        """The concentration (DFZSL's rule, or the dimension-aware ladder: one verification
        round trip), then the virtual features and their verification (one more); and who
        answered each of those round trips."""
        self._without_direction(learner, directions)
        dim = directions.shape[1]
        contributors = {}
        if self.cfg.dfzsl_kappa == "dimension":
            xl, yl, rungs = learner.ladder(directions)
            ladder = self.verify(grid, xl, yl, "dfzsl-ladder")
            contributors["dfzsl-ladder"] = ladder.nodes
            kappa = learner.ladder_kappa(ladder.keep, rungs, dim)
        else:
            kappa = learner.rule_kappa(directions)
        x, y = learner.virtual(directions, kappa)
        verified = self.verify(grid, x, y, phase)
        contributors[phase] = verified.nodes
        log(
            INFO,
            "DFZSL: %d owner(s), kappa %.1f (%s), %d/%d virtual features accepted",
            len(self.roster.live),
            kappa,
            self.cfg.dfzsl_kappa,
            int(verified.keep.sum()),
            verified.y.size,
        )
        return kappa, verified, contributors

    @staticmethod
    def _without_direction(learner: DFZSLLearner, directions: np.ndarray) -> None:
        """Classes whose only owners dropped out before their directions were recovered (a
        refused or missing probe answer) have no direction to sample around: the learner
        treats them as classes no teacher knows, instead of failing the run on a zero
        direction."""
        lost = learner.known[np.linalg.norm(directions[learner.known], axis=1) < 1e-12]
        if lost.size:
            log(
                WARNING,
                "DFZSL: no direction for class(es) %s (their owners dropped out): learnt as "
                "classes no teacher knows",
                lost.tolist(),
            )
            learner.known = np.setdiff1d(learner.known, lost)
            learner.unseen = np.union1d(learner.unseen, lost)


class DFZSLStrategy(DFZSLPhases, Method):
    """Runs DFZSL over a Flower Grid for any number of owners."""

    def learn(
        self,
        *,
        grid: Grid,
        setup: dict[int, schema.Payload],
        declared: ensemble.Declarations,
        events: RunEvents,
    ) -> Learnt:
        """Directions, concentration, virtual features, learning (set-up and evaluation are
        the loop's: :meth:`strategies.methods.Method.start`)."""
        t0, phases = time.monotonic(), {}
        heads = self.read_cosine_setup(setup)
        learner = DFZSLLearner(
            DFZSLSettings.from_config(self.cfg),
            self.classes.semantics,
            declared.trainable,
            np.setdiff1d(declared.unseen, declared.trainable),
            self.device,
        )
        phases["setup"] = time.monotonic() - t0
        t = time.monotonic()
        directions, probed = self.directions(grid, heads, declared.dim)
        contributors = {"dfzsl-probe": probed} if probed else {}
        phases["directions"] = time.monotonic() - t
        t = time.monotonic()
        kappa, verified, asked = self.virtual_features(grid, learner, directions, "verification")
        contributors |= asked
        phases["virtual"] = time.monotonic() - t
        t = time.monotonic()
        keep = verified.keep
        if not keep.any():
            raise RuntimeError(
                "the teachers accepted no virtual feature; raise dfzsl-kappa-factor (more "
                "concentrated samples) or use dfzsl-kappa=dimension"
            )
        models = learner.fit(verified.x[keep], verified.y[keep], directions, kappa)
        phases["learning"] = time.monotonic() - t
        method: dict[str, Any] = {"name": "dfzsl", "ladder_rungs": list(LADDER), **learner.report}
        return Learnt(
            models=models,
            saved={"classifier": models["classifier"]},
            verification=verified.report,
            contributors=contributors,
            phase_seconds=phases,
            method=method,
        )
