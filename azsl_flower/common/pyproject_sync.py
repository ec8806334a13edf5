"""Write pyproject's ``[tool.flwr.app.config]`` from DEFAULTS: the defaults are written once.

Flower accepts ``--run-config`` keys only if the app's pyproject declares them, so the
table must exist; it is generated, and a test checks it is current:

    python -m azsl_flower.common.pyproject_sync [--check] [pyproject.toml]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from azsl_flower.common.config import DEFAULTS

HEADER = "[tool.flwr.app.config]"
NOTE = (
    "# Generated from DEFAULTS in azsl_flower/common/defaults.py by\n"
    "# `python -m azsl_flower.common.pyproject_sync` (a test checks it is current).\n"
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the characters used here
    return repr(value)


def table() -> str:
    """The generated section, header and note included."""
    body = "".join(f"{key} = {_toml(value)}\n" for key, value in DEFAULTS.items())
    return f"{HEADER}\n{NOTE}{body}"


def synced(text: str) -> str:
    """``text`` (a pyproject.toml) with the section replaced by :func:`table`."""
    start = text.index(HEADER)
    end = text.find("\n[", start + len(HEADER))
    end = len(text) if end < 0 else end + 1
    return text[:start] + table() + ("\n" if end < len(text) else "") + text[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pyproject", nargs="?", default="pyproject.toml")
    ap.add_argument("--check", action="store_true", help="exit 1 if the table is out of date")
    args = ap.parse_args(argv)
    path = Path(args.pyproject)
    text = path.read_text()
    new = synced(text)
    if args.check:
        if new != text:
            print(f"{path}: [tool.flwr.app.config] differs from DEFAULTS; run without --check")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
