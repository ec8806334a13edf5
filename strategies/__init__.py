"""Flower strategies of azsl-flower (the AI service's side of the protocol)."""

from strategies.azsl import AZSLStrategy, OwnerError

__all__ = ["AZSLStrategy", "OwnerError"]
