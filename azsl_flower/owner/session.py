"""One message at an owner: its policy, its run state (locked) and its end of the channel.

``with open_session(context) as s:`` reads the policy from the node config, decides the
cipher suite and keys (the node config's, never the run's, for an owner with keys), and
holds this run's state exclusively until the answer is sealed, so messages of one run are
handled one at a time whatever Flower does with Context copies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from flwr.app import Context

from azsl_flower.owner.files import private_dir
from azsl_flower.owner.ledger import RunLedger
from azsl_flower.owner.policy import OwnerPolicy
from azsl_flower.wire.channels import OwnerSecurity, owner_keys
from azsl_flower.wire.crypto import fingerprint

__all__ = ["Session", "Where", "open_session", "where"]

RUNS = "runs"  # the run-state folder inside the owner's cache dir


@dataclass(frozen=True)
class Where:
    """Who this owner is in a run, and where its state for that run lives."""

    policy: OwnerPolicy
    suite: str
    keys: tuple[X25519PrivateKey, X25519PublicKey] | None
    identity: str  # the owner key's fingerprint, or node-<id> without encryption
    folder: Path


def where(context: Context, keys: bool = True) -> Where:
    """Policy, suite, keys and run-state folder of this owner for ``context``'s run.

    The state is keyed by the owner key's fingerprint (a deployed owner), or by the node id
    (a simulated owner on per-run keys, gone after the run); ``keys=False`` skips loading
    keys a report does not need."""
    policy = OwnerPolicy.from_node_config(context.node_config)
    run: Mapping[str, object] = dict(context.run_config)
    suite = policy.suite(run, os.environ.get("AZSL_ENCRYPTION"))
    pair = None
    if suite != "none" and (keys or policy["owner-key"]):
        pair = owner_keys(context.node_config, run, context.run_id)
    identity = f"node-{context.node_id}"
    if policy["owner-key"] and pair is not None:
        identity = fingerprint(pair[0].public_key())
    return Where(policy, suite, pair, identity, policy.cache_dir(run) / RUNS)


@dataclass
class Session:
    """What one message is handled with; the ledger is held until the with-block ends."""

    where: Where
    ledger: RunLedger
    security: OwnerSecurity

    @property
    def policy(self) -> OwnerPolicy:
        return self.where.policy


@contextmanager
def open_session(context: Context) -> Iterator[Session]:
    at = where(context)
    private_dir(at.folder.parent)  # the cache dir: nobody else may swap its runs/ folder
    with RunLedger(at.folder, context.run_id, at.identity) as ledger:
        security = OwnerSecurity(str(context.node_id), context.run_id, at.suite, at.keys, ledger)
        yield Session(at, ledger, security)
