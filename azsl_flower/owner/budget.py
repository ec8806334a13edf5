"""What a run may cost this owner, reserved before any work is done.

Every message kind that touches private data is metered in the owner's run state
(:mod:`azsl_flower.owner.ledger`, locked and on disk, so concurrent requests and SuperNode
restarts cannot go over): feedback, verification and dfzsl probes by the feature rows they
ask about against
``query-budget``, set-up by ``max-setups`` (each may train a teacher), evaluation by
``max-eval-models`` and ``max-calibration-values``. Set-ups and evaluation are also
counted over the owner's lifetime (:mod:`azsl_flower.owner.lifetime`: ``lifetime-setups``,
``lifetime-eval-models``, ``lifetime-calibration-values``), since a new run id brings fresh
per-run meters. A request is reserved in full before the owner starts on it; one that would
go over any of them is refused, sealed, and costs nothing.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context

from azsl_flower.owner.ledger import RunLedger, read_ledger
from azsl_flower.owner.lifetime import LIMITS, USE, lifetime_of
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
) -> dict[str, int]:
    """Count this request against the run's limits and the owner's lifetime limits (on disk
    before any work), or refuse it. Returns the owner's lifetime use, this request included
    (empty for the kinds without lifetime meters)."""
    used = usage(ledger)
    asked: dict[str, int] = {}  # lifetime meter -> what this request adds
    if kind.metered:  # queries about service-made features: feedback, verify, dfzsl probes
        samples = sum(kind.queried(p.arrays) for p in payloads)
        limit = policy.limit("query-budget")
        if limit and used["samples"] + samples > limit:
            raise budget_refusal(limit, used["samples"], samples)
        used["samples"] += samples
    elif kind is schema.SETUP:
        asked["setups"] = len(payloads)
        _within(policy, "max-setups", used["setups"], len(payloads), "set-up requests")
    elif kind is schema.EVALUATE:
        values = sum(max(1, int(p.arrays.get("calibration", np.zeros(1)).size)) for p in payloads)
        asked["eval_models"], asked["eval_values"] = len(payloads), values
        _within(policy, "max-eval-models", used["eval_models"], len(payloads), "models scored")
        _within(policy, "max-calibration-values", used["eval_values"], values, "calibration values")
    for meter, n in asked.items():
        used[meter] += n
    total: dict[str, int] = {}
    if asked:  # under the run's lock, then the lifetime's: every message in this order
        with lifetime_of(ledger) as lifetime:
            total = lifetime.use()
            for meter, n in asked.items():
                key, what = LIMITS[meter]
                _within(policy, key, total[meter], n, what, "over this owner's lifetime (all runs)")
                total[meter] += n
            lifetime.put(USE, total)  # first: a crash before the run's write over-counts
    ledger.put(USAGE, used)
    return total


def _within(
    policy: OwnerPolicy, key: str, used: int, asked: int, what: str, per: str = "per run"
) -> None:
    limit = policy.limit(key)
    if limit and used + asked > limit:
        raise Refused(
            "policy",
            f"{what} {per}: this owner allows {limit} (node-config {key}); {used} used, "
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
