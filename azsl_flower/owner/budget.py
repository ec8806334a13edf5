"""The owner's query budget: generated samples it answers per run (node config).

The count lives in the node ``Context``; the service plans with the budget each owner
declares at set-up, and the owner refuses a request that would go over it.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

__all__ = ["query_budget", "queries_used", "record_used"]

_BUDGET_KEY = "azsl.budget"  # node Context state: generated samples answered in this run


def query_budget(context: Context) -> int:
    """This owner's node-config ``query-budget``: generated samples per run, 0 = unlimited."""
    raw = context.node_config.get("query-budget", 0)
    try:
        budget = int(str(raw).strip())  # refuses 1.5, "ten" and True alike
    except ValueError:
        budget = -1
    if budget < 0:
        raise ValueError(
            f"node-config query-budget={raw!r}: give a whole number of generated samples "
            "per run, >= 0 (0 = unlimited)"
        )
    return budget


def queries_used(context: Context) -> int:
    """Generated samples this owner answered so far in this run (kept in its node Context)."""
    record = context.state.config_records.get(_BUDGET_KEY)
    return int(record["used"]) if record is not None else 0  # type: ignore[arg-type]


def record_used(context: Context, used: int) -> None:
    """Store this run's answered-sample count in the node Context."""
    context.state[_BUDGET_KEY] = ConfigRecord({"used": used})
