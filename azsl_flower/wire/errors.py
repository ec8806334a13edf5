"""How an owner says no: unauthenticated rejections and sealed refusals.

Two kinds of "no", on purpose different:

- a **rejection** (Flower error reply, code 4100): the owner could not authenticate or
  open the request, so it cannot seal anything either; the reply carries only a reason.
  The service treats it like any failure (re-send, then drop): a relay that forges one
  can only delay an owner, as it could by dropping messages.
- a **refusal**: the owner opened an authentic request and will not answer it, because
  of its policy (``policy``) or its query budget (``budget``), or because answering it
  failed (``error``: any exception on the owner's side, named by its class only, so no
  exception text, which may hold paths or data, leaves the owner). It travels *sealed*
  like an answer (one ``refusal`` record), so nobody but the owner can make the service
  skip or drop an owner, and the service can trust the numbers in it. The service treats
  ``error`` as that owner's failure (re-sent, then dropped), not as a skip.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from azsl_flower.wire.schema import ProtocolError

__all__ = [
    "REJECTED_CODE",
    "REFUSAL",
    "Refused",
    "budget_refusal",
    "internal_error",
    "parse_rejection",
    "read_refusal",
    "refusal_record",
    "rejection",
]


REJECTED_CODE = 4100  # Flower Error code of an owner's "I rejected your message" reply
_REJECTED = "azsl-rejected:"
REFUSAL = "refusal"  # the one record of a sealed refusal
_CODES = ("policy", "budget", "error")
_MAX_REASON = 2000


def rejection(reason: str, detail: str) -> str:
    """Error text an owner returns for a message it refused (names no secret)."""
    return f"{_REJECTED}{reason}: {detail}"


def parse_rejection(code: int, text: str) -> str | None:
    """The reason of an owner's rejection reply, or None for any other error."""
    if code != REJECTED_CODE or not text.startswith(_REJECTED):
        return None
    return text[len(_REJECTED) :].split(":", 1)[0]


class Refused(Exception):  # noqa: N818 - reads as "raise Refused(...)"
    """An owner will not answer an authentic request: ``code`` ``policy``, ``budget`` or
    ``error`` (:func:`internal_error`).

    ``budget``/``used``/``asked``: the query budget, the samples already answered and the
    samples this request asked for (budget refusals; 0 otherwise).
    """

    def __init__(
        self, code: str, reason: str, budget: int = 0, used: int = 0, asked: int = 0
    ) -> None:
        if code not in _CODES:
            raise ValueError(f"refusal code {code!r}; one of {_CODES}")
        super().__init__(reason)
        self.code, self.reason = code, reason
        self.budget, self.used, self.asked = budget, used, asked


def budget_refusal(budget: int, used: int, asked: int) -> Refused:
    """A query-budget refusal whose text says what was used and asked."""
    return Refused(
        "budget",
        f"this owner answers at most {budget} generated samples per run (node-config "
        f"query-budget); {used} are used and this request asks {asked} more. The service "
        "should plan within the query_budget declared at set-up",
        budget,
        used,
        asked,
    )


def internal_error(exc: BaseException) -> Refused:
    """The sealed refusal for an exception while answering: its class, never its text."""
    return Refused(
        "error",
        f"internal error ({type(exc).__name__}) at the owner; its log has the details",
    )


def refusal_record(refused: Refused) -> RecordDict:
    """The payload of a sealed refusal."""
    rd = RecordDict()
    rd[REFUSAL] = ConfigRecord(
        {
            "code": refused.code,
            "reason": refused.reason[:_MAX_REASON],
            "budget": int(refused.budget),
            "used": int(refused.used),
            "asked": int(refused.asked),
        }
    )
    return rd


def read_refusal(parts: list[RecordDict]) -> Refused | None:
    """The owner's refusal in an opened reply, or None for an answer; ProtocolError when a
    refusal is malformed (a broken or hostile owner: that owner's failure)."""
    if not any(REFUSAL in p for p in parts):
        return None
    if len(parts) != 1 or set(parts[0].keys()) != {REFUSAL}:
        raise ProtocolError("a refusal must be the reply's only record")
    rec = parts[0].config_records.get(REFUSAL)
    if rec is None or set(rec.keys()) != {"code", "reason", "budget", "used", "asked"}:
        raise ProtocolError("a refusal has the fields code, reason, budget, used, asked")
    code, reason = rec["code"], rec["reason"]
    numbers = [rec[k] for k in ("budget", "used", "asked")]
    if (
        code not in _CODES
        or not isinstance(reason, str)
        or len(reason) > _MAX_REASON
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)
    ):
        raise ProtocolError("a refusal's fields have the wrong types or values")
    return Refused(str(code), reason, *numbers)  # type: ignore[arg-type]
