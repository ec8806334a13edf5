"""One real `flwr run .` simulation with 2 owners: Flower's CLI, managed SuperLink, Ray."""

from __future__ import annotations

from tests.conftest import flwr_run


def test_flwr_run_simulation_two_owners(tmp_path):
    results, log = flwr_run(
        tmp_path,
        "rounds=2 steps-per-round=2 student-epochs=2 samples-per-class=30 teacher-epochs=3",
    )
    assert results["num_owners"] == 2
    assert results["round_trips"] == 2 + 3
    assert "teacher (upper bound)" in log and "student" in log
