"""What a loopback deployment's runs left in its work folder, and what a round trip cost:
its seconds split into Flower's waits and the owner process's parts (:func:`breakdown`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from azsl_flower.owner.timing import PREFIX
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


# Where a deployed round trip's seconds go --------------------------------------------------
# Each owner message's wall time (the service's push → its reply pulled) is split at the
# marks the owner's ClientApp logged (azsl_flower/owner/timing.py, seconds after its process
# started): Flower's waits outside the owner's process, then the process's own parts.
PARTS = ("pickup", "start", "imports", "state", "crypto", "compute", "forward", "reply")
PART_LABELS = {
    "pickup": "Flower: push -> ClientApp process start (SuperNode idle poll, SuperExec poll)",
    "start": "Flower: process start -> our imports (Python, flwr, task pull, FAB install)",
    "imports": "ours: azsl_flower.client_app imports (torch among them)",
    "state": "ours: policy, keys, run ledger, teacher load, ledger write",
    "crypto": "ours: open + seal",
    "compute": "ours: the answer (a set-up's teacher training too)",
    "forward": "ours: ClientApp <-> owner worker over its socket (node-config owner-worker)",
    "reply": "Flower: sealed -> reply at the service (ClientApp, SuperNode, SuperLink, poll)",
}
# the part of the time that ends at each mark (from the previous mark, or process start)
MARK_PART = {
    "app": "start",
    "imports": "imports",
    "handler": "start",
    "session": "state",
    "opened": "crypto",
    "state": "state",
    "answered": "compute",
    "sealed": "crypto",
    "forward": "forward",  # with owner-worker: the worker's marks above, then this one
    "done": "state",
}
BREAKDOWN = "round-trip-breakdown.json"  # in the work folder: the last demo's breakdown
CONTAINED = 0.05  # seconds of slack when an owner's process is matched by time, not id


def owner_timings(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The owners' timing records in log lines (``azsl-owner-timing {json}``); other lines,
    and timing lines that are not a complete record, are skipped."""
    out = []
    for line in lines:
        at = line.find(PREFIX)
        if at < 0:
            continue
        try:
            rec = json.loads(line[at + len(PREFIX) :])
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("at"), dict) and "started" in rec:
            out.append(rec)
    return out


def owner_timings_of(layout: Layout) -> list[dict[str, Any]]:
    """Every owner's timing records from the SuperNode logs of this work folder."""
    found: list[dict[str, Any]] = []
    for log in sorted(layout.logs.glob("supernode-*.log")):
        with log.open(errors="replace") as f:
            found += owner_timings(f)
    return found


def split(owner: dict[str, Any], pushed: float, seconds: float) -> dict[str, float]:
    """One message's ``seconds`` (pushed at epoch ``pushed``) in PARTS; they sum to it."""
    # "forward" only for a message answered through the owner's worker (its "forward" mark)
    parts = dict.fromkeys((p for p in PARTS if p != "forward" or p in owner["at"]), 0.0)
    started = float(owner["started"])
    parts["pickup"] = started - pushed
    last = 0.0
    for name, t in sorted(owner["at"].items(), key=lambda kv: float(kv[1])):
        if name in MARK_PART:  # an unknown mark's time goes to the next known one
            parts[MARK_PART[name]] += float(t) - last
            last = float(t)
    parts["reply"] = pushed + seconds - (started + last)
    return parts


def _owner_of(
    reply: dict[str, Any], pushed: float, by_id: dict[str, dict], owners: list[dict]
) -> dict | None:
    """The owner record of one reply: by message id, else the one process of that node
    that ran within the reply's wall time."""
    if reply.get("message") in by_id:
        return by_id[reply["message"]]
    end = pushed + float(reply["seconds"])

    def within(o: dict) -> bool:
        started = float(o["started"])
        last = max(map(float, o["at"].values()), default=0.0)
        return pushed - CONTAINED <= started and started + last <= end + CONTAINED

    inside = [o for o in owners if o.get("node") == reply.get("node") and within(o)]
    return inside[0] if len(inside) == 1 else None


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    n = max(1, len(rows))
    return {k: round(sum(r.get(k, 0.0) for r in rows) / n, 3) for k in ("wall", *PARTS)}


def breakdown(results: dict, owners: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the run's round trips went: per message kind and over all messages, the mean
    seconds of each part (PARTS, summing to ``wall``) and ``flower_wait`` (pickup + reply:
    the round trip's wall minus the owner process's), from the service's timings
    (results.json ``round_trip_timings``) and the owners' records."""
    by_id = {str(o.get("message")): o for o in owners}
    rows: dict[str, list[dict[str, float]]] = {}
    trips: dict[str, list[float]] = {}
    unanswered = unmatched = 0
    for rt in results.get("round_trip_timings", []):
        kind, pushed = str(rt.get("kind", "")), float(rt["pushed"])
        took = [float(r["seconds"]) for r in rt["replies"] if r.get("seconds") is not None]
        if took:
            trips.setdefault(kind, []).append(max(took))
        for reply in rt["replies"]:
            if reply.get("seconds") is None:
                unanswered += 1
                continue
            owner = _owner_of(reply, pushed, by_id, owners)
            if owner is None:
                unmatched += 1
                continue
            row = split(owner, pushed, float(reply["seconds"]))
            rows.setdefault(kind, []).append(row | {"wall": float(reply["seconds"])})
    every = [r for kind_rows in rows.values() for r in kind_rows]
    trips["all"] = [t for walls in trips.values() for t in walls]
    kinds = {k: {"messages": len(v), **_mean(v)} for k, v in sorted(rows.items())}
    kinds["all"] = {"messages": len(every), **_mean(every)}
    for k, v in kinds.items():
        v["flower_wait"] = round(v["pickup"] + v["reply"], 3)
        times = trips.get(k, [])
        v["round_trips"] = len(times)
        v["round_trip_wall"] = round(sum(times) / max(1, len(times)), 3)
    return {
        "parts": PART_LABELS,
        "kinds": kinds,
        "owner_records": len(owners),
        "unanswered": unanswered,
        "unmatched": unmatched,
    }


def format_breakdown(b: dict[str, Any]) -> str:
    """The breakdown as a table: mean seconds per owner message, by kind."""
    cols = ("wall", "flower_wait", *PARTS)
    lines = [
        "where a round trip's seconds go (mean s per owner message; flower_wait = pickup + reply)",
        f"{'kind':<18}{'msgs':>5}{'trip':>8}" + "".join(f"{c:>12}" for c in cols),
    ]
    for kind, v in b["kinds"].items():
        lines.append(
            f"{kind:<18}{v['messages']:>5}{v['round_trip_wall']:>8.2f}"
            + "".join(f"{v[c]:>12.3f}" for c in cols)
        )
    lines += [f"  {p}: {label}" for p, label in b["parts"].items()]
    if b["unanswered"] or b["unmatched"]:
        lines.append(
            f"  {b['unanswered']} message(s) without a reply, {b['unmatched']} reply(ies) "
            "without an owner timing record (owner timings off, or its log lost)"
        )
    return "\n".join(lines)
