"""A conditional generator of unseen-class features: a small conditional VAE.

Trained on (condition, virtual feature) pairs of the seen classes, where the condition is
a class's aligned direction (or, as the ablation, its raw semantic vector); it then
generates features for unseen classes from their conditions. Outputs are unit vectors, as
the virtual features are. (DFZSL uses TF-VAEGAN; a VAE is the part of it that needs no
critic, and is what a 2-core CPU trains in seconds.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConditionalVAE", "train_cvae"]

RECON_WEIGHT = 100.0  # unit-vector reconstruction error is small; keep it above the KL


class ConditionalVAE(nn.Module):
    """q(z | x, c) and p(x | z, c); x on the unit sphere."""

    def __init__(self, dim: int, cond_dim: int, noise_dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.encoder = nn.Sequential(
            nn.Linear(dim + cond_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * noise_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(noise_dim + cond_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, dim)
        )

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.decoder(torch.cat([z, c], 1)), dim=1)

    def loss(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.encoder(torch.cat([x, c], 1)).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = (self.decode(z, c) - x).pow(2).sum(1).mean()
        kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum(1).mean()
        return RECON_WEIGHT * recon + kl

    @torch.no_grad()
    def generate(self, cond: np.ndarray, per_class: int, seed: int) -> np.ndarray:
        """``per_class`` features for each condition row (rows repeat per class)."""
        device = next(self.parameters()).device
        c = torch.from_numpy(np.repeat(cond, per_class, axis=0)).float().to(device)
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(c.shape[0], self.noise_dim, generator=gen).to(device)
        self.eval()
        return self.decode(z, c).cpu().numpy().astype(np.float32)


def train_cvae(
    x: np.ndarray,
    cond: np.ndarray,
    noise_dim: int,
    epochs: int,
    lr: float,
    seed: int,
    device: torch.device,
) -> ConditionalVAE:
    """Fit the conditional VAE on (virtual feature, its class's condition) pairs."""
    if x.shape[0] != cond.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{x.shape[0]} features for {cond.shape[0]} conditions")
    torch.manual_seed(seed)
    model = ConditionalVAE(x.shape[1], cond.shape[1], noise_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xs = torch.from_numpy(x).float().to(device)
    cs = torch.from_numpy(cond).float().to(device)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(xs.shape[0], generator=gen).to(device)
        for i in range(0, xs.shape[0], 256):
            idx = perm[i : i + 256]
            loss = model.loss(xs[idx], cs[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()
