"""Networks of the AZSL paper and the small training loops both roles share."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

__all__ = [
    "TEACHER_NETWORKS",
    "CosineClassifier",
    "Generator",
    "classifier",
    "teacher_network",
    "teacher_network_of",
    "resolve_device",
    "fit",
    "predict_logits",
    "cuda_problem",
    "seed_everything",
]


def cuda_problem(name: str) -> str | None:
    """Why ``name`` (cuda or cuda:N) cannot be used here, or None when it can."""
    if not torch.cuda.is_available():
        return (
            f"cuda is unavailable (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}; no GPU visible)"
        )
    index = torch.device(name).index
    if index is not None and index >= torch.cuda.device_count():
        return f"device {name}: only {torch.cuda.device_count()} GPU(s) visible"
    return None


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N'; 'auto' and an absent GPU fall back to the CPU
    (CI has none); a GPU index this machine does not have is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            return torch.device("cpu")
        problem = cuda_problem(name)
        if problem:
            raise ValueError(f"{problem}.")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N.")


def seed_everything(seed: int) -> None:
    """Seed torch's and NumPy's global generators (module-level draws, weight inits)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def classifier(in_dim: int, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """Teacher/student/classifier MLP: in -> 1024 -> 512 -> classes, LeakyReLU(0.2)."""
    return nn.Sequential(
        nn.Linear(in_dim, 1024),
        nn.LeakyReLU(0.2),
        nn.Dropout(dropout),
        nn.Linear(1024, 512),
        nn.LeakyReLU(0.2),
        nn.Dropout(dropout),
        nn.Linear(512, num_classes),
    )


TEACHER_NETWORKS = ("mlp", "linear")


def teacher_network(kind: str, in_dim: int, num_classes: int) -> nn.Sequential:
    """An owner's teacher: ``mlp`` (the paper's :func:`classifier`) or ``linear`` (softmax
    regression). DP-SGD's noise grows with the parameter count, so a DP owner is better
    served by the linear one (docs/benchmarks/dp-settings-val.json)."""
    if kind == "mlp":
        return classifier(in_dim, num_classes)
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, num_classes))
    raise ValueError(f"teacher network {kind!r}: choose one of {list(TEACHER_NETWORKS)}")


def teacher_network_of(weights: dict[str, np.ndarray], in_dim: int, num_classes: int) -> str:
    """Which teacher network a state dict (arrays by name) is, by its shapes; "" when none."""
    shapes = {n: tuple(np.shape(w)) for n, w in weights.items()}
    for kind in TEACHER_NETWORKS:
        want = teacher_network(kind, in_dim, num_classes).state_dict()
        if shapes == {n: tuple(t.shape) for n, t in want.items()}:
            return kind
    return ""


class CosineClassifier(nn.Module):
    """Logits = cos(x, w_k) / temperature: no bias, on L2-normalised inputs (DFZSL's teacher
    and its GZSL classifier). Only directions matter, so a feature's scale never does."""

    def __init__(self, in_dim: int, num_classes: int, temperature: float = 0.05) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"cosine classifier temperature={temperature!r}: a finite number > 0")
        self.weight = nn.Parameter(torch.randn(num_classes, in_dim) * 0.01)
        self.register_buffer("temperature", torch.tensor([float(temperature)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.nn.functional.normalize(self.weight, dim=1)
        return torch.nn.functional.normalize(x, dim=1) @ w.T / self.temperature

    def directions(self) -> torch.Tensor:
        """The unit class directions (rows)."""
        return torch.nn.functional.normalize(self.weight.detach(), dim=1)


class Generator(nn.Module):
    """G(z|a): [a, z] -> hidden (LeakyReLU) -> feature dim, ReLU output (features are >= 0)."""

    def __init__(self, sem_dim: int, noise_dim: int, out_dim: int, hidden: int = 4096) -> None:
        super().__init__()
        self.sem_dim, self.noise_dim, self.out_dim = sem_dim, noise_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(sem_dim + noise_dim, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, out_dim),
            nn.ReLU(),
        )

    def forward(self, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([a, z], dim=1))


def fit(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 256,
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Minibatch Adam on (x, target) already on the model's device; returns the last loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    model.train()
    last = float("nan")
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(x.device)
        total, batches = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = loss_fn(model(x[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        last = total / max(batches, 1)
        if progress is not None:
            progress(epoch, last)
    model.eval()
    return last


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    model.eval()
    if x.shape[0] == 0:  # an owner may hold an empty test split
        return model(x)
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: dict[str, np.ndarray]) -> nn.Module:
    expected = model.state_dict()
    if set(state) != set(expected):
        raise ValueError(f"weights have keys {sorted(state)}, model expects {sorted(expected)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(
                f"weight {k}: shape {v.shape}, model expects {tuple(expected[k].shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model
