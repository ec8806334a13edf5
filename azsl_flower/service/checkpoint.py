"""Service checkpoints: a crashed or stopped ServerApp resumes its generator phase.

After every ``checkpoint-every`` generator rounds the service saves what the next rounds
depend on: generator and optimiser (and the black-box surrogate with its replay buffer),
the service's RNG and the global torch/NumPy/Python RNG states, the round reached, the
training history and who answered. The file is named by a fingerprint of the run-config
keys that change the result, so only a run with the same settings resumes from it; a run
that finishes removes it (its models are in the run folder). Owners need no checkpoint:
their teachers are cached on their disk, so a restarted SuperNode does not retrain.

Files are written atomically (temporary file + rename) and loaded with
``torch.load(weights_only=True)``: a checkpoint holds tensors and plain values only.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.common.logger import log

from azsl_flower.common.config import ConfigError, RunConfig

VERSION = 1

# Keys that change how a run talks or where it writes, not what it computes.
OPERATIONAL = frozenset(
    {
        "output-dir",
        "checkpoint-dir",
        "checkpoint-every",
        "resume",
        "cache-dir",
        "device",
        "timeout",
        "poll-interval",
        "max-retries",
        "quorum",
        "encryption",
        "service-key",
        "owner-keys",
        "fault-tamper",
        "fault-replay",
        "experiment",  # a label: the settings it composed are all in the fingerprint
        "tensorboard",
        "tensorboard-dir",
    }
)


def fingerprint(cfg: RunConfig) -> str:
    """Hash of the settings a resumed run must share with the run that saved the checkpoint."""
    relevant = {k: v for k, v in cfg.as_dict().items() if k not in OPERATIONAL}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass(frozen=True)
class CheckpointSettings:
    """The run-config values a :class:`Checkpointer` reads."""

    folder: Path  # checkpoint-dir, or the output-dir's checkpoints/
    every: int  # checkpoint-every (0: never)
    rounds: int
    resume: str

    @classmethod
    def from_config(cls, cfg: RunConfig) -> CheckpointSettings:
        folder = cfg.checkpoint_dir or str(Path(cfg.output_dir) / "checkpoints")
        return cls(Path(folder).expanduser(), cfg.checkpoint_every, cfg.rounds, cfg.resume)


class Checkpointer:
    """Saves and finds the checkpoint of one run configuration (``fingerprint``: its
    :func:`fingerprint`, which names the file)."""

    def __init__(self, settings: CheckpointSettings, fingerprint: str) -> None:
        self.settings = settings
        self.path = settings.folder / f"azsl-{fingerprint}.pt"

    def due(self, round_: int) -> bool:
        every = self.settings.every
        return every > 0 and (round_ % every == 0 or round_ == self.settings.rounds)

    def save(self, round_: int, service_state: dict[str, Any], extra: dict[str, Any]) -> None:
        """Atomically replace the checkpoint with the state after ``round_``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "version": VERSION,
            "fingerprint": self.path.stem,
            "round": round_,
            "service": service_state,
            "rng": _rng_states(),
            "extra": extra,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state (RNGs restored), or None when there is nothing to resume."""
        if not self.path.is_file():
            return None
        if self.settings.resume == "never":
            log(WARNING, "resume='never': starting over; %s will be replaced", self.path)
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            raise ConfigError(
                f"checkpoint {self.path} is unreadable ({exc}); delete it or set "
                "resume='never' to start this run over"
            ) from None
        if blob.get("version") != VERSION or blob.get("fingerprint") != self.path.stem:
            raise ConfigError(
                f"checkpoint {self.path} was written by another version or settings; delete "
                "it or set resume='never' to start over"
            )
        if blob["round"] >= self.settings.rounds:
            log(WARNING, "checkpoint %s already holds all %d rounds", self.path, blob["round"])
        _restore_rng(blob["rng"])
        log(INFO, "resuming from %s: generator rounds 1-%d are done", self.path, blob["round"])
        return blob

    def finish(self) -> None:
        """The run completed and wrote its models: nothing is left to resume."""
        self.path.unlink(missing_ok=True)
