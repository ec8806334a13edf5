"""Deployment material: certificates, SuperNode auth keys, the flwr connection entry.

Keys and certificates are checked with the same functions Flower 1.42 uses to read them
(`flower-supernode`, `flwr supernode register`, the connection validator), so a format
change on either side fails here and not in front of an operator.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import stat
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from azsl_flower.tools.cli import main as cli
from azsl_flower.tools.deploy import DeployError, generate_node_auth, write_connection
from azsl_flower.tools.tls import generate_tls


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _verify(cert: x509.Certificate, ca: x509.Certificate) -> None:
    """A full chain check: signature, validity, server use, as a TLS client would do."""
    from cryptography.x509.verification import PolicyBuilder, Store

    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    verifier.verify(cert, [])


# -- TLS ---------------------------------------------------------------------------------------


def test_tls_certificate_verifies_against_the_ca_with_all_sans(tmp_path):
    files = generate_tls(tmp_path, ["127.0.0.1", "superlink.example.org", "::1", "localhost"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    _verify(cert, ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # private keys: owner-only, unencrypted PEM the SuperLink (uvicorn/ssl) can load
    for key_path, crt in ((files.ca_key, ca), (files.server_key, cert)):
        assert _mode(key_path) == 0o600
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert key.public_key() == crt.public_key()


def test_tls_loads_in_a_real_ssl_context(tmp_path):
    import ssl

    files = generate_tls(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=str(files.ca_cert))
    assert client.cert_store_stats()["x509_ca"] == 1


def test_tls_default_hosts_and_flower_reads_the_files(tmp_path):
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    files = generate_tls(tmp_path)
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert validate_and_resolve_root_certificates(str(files.ca_cert), False)


def test_tls_never_overwrites_and_can_reuse_the_ca(tmp_path):
    files = generate_tls(tmp_path / "a")
    before = {p: p.read_bytes() for p in tmp_path.joinpath("a").iterdir()}
    with pytest.raises(DeployError, match="already exist.*never overwritten"):
        generate_tls(tmp_path / "a")
    assert {p: p.read_bytes() for p in tmp_path.joinpath("a").iterdir()} == before
    renewed = generate_tls(tmp_path / "b", ["10.1.2.3"], ca_key=files.ca_key, ca_cert=files.ca_cert)
    assert renewed.ca_cert == files.ca_cert
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["server.key", "server.pem"]
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(renewed.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        (["127.0.0.1:9092"], "without a port"),
        (["https://superlink.example.org"], "not a URL"),
        (["bad name"], "neither an IP address nor a valid DNS name"),
        (["-bad.example.org"], "neither an IP address"),
        ([""], "must not be empty"),
        ([], "at least one"),
    ],
)
def test_tls_bad_hosts_are_refused_before_writing(tmp_path, hosts, message):
    with pytest.raises(DeployError, match=message):
        generate_tls(tmp_path / "t", hosts)
    assert not (tmp_path / "t").exists()


def test_tls_bad_ca_and_lifetimes(tmp_path):
    files = generate_tls(tmp_path / "a")
    other = generate_tls(tmp_path / "b")
    with pytest.raises(DeployError, match="both --ca-key and --ca-cert"):
        generate_tls(tmp_path / "c", ca_key=files.ca_key)
    with pytest.raises(DeployError, match="is not the private key of"):
        generate_tls(tmp_path / "c", ca_key=files.ca_key, ca_cert=other.ca_cert)
    with pytest.raises(DeployError, match="not a CA certificate"):
        generate_tls(tmp_path / "c", ca_key=files.server_key, ca_cert=files.server_cert)
    with pytest.raises(DeployError, match="not found"):
        generate_tls(tmp_path / "c", ca_key=tmp_path / "nope.key", ca_cert=files.ca_cert)
    with pytest.raises(DeployError, match="--days"):
        generate_tls(tmp_path / "c", server_days=0)


def test_tls_server_certificate_never_outlives_its_ca(tmp_path):
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    files = generate_tls(tmp_path, ca_days=10, server_days=400, now=now)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc
    assert cert.not_valid_before_utc < now  # a few minutes of clock-skew tolerance


# -- SuperNode authentication keys -------------------------------------------------------------


def test_node_auth_keys_load_like_flower_does(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    priv, pub = generate_node_auth(tmp_path, "owner-1")
    assert (priv.name, pub.name) == ("owner-1.node.key", "owner-1.node.pub")
    assert _mode(priv) == 0o600
    key = serialization.load_ssh_private_key(priv.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP384R1)
    public = serialization.load_ssh_public_key(pub.read_bytes())
    assert public == key.public_key()
    assert pub.read_text().count("\n") == 1 and pub.read_text().startswith("ecdsa-sha2-nistp384")
    # exactly what flower-supernode and `flwr supernode register` call
    args = argparse.Namespace(auth_supernode_private_key=str(priv), auth_supernode_public_key=None)
    loaded, derived = _try_setup_client_authentication(args)
    assert derived == public
    assert try_load_public_key(pub)


def test_node_auth_never_overwrites_and_checks_names(tmp_path):
    priv, pub = generate_node_auth(tmp_path, "owner-1")
    before = (priv.read_bytes(), pub.read_bytes())
    with pytest.raises(DeployError, match="already exist.*another --name"):
        generate_node_auth(tmp_path, "owner-1")
    assert (priv.read_bytes(), pub.read_bytes()) == before
    pub.unlink()  # half a pair left behind is still refused
    with pytest.raises(DeployError, match="already exist"):
        generate_node_auth(tmp_path, "owner-1")
    for bad in ("", "../x", "a/b", ".hidden", "has space"):
        with pytest.raises(DeployError, match="plain file name"):
            generate_node_auth(tmp_path, bad)


def test_node_auth_keys_are_not_encryption_keys(tmp_path):
    """The X25519 allow-list loader refuses an auth key by name, not with a crash."""
    from azsl_flower.wire.crypto import KeyFileError, load_public_key

    _, pub = generate_node_auth(tmp_path, "owner-1")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(pub)


# -- $FLWR_HOME/config.toml --------------------------------------------------------------------


def test_connection_is_added_next_to_flowers_defaults(tmp_path):
    from flwr.cli.flower_config import read_superlink_connection

    ca = generate_tls(tmp_path / "tls").ca_cert
    home = tmp_path / "home"
    path = write_connection("azsl", "127.0.0.1:9093", ca, home=home, make_default=True)
    doc = tomllib.loads(path.read_text())
    assert doc["superlink"]["default"] == "azsl"
    assert doc["superlink"]["local"]["address"] == ":local:"  # Flower's own entries stay
    assert doc["superlink"]["azsl"] == {
        "address": "127.0.0.1:9093",
        "root-certificates": str(ca.resolve()),
        "insecure": False,
    }
    with pytest.MonkeyPatch.context() as mp:  # and Flower reads it back
        mp.setenv("FLWR_HOME", str(home))
        conn = read_superlink_connection("azsl")
    assert conn.address == "127.0.0.1:9093" and not conn.insecure
    assert conn.root_certificates == str(ca.resolve())


def test_connection_keeps_other_entries_and_refuses_silent_changes(tmp_path):
    ca = generate_tls(tmp_path / "tls").ca_cert
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "mine"\n\n[superlink.mine]\naddress = "10.0.0.1:9093"\n'
        'root-certificates = "/etc/ca.pem"\n\n[superlink.mine.options]\nnum-supernodes = 3\n'
    )
    path = write_connection("azsl", "127.0.0.1:9093", ca, home=home)
    doc = tomllib.loads(path.read_text())
    assert doc["superlink"]["default"] == "mine"  # not taken over without make_default
    assert doc["superlink"]["mine"]["options"]["num-supernodes"] == 3
    # same settings again: nothing to do; other settings: refused, or replaced on request
    write_connection("azsl", "127.0.0.1:9093", ca, home=home)
    with pytest.raises(DeployError, match="already has \\[superlink.azsl\\].*--replace"):
        write_connection("azsl", "127.0.0.1:9999", ca, home=home)
    write_connection("azsl", "127.0.0.1:9999", ca, home=home, replace=True)
    doc = tomllib.loads(path.read_text())
    assert doc["superlink"]["azsl"]["address"] == "127.0.0.1:9999"
    assert doc["superlink"]["mine"]["address"] == "10.0.0.1:9093"


def test_connection_bad_input(tmp_path):
    ca = generate_tls(tmp_path / "tls").ca_cert
    home = tmp_path / "home"
    with pytest.raises(DeployError, match="HOST:PORT"):
        write_connection("azsl", "https://127.0.0.1:9093", ca, home=home)
    with pytest.raises(DeployError, match="--root-certificates"):
        write_connection("azsl", "127.0.0.1:9093", None, home=home)
    with pytest.raises(DeployError, match="not found"):
        write_connection("azsl", "127.0.0.1:9093", tmp_path / "nope.pem", home=home)
    with pytest.raises(DeployError, match="not a PEM certificate"):
        write_connection("azsl", "127.0.0.1:9093", tmp_path / "tls" / "ca.key", home=home)
    with pytest.raises(DeployError, match="plain file name"):
        write_connection("a b", "127.0.0.1:9093", ca, home=home)
    home.mkdir()
    (home / "config.toml").write_text("[superlink\n")
    with pytest.raises(DeployError, match="not valid TOML"):
        write_connection("azsl", "127.0.0.1:9093", ca, home=home)
    assert (home / "config.toml").read_text() == "[superlink\n"  # left for the user to fix


# -- command line ------------------------------------------------------------------------------


def test_cli_generates_and_refuses_overwrite(tmp_path, capsys):
    assert cli(["tls", "generate", "--out", str(tmp_path / "tls"), "--host", "127.0.0.1"]) == 0
    assert cli(["node-auth", "generate", "--out", str(tmp_path / "auth"), "--name", "n1"]) == 0
    assert (
        cli(
            [
                "connection",
                "add",
                "--name",
                "azsl",
                "--address",
                "127.0.0.1:9093",
                "--root-certificates",
                str(tmp_path / "tls" / "ca.pem"),
                "--flwr-home",
                str(tmp_path / "home"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "flwr supernode register" in out and "--ssl-certfile" in out
    assert cli(["tls", "generate", "--out", str(tmp_path / "tls")]) == 2
    assert cli(["node-auth", "generate", "--out", str(tmp_path / "auth"), "--name", "n1"]) == 2
    assert cli(["tls", "generate", "--out", str(tmp_path / "x"), "--host", "a:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("azsl-flower: ") == 3 and "never overwritten" in err
