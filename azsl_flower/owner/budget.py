"""What a run may cost this owner, reserved before any work is done.

Every message kind that touches private data is metered in the owner's run state
(:mod:`azsl_flower.owner.ledger`, locked and on disk, so concurrent requests and SuperNode
restarts cannot go over): feedback, verification and dfzsl probes by the feature rows they
ask about against
``query-budget``, set-up by ``max-setups`` (each may train a teacher), evaluation by
``max-eval-models`` and ``max-calibration-values``. A request is reserved in full before
the owner starts on it; one that would go over is refused, sealed, and costs nothing.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context

from azsl_flower.owner.ledger import RunLedger, read_ledger
from azsl_flower.owner.policy import OwnerPolicy
from azsl_flower.owner.session import where
from azsl_flower.wire import schema
from azsl_flower.wire.errors import Refused, budget_refusal

__all__ = ["USAGE", "query_budget", "queries_used", "reserve", "usage"]

USAGE = "usage"  # section of the run state
_FIELDS = ("samples", "setups", "eval_models", "eval_values")


def usage(ledger: RunLedger) -> dict[str, int]:
    saved = ledger.get(USAGE) or {}
    return {f: int(saved.get(f, 0)) for f in _FIELDS}


def reserve(
    ledger: RunLedger, policy: OwnerPolicy, kind: schema.Kind, payloads: list[schema.Payload]
) -> None:
    """Count this request against the run's limits (on disk before any work), or refuse it."""
    used = usage(ledger)
    if kind.metered:  # queries about service-made features: feedback, verify, dfzsl probes
        asked = sum(kind.queried(p.arrays) for p in payloads)
        limit = policy.limit("query-budget")
        if limit and used["samples"] + asked > limit:
            raise budget_refusal(limit, used["samples"], asked)
        used["samples"] += asked
    elif kind is schema.SETUP:
        _within(policy, "max-setups", used["setups"], len(payloads), "set-up requests")
        used["setups"] += len(payloads)
    elif kind is schema.EVALUATE:
        values = sum(max(1, int(p.arrays.get("calibration", np.zeros(1)).size)) for p in payloads)
        _within(policy, "max-eval-models", used["eval_models"], len(payloads), "models scored")
        _within(policy, "max-calibration-values", used["eval_values"], values, "calibration values")
        used["eval_models"] += len(payloads)
        used["eval_values"] += values
    ledger.put(USAGE, used)


def _within(policy: OwnerPolicy, key: str, used: int, asked: int, what: str) -> None:
    limit = policy.limit(key)
    if limit and used + asked > limit:
        raise Refused(
            "policy",
            f"{what} per run: this owner allows {limit} (node-config {key}); {used} used, "
            f"this request asks {asked} more",
        )


def query_budget(context: Context) -> int:
    """This owner's node-config ``query-budget``: generated samples per run, 0 = unlimited."""
    return OwnerPolicy.from_node_config(context.node_config).limit("query-budget")


def queries_used(context: Context) -> int:
    """Generated samples this owner answered (reserved) so far in ``context``'s run."""
    at = where(context, keys=False)
    saved = read_ledger(at.folder, context.run_id, at.identity).get(USAGE) or {}
    return int(saved.get("samples", 0))
