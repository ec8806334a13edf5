"""The smallest method that uses the owners through the real phases: a plug-in for tests.

After the loop's set-up, one verification round trip of random features for the classes
the owners can teach; a nearest-class-mean model on the ones they accept; the loop sends it
to the owners' evaluation. Nothing is registered: run-config
``method=tests.plugins.tiny_method:TinyMethod`` picks it.
"""

from __future__ import annotations

import numpy as np
from flwr.serverapp import Grid

from azsl_flower.service import ensemble
from azsl_flower.service.baseline import class_means, ncm_classifier
from azsl_flower.service.tracking import RunEvents
from azsl_flower.wire import schema
from strategies.methods import Learnt, Method

__all__ = ["PER_CLASS", "TinyMethod"]

PER_CLASS = 5  # random features per trainable class sent to verification


class TinyMethod(Method):
    """One verification, one NCM model: nothing learnt, everything asked of real owners."""

    def learn(
        self,
        *,
        grid: Grid,
        setup: dict[int, schema.Payload],
        declared: ensemble.Declarations,
        events: RunEvents,
    ) -> Learnt:
        rng = np.random.default_rng(self.cfg.seed)
        y = np.repeat(declared.trainable, PER_CLASS).astype(np.int64)
        x = np.abs(rng.normal(size=(y.size, declared.dim))).astype(np.float32)
        verified = self.verify(grid, x, y, "verification")
        keep = verified.keep if verified.keep.any() else np.ones_like(verified.keep)
        means, classes = class_means(x[keep], y[keep], self.classes.num_classes)
        model = ncm_classifier(means, classes, self.classes.num_classes)
        if model is None:
            raise RuntimeError("tiny method: too many classes for the NCM model")
        return Learnt(
            models={"student": model.to(self.device)},
            saved={"student": model},
            verification=verified.report,
            contributors={"verification": verified.nodes},
            method={"name": "tiny", "verified": int(verified.keep.sum())},
        )
