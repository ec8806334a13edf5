"""DFZSL's learning at the service, between the round trips: concentration, virtual
features, alignment, unseen-class features and the GZSL classifier.

It knows class semantics, what the owners declared, and the directions recovered from the
teachers; the only features it holds are the ones it sampled or generated itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from azsl_flower.common.config import RunConfig
from azsl_flower.service.dfzsl.alignment import RidgeAlignment
from azsl_flower.service.dfzsl.classifier import cosine_prototypes, train_cosine_classifier
from azsl_flower.service.dfzsl.generator import train_cvae
from azsl_flower.service.dfzsl.kappa import dfzsl_kappa, kappa_for_cosine, mean_cosine
from azsl_flower.service.dfzsl.vmf import sample_vmf

__all__ = ["LADDER", "DFZSLLearner", "DFZSLSettings"]

# expected cosines to the class direction the dimension-aware rule tries (one round trip)
LADDER = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7)
ACCEPT = 0.5  # the rule's cosine: the lowest rung at which the teachers accept half


@dataclass(frozen=True)
class DFZSLSettings:
    """The run-config keys DFZSL's learning reads."""

    kappa_rule: str
    kappa_factor: float
    samples: int
    alignment: str
    ridge: float
    generator: str
    noise_dim: int
    epochs: int
    lr: float
    seed: int

    @classmethod
    def from_config(cls, cfg: RunConfig) -> DFZSLSettings:
        return cls(
            kappa_rule=cfg.dfzsl_kappa,
            kappa_factor=cfg.dfzsl_kappa_factor,
            samples=cfg.dfzsl_samples,
            alignment=cfg.dfzsl_alignment,
            ridge=cfg.dfzsl_ridge,
            generator=cfg.dfzsl_generator,
            noise_dim=cfg.noise_dim,
            epochs=cfg.student_epochs,
            lr=cfg.lr_student,
            seed=cfg.seed,
        )


@dataclass
class DFZSLLearner:
    """One run's DFZSL learning; ``report`` collects what results.json shows of it."""

    settings: DFZSLSettings
    semantics: np.ndarray  # C x A, every class
    known: np.ndarray  # classes some teacher covers: they have a recovered direction
    unseen: np.ndarray  # classes no teacher covers (inductive: the unseen classes)
    device: torch.device
    report: dict[str, object] = field(default_factory=dict)

    # -- concentration ----------------------------------------------------------------------

    def rule_kappa(self, directions: np.ndarray) -> float:
        """DFZSL's angle rule on the known directions (times ``dfzsl-kappa-factor``)."""
        kappa = dfzsl_kappa(directions[self.known], self.settings.kappa_factor)
        dim = directions.shape[1]
        self.report |= {"kappa_rule": "dfzsl", "kappa": kappa}
        self.report["expected_cosine"] = mean_cosine(kappa, dim)
        return kappa

    def ladder(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples of every known class at each rung of LADDER: (x, y, rung index)."""
        dim = directions.shape[1]
        per = max(4, self.settings.samples // len(LADDER))
        xs, ys, rungs = [], [], []
        for i, cos in enumerate(LADDER):
            kappa = kappa_for_cosine(cos, dim)
            x, y = sample_vmf(
                directions[self.known], kappa, per, self.settings.seed + 101 * i, self.known
            )
            xs.append(x)
            ys.append(y)
            rungs.append(np.full(y.size, i))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(rungs)

    def ladder_kappa(self, accepted: np.ndarray, rungs: np.ndarray, dim: int) -> float:
        """Dimension-aware rule: the kappa whose expected cosine is the lowest rung at which
        the teachers accept at least half of the samples (times the factor)."""
        rates = [float(accepted[rungs == i].mean()) for i in range(len(LADDER))]
        ok = [c for c, r in zip(LADDER, rates, strict=True) if r >= ACCEPT]
        cosine = ok[0] if ok else LADDER[-1]
        kappa = kappa_for_cosine(cosine, dim) * self.settings.kappa_factor
        self.report |= {
            "kappa_rule": "dimension",
            "kappa": kappa,
            "expected_cosine": mean_cosine(kappa, dim),
            "ladder": {str(c): r for c, r in zip(LADDER, rates, strict=True)},
        }
        return kappa

    def virtual(self, directions: np.ndarray, kappa: float) -> tuple[np.ndarray, np.ndarray]:
        """``dfzsl-samples`` virtual features of each known class around its direction."""
        s = self.settings
        return sample_vmf(directions[self.known], kappa, s.samples, s.seed, self.known)

    # -- alignment, generator, classifier ---------------------------------------------------

    def align(self, directions: np.ndarray) -> np.ndarray:
        """Every class's condition: its aligned direction (the ridge map fitted on the known
        classes' recovered directions), or, as the ablation, its raw semantic vector."""
        if self.settings.alignment != "ridge":
            return self.semantics.astype(np.float32)
        align = RidgeAlignment(self.settings.ridge)
        self.report["alignment_misfit"] = align.fit(
            self.semantics[self.known], directions[self.known]
        )
        return align.predict(self.semantics)

    def unseen_features(
        self, x: np.ndarray, y: np.ndarray, cond: np.ndarray, kappa: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features of the classes no teacher knows: vMF around their aligned direction, or
        a conditional VAE trained on the known classes' verified virtual features (x, y)."""
        s, dim = self.settings, x.shape[1]
        if not self.unseen.size:  # every class has a teacher (transductive): nothing to invent
            return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
        if s.generator == "vmf":
            return sample_vmf(cond[self.unseen], kappa, s.samples, s.seed + 1, self.unseen)
        cvae = train_cvae(x, cond[y], s.noise_dim, s.epochs, s.lr, s.seed, self.device)
        xu = cvae.generate(cond[self.unseen], s.samples, s.seed + 1)
        return xu, np.repeat(self.unseen, s.samples)

    def fit(
        self, x: np.ndarray, y: np.ndarray, directions: np.ndarray, kappa: float
    ) -> dict[str, torch.nn.Module]:
        """From the verified virtual features (x, y) of the known classes: align, generate
        features of classes no teacher knows, train the GZSL classifier. Models by name,
        the main one first."""
        s, num_classes, dim = self.settings, self.semantics.shape[0], directions.shape[1]
        cond = self.align(directions)
        xu, yu = self.unseen_features(x, y, cond, kappa)
        init = np.zeros((num_classes, dim), dtype=np.float32)
        init[self.known] = directions[self.known]
        for c in self.unseen:  # aligned direction, or the generated features' mean direction
            init[c] = cond[c] if s.alignment == "ridge" else xu[yu == c].mean(0)
        clf = train_cosine_classifier(
            np.concatenate([x, xu]),
            np.concatenate([y, yu]),
            init,
            s.epochs,
            s.lr,
            s.seed,
            self.device,
        )
        self.report["unseen_generated"] = int(yu.size)
        return {"classifier": clf, "prototypes": cosine_prototypes(init)}
