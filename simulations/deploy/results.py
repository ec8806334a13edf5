"""What a loopback deployment's runs left in its work folder, and what a round trip cost."""

from __future__ import annotations

import json

from simulations.deploy.layout import Layout


def results_of(layout: Layout) -> list[dict]:
    """Every results.json written under the work folder's outputs."""
    return [json.loads(p.read_text()) for p in sorted(layout.outputs.glob("*/results.json"))]


def round_trip_cost(results: dict) -> dict[str, float]:
    """What a deployed round trip costs: the generator phase's seconds per round trip
    (Flower's SuperNode polling, a ClientApp process per message, the owners' work)."""
    rounds = len(results.get("history", [])) or 1
    generator = float(results.get("phase_seconds", {}).get("generator", 0.0))
    return {
        "round_trips": int(results.get("round_trips", 0)),
        "wall_seconds": round(float(results.get("wall_seconds", 0.0)), 1),
        "generator_seconds_per_round_trip": round(generator / rounds, 2),
        "wall_seconds_per_round_trip": round(
            float(results.get("wall_seconds", 0.0)) / max(1, int(results.get("round_trips", 1))), 2
        ),
    }
