"""The SuperLink's TLS material: a CA and a server certificate, made with ``cryptography`` so
nobody has to get ``openssl`` incantations right.

:func:`generate_tls` writes a CA (``ca.key``, ``ca.pem``) and a SuperLink server certificate
signed by it (``server.key``, ``server.pem``) whose subject alternative names list every
address SuperNodes and ``flwr`` use to reach the SuperLink. Nothing is overwritten, and
private keys are created with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from azsl_flower.tools.deploy import DeployError, refuse_existing
from azsl_flower.wire.crypto import write_new_file

__all__ = ["TlsFiles", "DEFAULT_HOSTS", "CA_DAYS", "SERVER_DAYS", "generate_tls"]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CA_DAYS, SERVER_DAYS = 3650, 825  # 825 days: the longest server lifetime clients accept
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class TlsFiles:
    """Where :func:`generate_tls` put its files."""

    ca_key: Path
    ca_cert: Path
    server_key: Path
    server_cert: Path


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """x509.KeyUsage takes all nine flags; name only the ones a certificate may use."""
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(dict.fromkeys(allowed, True))
    return x509.KeyUsage(**flags)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),  # servers start unattended; the file mode protects it
    )


def _san(host: str) -> x509.GeneralName:
    """An IP address or DNS name SAN for one --host value, with errors that say why."""
    raw = host.strip()
    if not raw:
        raise DeployError("--host must not be empty; give an IP address or a DNS name")
    try:
        return x509.IPAddress(ipaddress.ip_address(raw.strip("[]")))
    except ValueError:
        pass
    if "://" in raw or "/" in raw:
        raise DeployError(f"--host {raw!r}: give a bare host name or IP address, not a URL")
    if ":" in raw:
        raise DeployError(
            f"--host {raw!r}: give the host without a port (the certificate covers all ports)"
        )
    name = raw.rstrip(".").lower()
    labels = name.split(".")
    if labels[0] == "*":  # a wildcard is allowed as the whole left-most label only
        labels = labels[1:]
    if len(name) > 253 or not labels or not all(_DNS_LABEL.match(lb) for lb in labels):
        raise DeployError(
            f"--host {raw!r} is neither an IP address nor a valid DNS name "
            "(letters, digits and '-' in dot-separated labels)"
        )
    return x509.DNSName(name)


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        g = _san(h)
        if g not in out:
            out.append(g)
    if not out:
        raise DeployError("give at least one --host for the server certificate")
    return out


def _days(days: int, what: str) -> dt.timedelta:
    if not isinstance(days, int) or days < 1:
        raise DeployError(f"{what} must be a whole number of days >= 1, got {days!r}")
    return dt.timedelta(days=days)


def _load_ca(
    key_path: Path, cert_path: Path
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An existing CA to sign a new server certificate with (renewal keeps node trust)."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise DeployError(f"CA file {exc.filename} not found") from None
    except (ValueError, TypeError) as exc:
        raise DeployError(
            f"cannot read the CA ({key_path}, {cert_path}): {exc}; give an unencrypted PEM "
            "private key and its PEM certificate"
        ) from None
    if key.public_key() != cert.public_key():
        raise DeployError(f"{key_path} is not the private key of {cert_path}")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise DeployError(f"{cert_path} is not a CA certificate (BasicConstraints CA:TRUE)")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeployError(f"{key_path}: only EC CA keys (as made by `tls generate`) are supported")
    return key, cert


def generate_tls(
    out_dir: str | Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    ca_days: int = CA_DAYS,
    server_days: int = SERVER_DAYS,
    ca_key: str | Path | None = None,
    ca_cert: str | Path | None = None,
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Write a CA and a SuperLink server certificate with SANs for ``hosts``.

    ``ca_key``/``ca_cert`` sign with an existing CA instead of making one, so a renewed or
    re-addressed server certificate needs no new ``ca.pem`` on the SuperNodes.
    """
    out = Path(out_dir).expanduser()
    sans = _sans(list(hosts))
    ca_life, server_life = _days(ca_days, "--ca-days"), _days(server_days, "--days")
    files, reuse = _planned_files(out, ca_key, ca_cert)
    now = now or dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)  # tolerate small clock skew between machines
    if reuse:
        ca_priv, ca_crt = _load_ca(files.ca_key, files.ca_cert)
    else:
        ca_priv, ca_crt = _new_ca(start, ca_life)
    server_priv, server_crt = _server_certificate(ca_priv, ca_crt, sans, start, server_life)
    out.mkdir(parents=True, exist_ok=True)
    if not reuse:
        write_new_file(files.ca_key, _private_pem(ca_priv), 0o600)
        write_new_file(files.ca_cert, ca_crt.public_bytes(serialization.Encoding.PEM), 0o644)
    write_new_file(files.server_key, _private_pem(server_priv), 0o600)
    write_new_file(files.server_cert, server_crt.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _planned_files(
    out: Path, ca_key: str | Path | None, ca_cert: str | Path | None
) -> tuple[TlsFiles, bool]:
    """Where each file goes, and whether an existing CA signs; refused before anything is
    made if a file to be written is already there."""
    reuse = ca_key is not None or ca_cert is not None
    if reuse and (ca_key is None or ca_cert is None):
        raise DeployError("give both --ca-key and --ca-cert to sign with an existing CA")
    if reuse:
        ca_paths = (Path(ca_key).expanduser(), Path(ca_cert).expanduser())  # type: ignore[arg-type]
    else:
        ca_paths = (out / "ca.key", out / "ca.pem")
    files = TlsFiles(*ca_paths, out / "server.key", out / "server.pem")
    targets = [files.server_key, files.server_cert]
    if not reuse:
        targets = [files.ca_key, files.ca_cert, *targets]
    refuse_existing(
        targets,
        "choose an empty --out folder, or pass --ca-key/--ca-cert to sign a new server "
        "certificate with the existing CA into another folder",
    )
    return files, reuse


def _new_ca(
    start: dt.datetime, life: dt.timedelta
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    ca_priv = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "azsl-flower deployment"),
            x509.NameAttribute(NameOID.COMMON_NAME, "azsl-flower SuperLink CA"),
        ]
    )
    ca_crt = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + life)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage("key_cert_sign", "crl_sign"),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_priv.public_key()), critical=False
        )
        .sign(ca_priv, hashes.SHA384())
    )
    return ca_priv, ca_crt


def _server_certificate(
    ca_priv: ec.EllipticCurvePrivateKey,
    ca_crt: x509.Certificate,
    sans: list[x509.GeneralName],
    start: dt.datetime,
    life: dt.timedelta,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's key and certificate: server authentication for every SAN, signed by
    the CA and expiring no later than it."""
    server_priv = ec.generate_private_key(ec.SECP256R1())
    first = sans[0].value
    common = str(first)
    server_crt = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "azsl-flower deployment"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common[:64]),
                ]
            )
        )
        .issuer_name(ca_crt.subject)
        .public_key(server_priv.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + life, ca_crt.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage("digital_signature", "key_agreement"),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_priv.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_crt.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_priv, hashes.SHA384())
    )
    return server_priv, server_crt
