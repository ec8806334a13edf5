"""TensorBoard logs: the observer's tags, where the files go, and a failed run leaving none."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from azsl_flower.client_app import app as client_app
from azsl_flower.common.config import parse_run_config
from azsl_flower.service.tracking import (
    OwnerTotals,
    RunEvents,
    TensorBoardObserver,
    open_observer,
)
from simulations.run.inprocess import InProcessGrid
from strategies.server_app import run_azsl

pytest.importorskip("tensorboard")


def _events(folder: Path):  # noqa: ANN202 - tensorboard's EventAccumulator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def _tags(folder: Path) -> set[str]:
    return set(_events(folder).Tags()["scalars"])


def _fake_run() -> SimpleNamespace:
    metrics = {"zsl": 0.5, "u": 0.4, "s": 0.6, "h": 0.48}
    return SimpleNamespace(
        history=[{"round": 1}, {"round": 2}],
        verification={"pass_rate": 0.7, "kept": 7, "generated": 10},
        teacher=metrics,
        student=metrics,
        other_models={"classifier": metrics},
    )


class _Recorder(RunEvents):
    def __init__(self) -> None:
        self.rounds: list[tuple[int, int]] = []

    def round_done(self, r, total, stats, owners) -> None:  # noqa: ANN001
        self.rounds.append((r, total))


def test_observer_writes_expected_tags_and_forwards(tmp_path):
    cfg = parse_run_config({"output-dir": str(tmp_path / "out")})
    owners = OwnerTotals(
        queries={7: 512}, bytes_sent={7: 30}, bytes_received={7: 12}, round_trips=3,
        total_sent=30, total_received=12,
    )  # fmt: skip
    seen = _Recorder()
    obs = TensorBoardObserver(cfg, forward=seen)
    assert obs.staged and obs.dir.parent == tmp_path / "out"
    for r in (1, 2):
        obs.round_done(r, 2, {"teacher_ce": 2.0 / r, "regulariser": 1.0, "round": r}, owners)
    obs.finished(_fake_run())
    assert seen.rounds == [(1, 2), (2, 2)]
    tags = _tags(obs.dir)
    assert {
        "generator/teacher_ce",
        "generator/regulariser",
        "owner/7/queries",
        "owner/7/bytes_sent",
        "owner/7/bytes_received",
        "traffic/round_trips",
        "verification/pass_rate",
        "eval/student/h",
        "eval/teacher/u",
        "eval/classifier/s",
    } <= tags
    assert "generator/round" not in tags


def test_failed_run_discards_staged_logs_but_keeps_an_explicit_dir(tmp_path):
    staged = TensorBoardObserver(parse_run_config({"output-dir": str(tmp_path / "out")}))
    staged.discard()
    assert not staged.dir.exists()
    chosen = parse_run_config({"tensorboard-dir": str(tmp_path / "tb"), "experiment": "x"})
    kept = TensorBoardObserver(chosen)
    kept.round_done(1, 1, {"teacher_ce": 1.0}, OwnerTotals())
    kept.discard()
    assert kept.dir.parent == tmp_path / "tb" and "-x-whitebox-transductive-seed0" in kept.dir.name
    assert "generator/teacher_ce" in _tags(kept.dir)


def test_tensorboard_false_means_no_observer(tmp_path):
    assert open_observer(parse_run_config({"tensorboard": False})) is None


def test_a_real_run_puts_its_logs_in_the_run_folder(tmp_path, monkeypatch):
    from azsl_flower.service import student

    trained: list[float] = []  # each epoch's mean loss, as the student's training computed it
    real_fit = student.fit

    def spy_fit(*args, progress=None, **kwargs):  # noqa: ANN001, ANN202 - passes fit through
        def seen(epoch: int, loss: float) -> None:
            trained.append(loss)
            progress(epoch, loss)

        return real_fit(*args, progress=seen if progress else None, **kwargs)

    monkeypatch.setattr(student, "fit", spy_fit)
    raw = {
        "scenario": "blackbox",
        "rounds": 2,
        "steps-per-round": 2,
        "student-epochs": 2,
        "samples-per-class": 20,
        "teacher-epochs": 3,
        "output-dir": str(tmp_path / "out"),
        "cache-dir": str(tmp_path / "cache"),
    }
    results, folder = run_azsl(
        InProcessGrid(client_app, 2, raw, run_id=1), parse_run_config(raw), 1
    )
    events = _events(Path(folder) / "tb")
    tags = set(events.Tags()["scalars"])
    # the student's loss, once per epoch
    assert [e.step for e in events.Scalars("student/loss")] == [1, 2]
    # ... and the value is that epoch's loss (TensorBoard stores float32: 2^-24 relative)
    assert len(trained) == 2
    logged = [e.value for e in events.Scalars("student/loss")]
    assert logged == pytest.approx(trained, rel=1e-6)
    for node in results["bytes_per_owner"]:
        assert {f"owner/{node}/queries", f"owner/{node}/bytes_sent"} <= tags
    assert {
        "generator/teacher_ce",
        "generator/regulariser",
        "generator/surrogate_loss",
        "generator/surrogate_ce",
        "verification/pass_rate",
        "eval/student/h",
        "eval/student/u",
        "eval/student/s",
        "eval/teacher/h",
    } <= tags
    sent = sum(b["sent"] for b in results["bytes_per_owner"].values())
    assert sent == results["bytes_sent"]
    left = {p.name for p in (tmp_path / "out").iterdir()}
    assert left == {"checkpoints", Path(folder).name}  # nothing staged is left behind
