"""``azsl-flower`` command: keys and deployment material for an AZSL federation.

azsl-flower keys generate --out DIR --name owner-1   # writes owner-1.key / owner-1.pub
azsl-flower keys fingerprint DIR/owner-1.pub          # what operators compare by phone
azsl-flower tls generate --out DIR --host 127.0.0.1 --host superlink.example.org
azsl-flower node-auth generate --out DIR --name owner-1   # owner-1.node.key / .node.pub
azsl-flower connection add --name azsl --address 127.0.0.1:9093 --root-certificates DIR/ca.pem
azsl-flower app keys --out DIR --name reviewer    # Ed25519 signing key + trusted-entities.yaml
azsl-flower app sign --key DIR/reviewer.sign.key --name reviewer --out APPS   # sign this app
azsl-flower app serve --apps APPS --port 9095     # a local app registry for the SuperLink
azsl-flower owner serve --socket DIR/owner.sock   # the owner's worker (node-config owner-worker)
"""

from __future__ import annotations

import argparse
import sys

from azsl_flower.tools.deploy import DeployError, generate_node_auth, write_connection
from azsl_flower.tools.tls import CA_DAYS, DEFAULT_HOSTS, SERVER_DAYS, generate_tls
from azsl_flower.wire.crypto import (
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


def _tls(args: argparse.Namespace) -> int:
    files = generate_tls(
        args.out,
        args.host or list(DEFAULT_HOSTS),
        ca_days=args.ca_days,
        server_days=args.days,
        ca_key=args.ca_key,
        ca_cert=args.ca_cert,
    )
    print(f"CA certificate:     {files.ca_cert} (give it to every SuperNode and flwr user)")
    print(f"CA private key:     {files.ca_key} (keep it offline; it signs server certificates)")
    print(f"server certificate: {files.server_cert} (flower-superlink --ssl-certfile)")
    print(f"server private key: {files.server_key} (flower-superlink --ssl-keyfile)")
    return 0


def _node_auth(args: argparse.Namespace) -> int:
    priv, pub = generate_node_auth(args.out, args.name)
    print(f"private key: {priv} (flower-supernode --auth-supernode-private-key; keep it here)")
    print(f"public key:  {pub} (register it: flwr supernode register {pub} <connection>)")
    return 0


def _connection(args: argparse.Namespace) -> int:
    path = write_connection(
        args.name,
        args.address,
        args.root_certificates,
        home=args.flwr_home,
        insecure=args.insecure,
        make_default=args.default,
        replace=args.replace,
    )
    print(f"[superlink.{args.name}] in {path}; use it as: flwr run . {args.name} --stream")
    return 0


def _app_keys(args: argparse.Namespace) -> int:
    from azsl_flower.tools.signing import generate_signing_key

    key, pub, trusted = generate_signing_key(args.out, args.name)
    print(f"signing key:      {key} (keep it with whoever reviews and signs the app)")
    print(f"public key:       {pub}")
    print(f"trusted entities: {trusted} (each owner: flower-supernode --trusted-entities)")
    return 0


def _app_sign(args: argparse.Namespace) -> int:
    from azsl_flower.tools.signing import sign_app

    app = sign_app(args.app, args.key, args.name, args.out)
    print(f"signed {app.spec}: {app.fab} ({app.fab.stat().st_size} bytes)")
    print(f"run it with: flwr run {app.spec} <connection> (its SuperLink fetches it signed)")
    return 0


def _app_serve(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from azsl_flower.tools.signing import AppRegistry, SignedApp, app_spec

    apps = []
    for ver in sorted(Path(args.apps).glob("*.verifications.json")):
        fab = ver.with_name(ver.name.replace(".verifications.json", ".fab"))
        app_id, version = app_spec(args.app)
        apps.append(SignedApp(fab, app_id, version, json.loads(ver.read_text())))
    with AppRegistry(apps, args.host, args.port) as reg:
        print(f"serving {[a.spec for a in apps]} at {reg.url}; start flower-superlink with")
        print(f"  FLWR_SUPERGRID_API_URL={reg.url}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def _keys_group(sub: argparse._SubParsersAction) -> None:
    """``keys generate`` / ``keys fingerprint``: X25519 keys for the sealed channel."""
    keys = sub.add_parser("keys", help="X25519 key pairs for the service and the data owners")
    ksub = keys.add_subparsers(dest="command", required=True)
    gen = ksub.add_parser("generate", help="write NAME.key (0600) and NAME.pub; never overwrites")
    gen.add_argument("--out", required=True, help="folder for the key files")
    gen.add_argument("--name", required=True, help="file name stem, e.g. service or owner-1")
    gen.set_defaults(func=_generate)
    fpr = ksub.add_parser("fingerprint", help="print the fingerprint of .pub or .key files")
    fpr.add_argument("files", nargs="+")
    fpr.set_defaults(func=_fingerprint)


def _tls_group(sub: argparse._SubParsersAction) -> None:
    """``tls generate``: the SuperLink's CA and server certificate."""
    tls = sub.add_parser("tls", help="CA and SuperLink server certificate")
    tsub = tls.add_subparsers(dest="command", required=True)
    tgen = tsub.add_parser(
        "generate",
        help="write ca.key (0600), ca.pem, server.key (0600), server.pem; never overwrites",
    )
    tgen.add_argument("--out", required=True, help="folder for the certificate files")
    tgen.add_argument(
        "--host",
        action="append",
        help="IP address or DNS name the SuperLink is reached at; repeat for several "
        f"(default: {' and '.join(DEFAULT_HOSTS)})",
    )
    tgen.add_argument(
        "--days", type=int, default=SERVER_DAYS, help="server certificate lifetime in days"
    )
    tgen.add_argument(
        "--ca-days", type=int, default=CA_DAYS, help="CA certificate lifetime in days"
    )
    tgen.add_argument("--ca-key", help="sign with this existing CA key instead of a new CA")
    tgen.add_argument("--ca-cert", help="the existing CA's certificate (with --ca-key)")
    tgen.set_defaults(func=_tls)


def _node_auth_group(sub: argparse._SubParsersAction) -> None:
    """``node-auth generate``: a SuperNode's authentication key pair."""
    node = sub.add_parser("node-auth", help="SuperNode authentication key pairs (EC P-384)")
    nsub = node.add_subparsers(dest="command", required=True)
    ngen = nsub.add_parser(
        "generate", help="write NAME.node.key (OpenSSH, 0600) and NAME.node.pub; never overwrites"
    )
    ngen.add_argument("--out", required=True, help="folder for the key files")
    ngen.add_argument("--name", required=True, help="file name stem, e.g. owner-1")
    ngen.set_defaults(func=_node_auth)


def _connection_group(sub: argparse._SubParsersAction) -> None:
    """``connection add``: a SuperLink entry in Flower's config.toml."""
    conn = sub.add_parser("connection", help="SuperLink connections in $FLWR_HOME/config.toml")
    csub = conn.add_subparsers(dest="command", required=True)
    cadd = csub.add_parser("add", help="add [superlink.NAME]; other entries are kept")
    cadd.add_argument("--name", required=True, help="connection name used by flwr run")
    cadd.add_argument("--address", required=True, help="SuperLink HOST:PORT")
    cadd.add_argument("--root-certificates", help="the CA's ca.pem (stored as absolute path)")
    cadd.add_argument("--insecure", action="store_true", help="no TLS (tests only)")
    cadd.add_argument("--default", action="store_true", help="also make it the default connection")
    cadd.add_argument(
        "--replace", action="store_true", help="update [superlink.NAME] if it differs"
    )
    cadd.add_argument("--flwr-home", help="default: $FLWR_HOME, else ~/.flwr")
    cadd.set_defaults(func=_connection)


def _app_group(sub: argparse._SubParsersAction) -> None:
    """``app keys`` / ``app sign`` / ``app serve``: signed apps for owners."""
    app = sub.add_parser("app", help="signed apps: only code the owners trust runs at them")
    asub = app.add_subparsers(dest="command", required=True)
    akeys = asub.add_parser(
        "keys", help="NAME.sign.key (Ed25519, OpenSSH), NAME.sign.pub, trusted-entities.yaml"
    )
    akeys.add_argument("--out", required=True)
    akeys.add_argument("--name", required=True, help="the signer's name (public_key_id)")
    akeys.set_defaults(func=_app_keys)
    asign = asub.add_parser("sign", help="build this app's FAB and sign it")
    asign.add_argument("--key", required=True, help="NAME.sign.key")
    asign.add_argument("--name", required=True, help="the signer's name, as in trusted-entities")
    asign.add_argument("--out", required=True, help="folder for the .fab and its signatures")
    asign.add_argument("--app", default=".", help="the app folder (holds pyproject.toml)")
    asign.set_defaults(func=_app_sign)
    aserve = asub.add_parser("serve", help="serve signed apps to a SuperLink (Flower Hub's API)")
    aserve.add_argument("--apps", required=True, help="folder written by `app sign`")
    aserve.add_argument("--app", default=".", help="the app folder the FABs were built from")
    aserve.add_argument("--host", default="127.0.0.1")
    aserve.add_argument("--port", type=int, default=9095)
    aserve.set_defaults(func=_app_serve)


def _owner_serve(args: argparse.Namespace) -> int:
    from azsl_flower.owner.worker import serve  # torch: only for this command

    return serve(args)  # a bad socket path: WorkerError, a ValueError (one line, exit 2)


def _owner_group(sub: argparse._SubParsersAction) -> None:
    """``owner serve``: the owner's worker, beside its SuperNode (same user)."""
    from azsl_flower.owner.forward import MAX_FRAME, READ_TIMEOUT

    owner = sub.add_parser("owner", help="the data owner's worker process")
    osub = owner.add_subparsers(dest="command", required=True)
    serve = osub.add_parser(
        "serve",
        help="answer the ClientApp's forwarded messages with torch and the teacher in memory",
    )
    serve.add_argument("--socket", required=True, help="Unix socket to listen on (0600, 0700 dir)")
    serve.add_argument(
        "--node-config",
        default=None,
        help="the SuperNode's --node-config (string or .toml): answer only messages under it",
    )
    serve.add_argument("--max-frame-mb", type=int, default=MAX_FRAME >> 20, help="largest request")
    serve.add_argument(
        "--read-timeout", type=float, default=READ_TIMEOUT, help="seconds to send a request"
    )
    serve.set_defaults(func=_owner_serve)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: one sub-command group per kind of deployment material."""
    parser = argparse.ArgumentParser(prog="azsl-flower", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True)
    for add_group in (
        _keys_group,
        _tls_group,
        _node_auth_group,
        _connection_group,
        _app_group,
        _owner_group,
    ):
        add_group(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a bad input is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (KeyFileError, DeployError, ValueError, FileExistsError) as exc:
        print(f"azsl-flower: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
