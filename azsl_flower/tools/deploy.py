"""Deployment material for a real Flower federation, besides TLS (:mod:`.tls`).

* :func:`generate_node_auth` writes a SuperNode authentication key pair in the formats
  Flower 1.42 reads: an EC P-384 private key in OpenSSH format
  (``flower-supernode --auth-supernode-private-key``) and its OpenSSH one-line public key
  (``flwr supernode register``).
* :func:`write_connection` adds a SuperLink connection to ``$FLWR_HOME/config.toml``,
  keeping every other entry.

Nothing here overwrites an existing file, and private keys are created with mode 0600.
:class:`DeployError` is the one error of the deployment tools and of the loopback
deployment (``simulations.deploy.local``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from azsl_flower.wire.crypto import write_new_file

__all__ = ["DeployError", "generate_node_auth", "write_connection", "flwr_home"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DeployError(ValueError):
    """Bad input, a file that would be overwritten, or a deployment step that failed; the
    message says what to do."""


def check_name(name: str, what: str) -> str:
    """``name`` becomes part of file names: no folders, no leading dot or dash."""
    if not _NAME.match(name or ""):
        raise DeployError(
            f"{what} {name!r} must be a plain file name of letters, digits, '.', '_' or '-' "
            "such as 'owner-1'"
        )
    return name


def refuse_existing(paths: Iterable[Path], hint: str) -> None:
    """Fail before anything is written, naming every file in the way."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise DeployError(
            f"{', '.join(existing)} already exist(s); {hint} (files are never overwritten)"
        )


# -- SuperNode authentication ----------------------------------------------------------------


def generate_node_auth(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.node.key`` (OpenSSH EC P-384, 0600) and ``NAME.node.pub`` (one line).

    The ``.node.`` infix keeps these apart from the X25519 encryption keys
    (``azsl-flower keys generate``): same owner, different job.
    """
    check_name(name, "--name")
    out = Path(out_dir).expanduser()
    priv_path, pub_path = out / f"{name}.node.key", out / f"{name}.node.pub"
    refuse_existing([priv_path, pub_path], "choose another --name or --out")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),  # flower-supernode loads it without a passphrase
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    out.mkdir(parents=True, exist_ok=True)
    write_new_file(priv_path, private, 0o600)
    write_new_file(pub_path, public + f" {name}\n".encode(), 0o644)
    return priv_path, pub_path


# -- $FLWR_HOME/config.toml ------------------------------------------------------------------


def flwr_home(path: str | Path | None = None) -> Path:
    """``path``, else ``$FLWR_HOME``, else ``~/.flwr`` (Flower's own rule)."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("FLWR_HOME")
    return Path(env).expanduser() if env else Path.home() / ".flwr"


def _flower_default_config() -> dict[str, Any]:
    """The file Flower itself writes on first use, so `local` and `supergrid` stay usable."""
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

    return tomllib.loads(DEFAULT_FLOWER_CONFIG_TOML)


def write_connection(
    name: str,
    address: str,
    root_certificates: str | Path | None,
    *,
    home: str | Path | None = None,
    insecure: bool = False,
    make_default: bool = False,
    replace: bool = False,
) -> Path:
    """Add ``[superlink.NAME]`` to ``config.toml`` under ``home``; keep every other entry.

    An existing NAME with the same settings is left alone; one with other settings is an
    error (pick another name) unless ``replace`` (then only that entry changes).
    ``make_default`` also sets ``[superlink] default = NAME``; off by default because
    ``flwr run .`` without a connection name would then go to this SuperLink instead of
    the local simulation.
    Comments in an existing file are not kept (Flower's own writer drops them too).
    """
    entry = _connection_entry(name, address, root_certificates, insecure)
    cfg_path = flwr_home(home) / "config.toml"
    doc = _read_flwr_config(cfg_path)
    superlink = doc.setdefault("superlink", {})
    if not isinstance(superlink, dict):
        raise DeployError(f"{cfg_path}: 'superlink' must be a table")
    old = superlink.get(name)
    if old is not None and old != entry and not replace:
        raise DeployError(
            f"{cfg_path} already has [superlink.{name}] with other settings ({old}); "
            "choose another connection name, or pass --replace to update that entry"
        )
    changed = old != entry
    superlink[name] = entry
    if make_default and superlink.get("default") != name:
        superlink["default"] = name
        changed = True
    if changed:
        _replace_file(cfg_path, doc)
    return cfg_path


def _connection_entry(
    name: str, address: str, root_certificates: str | Path | None, insecure: bool
) -> dict[str, Any]:
    """The ``[superlink.NAME]`` table for these settings, or an error naming the option."""
    from flwr.cli.typing import SuperLinkConnection

    check_name(name, "connection name")
    if insecure and root_certificates:
        raise DeployError("give either root certificates (TLS) or insecure, not both")
    if not insecure and not root_certificates:
        raise DeployError(
            "give --root-certificates (the CA's ca.pem) or, for a test without TLS, --insecure"
        )
    if not address or "://" in address or ":" not in address:
        raise DeployError(f"address {address!r} must be HOST:PORT, e.g. 127.0.0.1:9093")
    entry: dict[str, Any] = {"address": address}
    if root_certificates:
        ca = Path(root_certificates).expanduser().resolve()
        if not ca.is_file():
            raise DeployError(f"root certificates {ca} not found; give the CA's ca.pem")
        try:
            x509.load_pem_x509_certificates(ca.read_bytes())
        except ValueError:
            raise DeployError(f"{ca} is not a PEM certificate (bundle)") from None
        entry["root-certificates"] = str(ca)
    entry["insecure"] = bool(insecure)
    try:  # Flower's own validation, so what we write is what `flwr` accepts
        SuperLinkConnection(
            name=name,
            address=entry["address"],
            root_certificates=entry.get("root-certificates"),
            insecure=entry["insecure"],
        )
    except ValueError as exc:
        raise DeployError(str(exc)) from None
    return entry


def _read_flwr_config(cfg_path: Path) -> dict[str, Any]:
    """The existing ``config.toml``, or the one Flower would write on first use."""
    if not cfg_path.exists():
        return _flower_default_config()
    try:
        return tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DeployError(f"{cfg_path} is not valid TOML ({exc}); fix it first") from None


def _replace_file(cfg_path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` atomically (a crash never leaves half a config), keeping the file's mode."""
    import tomli_w

    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg_path.with_name(f".{cfg_path.name}.{os.getpid()}.tmp")
    tmp.write_text(tomli_w.dumps(doc), encoding="utf-8")
    if cfg_path.exists():
        os.chmod(tmp, cfg_path.stat().st_mode & 0o777)
    os.replace(tmp, cfg_path)
