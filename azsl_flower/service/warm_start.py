"""The hybrid (issue 14): DFZSL's virtual features as the AZSL generator's starting point.

AZSL's generator G(z|a) starts from random weights and learns each class only through the
owners' feedback, round trip by round trip. DFZSL gets a first picture of every seen class
in a few round trips (probes -> class directions -> kappa -> verified vMF virtual features)
and, through its alignment, of the unseen classes too. Here G is first fitted to those
features by regression; AZSL's feedback rounds then go on from there.

The virtual features are unit vectors (the cosine teacher reads directions); AZSL's
teachers read features at their real scale, and G's output is non-negative (ReLU). So the
features G is fitted to are ``max(s * v, 0)``, with the scale ``s`` the one at which the
AZSL teachers accept the most of them (:data:`SCALES`, one verification round trip).
Nothing here reads a real feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from azsl_flower.common.models import Generator

__all__ = [
    "LR",
    "SCALES",
    "SCALE_SAMPLES",
    "WarmStartFit",
    "as_features",
    "choose_scale",
    "fit_generator",
    "scale_ladder",
]

# feature norms the scale ladder tries (real features' norms are unknown to the service)
SCALES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
SCALE_SAMPLES = 10  # virtual features per class and scale sent to the AZSL teachers
# the regression's step size: AZSL's 1e-3 (made for small steps towards nearby targets)
# leaves G's squared error on diffuse vMF targets where it started; 1e-4 gets it near the
# best a class-mean fit can do (measured on synthetic vMF targets)
LR = 1e-4


def as_features(v: np.ndarray, scale: float) -> np.ndarray:
    """Unit virtual features at norm ``scale``, clipped to what G can output (>= 0)."""
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"feature scale {scale!r}: a finite number > 0")
    return np.maximum(np.asarray(v, dtype=np.float32) * np.float32(scale), 0.0)


def scale_ladder(
    v: np.ndarray, y: np.ndarray, per_class: int = SCALE_SAMPLES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``per_class`` virtual features of each class at every scale of SCALES:
    (features, labels, scale index), for one verification round trip."""
    if v.shape[0] != y.size or y.size == 0:
        raise ValueError(f"{v.shape[0]} virtual features for {y.size} labels")
    pick = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)])
    xs = [as_features(v[pick], s) for s in SCALES]
    rungs = np.repeat(np.arange(len(SCALES)), pick.size)
    return np.concatenate(xs), np.tile(y[pick], len(SCALES)), rungs


def choose_scale(accepted: np.ndarray, rungs: np.ndarray) -> tuple[float, dict[str, float]]:
    """The scale whose features the AZSL teachers accept most often (the smaller on ties);
    (scale, pass rate by scale)."""
    rates = [float(accepted[rungs == i].mean()) for i in range(len(SCALES))]
    return SCALES[int(np.argmax(rates))], {str(s): r for s, r in zip(SCALES, rates, strict=True)}


@dataclass(frozen=True)
class WarmStartFit:
    """How the regression went: G's loss on the virtual features before and after."""

    samples: int
    classes: int
    loss_before: float
    loss_after: float


def fit_generator(
    generator: Generator,
    semantics: torch.Tensor,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    seed: int,
    batch_size: int = 256,
    lr: float = LR,
) -> WarmStartFit:
    """Regress G(a_y, z) onto the features ``x`` of classes ``y`` (z ~ N(0, I)) for
    ``epochs`` passes: the same squared error AZSL's feedback updates minimise."""
    if x.shape[0] != y.size or y.size == 0:
        raise ValueError(f"warm start: {x.shape[0]} features for {y.size} labels")
    if x.shape[1] != generator.out_dim:
        raise ValueError(f"warm start: features are {x.shape[1]}-d, G outputs {generator.out_dim}")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"warm-start-epochs={epochs!r}: a whole number >= 1")
    device = semantics.device
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    ys = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))

    def loss_on(idx: torch.Tensor) -> torch.Tensor:
        z = torch.randn(idx.numel(), generator.noise_dim, generator=gen).to(device)
        out = generator(semantics[ys[idx]], z)
        return 0.5 * (out - xs[idx]).pow(2).sum(1).mean()

    def mean_loss() -> float:
        with torch.no_grad():
            parts = [
                loss_on(torch.arange(i, min(i + 4096, ys.numel()), device=device))
                for i in range(0, ys.numel(), 4096)
            ]
            return float(torch.stack(parts).mean())

    before = mean_loss()
    generator.train()
    for _ in range(int(epochs)):
        perm = torch.randperm(ys.numel(), generator=gen).to(device)
        for i in range(0, ys.numel(), batch_size):
            loss = loss_on(perm[i : i + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return WarmStartFit(int(y.size), int(np.unique(y).size), before, mean_loss())
