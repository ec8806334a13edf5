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


def test_flwr_run_a_plugin_method(tmp_path):
    """A method given as run-config ``method=module:Class`` is imported by the ServerApp
    under Flower's real runtime and talks to the owners through the real phases."""
    method = "tests.plugins.tiny_method:TinyMethod"
    results, log = flwr_run(tmp_path, f"method='{method}' teacher-epochs=3")
    assert results["config"]["method"] == method
    assert results["method"]["name"] == "tiny"
    assert results["num_owners"] == 2
    assert results["round_trips"] == 3  # set-up, verification, evaluation
    assert "teacher (upper bound)" in log
