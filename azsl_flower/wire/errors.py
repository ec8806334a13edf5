"""Error replies an owner sends instead of an answer, and how the service reads them."""

from __future__ import annotations

__all__ = [
    "REJECTED_CODE",
    "rejection",
    "parse_rejection",
    "BUDGET_CODE",
    "budget_refusal",
    "parse_budget_refusal",
    "MODE_REFUSED_CODE",
]


REJECTED_CODE = 4100  # Flower Error code of an owner's "I rejected your message" reply
_REJECTED = "azsl-rejected:"


def rejection(reason: str, detail: str) -> str:
    """Error text an owner returns for a message it refused (names no secret)."""
    return f"{_REJECTED}{reason}: {detail}"


def parse_rejection(code: int, text: str) -> str | None:
    """The reason of an owner's rejection reply, or None for any other error."""
    if code != REJECTED_CODE or not text.startswith(_REJECTED):
        return None
    return text[len(_REJECTED) :].split(":", 1)[0]


BUDGET_CODE = 4101  # Flower Error code of an owner's "over my query budget" reply
_BUDGET = "azsl-budget-exceeded:"


def budget_refusal(budget: int, used: int, asked: int) -> str:
    """Error text of an owner refusing a request that would exceed its query budget."""
    return (
        f"{_BUDGET}{budget}:{used}:{asked}: this owner answers at most {budget} generated "
        f"samples per run (node-config query-budget); {used} are used and this request asks "
        f"{asked} more. The service should plan within the query_budget declared at set-up"
    )


def parse_budget_refusal(code: int, text: str) -> tuple[int, int, int] | None:
    """(budget, used, asked) of an owner's budget refusal, or None for any other error."""
    if code != BUDGET_CODE or not text.startswith(_BUDGET):
        return None
    fields = text[len(_BUDGET) :].split(":", 3)[:3]
    try:
        budget, used, asked = (int(f) for f in fields)
    except ValueError:
        return None
    return budget, used, asked


# An owner refusing a response mode its node config does not allow (azsl_flower/owner/
# privacy.py); the reason names the mode asked and what the owner gives instead.
MODE_REFUSED_CODE = 4102
