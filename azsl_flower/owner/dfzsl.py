"""The owner's side of scenario ``dfzsl``: a cosine teacher and its answers.

DFZSL (Tang et al., AAAI 2024) needs a teacher whose logits are cosines between an
L2-normalised feature and one unit direction per class, divided by a temperature. The owner
trains it at home on its private features; the service only ever sends probe features and
reads logits (black-box), or reads the directions themselves where the owner releases its
head. Which of the two, and the temperature, are the owner's choice: its policy
(``dfzsl-release-head``, ``dfzsl-temperature`` in :mod:`azsl_flower.owner.policy`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from azsl_flower.common.models import CosineClassifier, fit
from azsl_flower.owner.files import open_private, write_private

__all__ = ["probe_logits", "train_cosine_teacher"]


def train_cosine_teacher(
    x: np.ndarray,
    y_local: np.ndarray,
    num_classes: int,
    temperature: float,
    device: torch.device,
    path: Path,
    epochs: int,
    lr: float,
    seed: int,
    train: bool = True,
) -> CosineClassifier | None:
    """A bias-free cosine classifier on L2-normalised features, from the disk cache or
    trained (cross-entropy) and cached atomically, mode 0600 (a teacher is private too).
    ``train=False``: only from the cache (None when it holds none)."""
    teacher = CosineClassifier(x.shape[1], num_classes, temperature).to(device)
    try:
        with open_private(path) as fh:
            teacher.load_state_dict(torch.load(fh, map_location=device, weights_only=True))
        return teacher.eval()
    except FileNotFoundError:
        if not train:
            return None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        teacher.weight.data.normal_(0.0, 0.01)
    xs = F.normalize(torch.from_numpy(x).float(), dim=1).to(device)
    fit(
        teacher,
        xs,
        torch.from_numpy(y_local).long().to(device),
        F.cross_entropy,
        epochs=epochs,
        lr=lr,
        batch_size=128,
        seed=seed,
    )
    write_private(path, lambda fh: torch.save(teacher.state_dict(), fh))
    return teacher.eval()


@torch.no_grad()
def probe_logits(teacher: torch.nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    """The cosine teacher's logits on probe features (one column per covered class)."""
    teacher.eval()
    xs = torch.from_numpy(np.ascontiguousarray(x)).float().to(device)
    out = [teacher(xs[i : i + 4096]) for i in range(0, xs.shape[0], 4096)]
    logits = torch.cat(out) if out else teacher(xs)
    return logits.cpu().numpy().astype(np.float32)
