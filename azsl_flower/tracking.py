"""TensorBoard logs of a run, written by an observer on the strategy's progress callback.

The strategy reports generator rounds and student (or classifier) epochs through
``progress``; after each round the observer adds what the service knows at that moment
(queries and bytes per owner) and, once the run is over, the
verification pass rate and the evaluation (ZSL T1, u, s, H). With ``tensorboard-dir``
empty, logs are written to a hidden folder under ``output-dir`` while the run goes on and
moved into ``<run folder>/tb`` when the run folder is written (a failed run leaves none).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.common.logger import log

from azsl_flower.config import RunConfig

__all__ = ["TensorBoardObserver", "open_observer"]

Progress = Callable[[str, int, int, dict[str, float]], None]


def _run_name(cfg: RunConfig) -> str:
    label = cfg.experiment or cfg.dataset
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{label}-{cfg.scenario}-{cfg.teacher}-seed{cfg.seed}"


class TensorBoardObserver:
    """Callable progress callback: forwards to ``forward`` and writes TensorBoard scalars.

    ``source`` is the strategy (read only): its ``used`` (queries per owner) and
    ``traffic`` (bytes per owner) after each round trip.
    """

    def __init__(self, cfg: RunConfig, source: Any = None, forward: Progress | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.source, self.forward = cfg, source, forward
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

    def __call__(self, phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        if self.forward is not None:
            self.forward(phase, step, total, stats)
        for key, value in stats.items():
            if key != "round" and isinstance(value, int | float):
                self.writer.add_scalar(f"{phase}/{key}", float(value), step)
        if phase == "generator":  # round trips; student/classifier steps are epochs
            self.step = step
            self._owners(step)
        self.writer.flush()

    def _owners(self, step: int) -> None:
        """Queries (generated samples answered) and bytes each way, per owner node."""
        src = self.source
        if src is None:
            return
        for node, used in getattr(src, "used", {}).items():
            self.writer.add_scalar(f"owner/{node}/queries", float(used), step)
        traffic = getattr(src, "traffic", None)
        for attr, tag in (("sent_by_node", "bytes_sent"), ("received_by_node", "bytes_received")):
            for node, nbytes in getattr(traffic, attr, {}).items():
                self.writer.add_scalar(f"owner/{node}/{tag}", float(nbytes), step)
        if traffic is not None:
            self.writer.add_scalar("traffic/round_trips", float(traffic.rounds), step)
            self.writer.add_scalar("traffic/bytes_sent", float(traffic.bytes_sent), step)
            self.writer.add_scalar("traffic/bytes_received", float(traffic.bytes_received), step)

    def finish(self, out: Any) -> None:
        """Verification and evaluation of a finished run (``out``: the strategy's RunResult)."""
        step = max(self.step, len(out.history))
        for key in ("pass_rate", "kept", "generated"):
            if key in out.verification:
                self.writer.add_scalar(f"verification/{key}", float(out.verification[key]), step)
        models = {"teacher": out.teacher, "student": out.student, **out.extra_models}
        for name, metrics in models.items():
            for key in ("zsl", "u", "s", "h"):
                self.writer.add_scalar(f"eval/{name}/{key}", float(metrics[key]), step)
        self._owners(step)
        self.close()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def discard(self) -> None:
        """A failed run: close, and remove staged logs (an explicit tensorboard-dir keeps them)."""
        self.close()
        if self.staged:
            shutil.rmtree(self.dir, ignore_errors=True)


def open_observer(
    cfg: RunConfig, source: Any = None, forward: Progress | None = None
) -> TensorBoardObserver | None:
    """The run's observer, or None with tensorboard=false (or TensorBoard not installed)."""
    if not cfg.tensorboard:
        return None
    try:
        return TensorBoardObserver(cfg, source, forward)
    except ImportError as exc:
        log(WARNING, "no TensorBoard logs (%s); pip install tensorboard, or tensorboard=false", exc)
        return None


def _config_markdown(config: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in config.items())
    return f"| key | value |\n|---|---|\n{rows}"
