"""``azsl-flower`` command: key management for the end-to-end encryption.

azsl-flower keys generate --out DIR --name owner-1   # writes owner-1.key / owner-1.pub
azsl-flower keys fingerprint DIR/owner-1.pub          # what operators compare by phone
"""

from __future__ import annotations

import argparse
import sys

from azsl_flower.crypto import (
    KeyFileError,
    fingerprint,
    load_private_key,
    load_public_key,
    write_keypair,
)


def _generate(args: argparse.Namespace) -> int:
    path = write_keypair(args.out, args.name)
    fp = fingerprint(load_private_key(path).public_key())
    print(f"private key: {path} (keep it on this machine)")
    print(f"public key:  {path.with_suffix('.pub')} (give it to the other side)")
    print(f"fingerprint: {fp}")
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    for p in args.files:
        key = load_private_key(p).public_key() if p.endswith(".key") else load_public_key(p)
        print(f"{fingerprint(key)}  {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="azsl-flower", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True)
    keys = sub.add_parser("keys", help="X25519 key pairs for the service and the data owners")
    ksub = keys.add_subparsers(dest="command", required=True)
    gen = ksub.add_parser("generate", help="write NAME.key (0600) and NAME.pub; never overwrites")
    gen.add_argument("--out", required=True, help="folder for the key files")
    gen.add_argument("--name", required=True, help="file name stem, e.g. service or owner-1")
    gen.set_defaults(func=_generate)
    fpr = ksub.add_parser("fingerprint", help="print the fingerprint of .pub or .key files")
    fpr.add_argument("files", nargs="+")
    fpr.set_defaults(func=_fingerprint)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyFileError as exc:
        print(f"azsl-flower: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
