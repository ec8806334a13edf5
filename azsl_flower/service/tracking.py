"""What a run reports while it goes on: events, printed to the log and written to TensorBoard.

The strategy emits events (:class:`RunEvents`): a generator round with its statistics and
each owner's queries and bytes so far, a student (or classifier) epoch, and the finished
run. :class:`LogEvents` prints them; :class:`TensorBoardObserver` writes scalars and
forwards every event to the log. With ``tensorboard-dir`` empty, logs are written to a
hidden folder under ``output-dir`` while the run goes on and moved into ``<run
folder>/tb`` when the run folder is written (a failed run leaves none).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.common.logger import log

from azsl_flower.common.config import RunConfig

if TYPE_CHECKING:
    from azsl_flower.service.results import RunResult

__all__ = ["LogEvents", "OwnerTotals", "RunEvents", "TensorBoardObserver", "open_observer"]


@dataclass
class OwnerTotals:
    """Per-owner and overall traffic after a round trip: what an observer may show."""

    queries: dict[int, int] = field(default_factory=dict)  # generated samples answered
    bytes_sent: dict[int, int] = field(default_factory=dict)
    bytes_received: dict[int, int] = field(default_factory=dict)
    round_trips: int = 0
    total_sent: int = 0
    total_received: int = 0


class RunEvents:
    """Receives a run's events; the base class ignores them all."""

    def round_done(self, r: int, total: int, stats: dict[str, float], owners: OwnerTotals) -> None:
        """A generator round (one round trip's worth of updates) finished."""

    def epoch_done(self, phase: str, epoch: int, total: int, loss: float) -> None:
        """A student or classifier epoch finished (``epoch`` from 1)."""

    def finished(self, result: RunResult) -> None:
        """The run is evaluated."""


class LogEvents(RunEvents):
    """Progress lines in Flower's log: every generator round, every 10th epoch."""

    def round_done(self, r: int, total: int, stats: dict[str, float], owners: OwnerTotals) -> None:
        log(INFO, "[generator %d/%d] %s", r, total, _shown(stats))

    def epoch_done(self, phase: str, epoch: int, total: int, loss: float) -> None:
        if epoch % 10 == 0 or epoch == total:
            log(INFO, "[%s %d/%d] loss=%.3f", phase, epoch, total, loss)


def _shown(stats: dict[str, float]) -> str:
    return " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
        for k, v in stats.items()
        if k != "round"
    )


def _run_name(cfg: RunConfig) -> str:
    label = cfg.experiment or cfg.dataset
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{cfg.scenario}-{cfg.teacher}-seed{cfg.seed}"


class TensorBoardObserver(RunEvents):
    """Writes every event as TensorBoard scalars and forwards it to ``forward``."""

    def __init__(self, cfg: RunConfig, forward: RunEvents | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.forward = cfg, forward or RunEvents()
        if cfg.tensorboard_dir:
            self.dir = Path(cfg.tensorboard_dir).expanduser() / _run_name(cfg)
            self.staged = False
        else:  # moved into the run folder at the end, like everything else the run writes
            root = Path(cfg.output_dir).expanduser()
            self.dir = root / f".incomplete-tb-{_run_name(cfg)}-{time.time_ns()}"
            self.staged = True
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.dir))
        self.writer.add_text("config", _config_markdown(cfg.as_dict()), 0)
        self.step = 0
        log(INFO, "TensorBoard logs: %s (tensorboard --logdir %s)", self.dir, self.dir.parent)

    def round_done(self, r: int, total: int, stats: dict[str, float], owners: OwnerTotals) -> None:
        self.forward.round_done(r, total, stats, owners)
        for key, value in stats.items():
            if key != "round" and isinstance(value, int | float):
                self.writer.add_scalar(f"generator/{key}", float(value), r)
        self.step = r
        self._owners(r, owners)
        self.writer.flush()

    def epoch_done(self, phase: str, epoch: int, total: int, loss: float) -> None:
        self.forward.epoch_done(phase, epoch, total, loss)
        self.writer.add_scalar(f"{phase}/loss", float(loss), epoch)
        self.writer.flush()

    def _owners(self, step: int, owners: OwnerTotals) -> None:
        """Queries (generated samples answered) and bytes each way, per owner node."""
        for node, used in owners.queries.items():
            self.writer.add_scalar(f"owner/{node}/queries", float(used), step)
        for node, nbytes in owners.bytes_sent.items():
            self.writer.add_scalar(f"owner/{node}/bytes_sent", float(nbytes), step)
        for node, nbytes in owners.bytes_received.items():
            self.writer.add_scalar(f"owner/{node}/bytes_received", float(nbytes), step)
        self.writer.add_scalar("traffic/round_trips", float(owners.round_trips), step)
        self.writer.add_scalar("traffic/bytes_sent", float(owners.total_sent), step)
        self.writer.add_scalar("traffic/bytes_received", float(owners.total_received), step)

    def finished(self, result: RunResult) -> None:
        """Verification and evaluation of a finished run."""
        self.forward.finished(result)
        step = max(self.step, len(result.history))
        for key in ("pass_rate", "kept", "generated"):
            if key in result.verification:
                value = float(result.verification[key])  # type: ignore[arg-type]
                self.writer.add_scalar(f"verification/{key}", value, step)
        models = {"teacher": result.teacher, "student": result.student, **result.other_models}
        for name, metrics in models.items():
            for key in ("zsl", "u", "s", "h"):
                self.writer.add_scalar(f"eval/{name}/{key}", float(metrics[key]), step)
        self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def discard(self) -> None:
        """A failed run: close, and remove staged logs (an explicit tensorboard-dir keeps them)."""
        self.close()
        if self.staged:
            shutil.rmtree(self.dir, ignore_errors=True)


def open_observer(cfg: RunConfig, forward: RunEvents | None = None) -> TensorBoardObserver | None:
    """The run's observer, or None with tensorboard=false (or TensorBoard not installed)."""
    if not cfg.tensorboard:
        return None
    try:
        return TensorBoardObserver(cfg, forward)
    except ImportError as exc:
        log(WARNING, "no TensorBoard logs (%s); pip install tensorboard, or tensorboard=false", exc)
        return None


def _config_markdown(config: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    return f"| key | value |\n|---|---|\n{rows}"
