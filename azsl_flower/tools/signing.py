"""Signed apps: only code the owners trust runs at their SuperNodes.

Flower 1.42 runs whatever ClientApp a run ships, unless a SuperNode is started with
``--trusted-entities FILE``: then it runs an app only if the SuperLink hands it a
signature over the app bundle (FAB) by one of those Ed25519 keys (``supernode/
start_client_internal.py: _verify_fab``), and refuses every other app, an app submitted
from a folder with ``flwr run .`` included (such an app carries no signature at all).

Signatures reach a SuperLink only with an app it fetches from an app registry (Flower Hub:
``flwr app publish``, reviewers sign with ``flwr app review``; ``flwr run
@publisher/app==version``). This module makes the same thing work offline and in tests,
with Flower's own primitives (``flwr.supercore.primitives.asymmetric_ed25519``):

- :func:`generate_signing_key`: an Ed25519 key pair in OpenSSH format and the
  ``trusted-entities.yaml`` that owners pass to ``flower-supernode --trusted-entities``;
- :func:`sign_app`: build the FAB from the app folder (Flower's builder) and sign its
  SHA-256 as Flower verifies it;
- :class:`AppRegistry`: a local registry (HTTP on 127.0.0.1) that answers the SuperLink's
  ``POST /hub/fetch-fab`` with the FAB's address and its signatures. Start the SuperLink
  with ``FLWR_SUPERGRID_API_URL=http://127.0.0.1:PORT`` and run
  ``flwr run @azsl-flower/azsl-flower==0.1.0 <connection>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import tomllib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign, sign_message
from packaging.version import InvalidVersion, Version

from azsl_flower.wire.crypto import write_new_file

__all__ = [
    "AppRegistry",
    "SignedApp",
    "app_spec",
    "generate_signing_key",
    "sign_app",
]


@dataclass(frozen=True)
class SignedApp:
    """A FAB on disk and the verification records Flower's SuperNodes check."""

    fab: Path
    app_id: str  # '@publisher/name'
    version: str
    verifications: list[dict[str, object]]

    @property
    def spec(self) -> str:
        return f"{self.app_id}=={self.version}"


def _name_ok(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ValueError(f"signer name {name!r}: letters, digits, '-', '_' or '.'")
    return name


def generate_signing_key(out_dir: str | Path, name: str) -> tuple[Path, Path, Path]:
    """``NAME.sign.key`` (OpenSSH Ed25519, 0600), ``NAME.sign.pub`` and
    ``trusted-entities.yaml`` (``NAME: ssh-ed25519 ...``) for the owners; never overwrites."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    paths = (
        out / f"{_name_ok(name)}.sign.key",
        out / f"{name}.sign.pub",
        out / "trusted-entities.yaml",
    )
    write_new_file(paths[0], private, 0o600)
    write_new_file(paths[1], public + b"\n", 0o644)
    write_new_file(paths[2], f"{name}: {public.decode()}\n".encode(), 0o644)
    return paths


def app_spec(app_dir: str | Path) -> tuple[str, str]:
    """('@publisher/name', version) of the app folder, as Flower names it."""
    meta = tomllib.loads((Path(app_dir) / "pyproject.toml").read_text())
    publisher = meta["tool"]["flwr"]["app"]["publisher"]
    return f"@{publisher}/{meta['project']['name']}", str(meta["project"]["version"])


def sign_app(
    app_dir: str | Path, key_file: str | Path, name: str, out_dir: str | Path
) -> SignedApp:
    """Build the app's FAB with Flower's builder and sign it with ``key_file`` as ``name``.

    Writes ``<out>/<name>-<version>.fab`` and ``<out>/<name>-<version>.verifications.json``;
    a FAB that changes (any file of the app) needs a new signature."""
    from flwr.cli.build import build_fab_from_disk

    key = serialization.load_ssh_private_key(Path(key_file).expanduser().read_bytes(), None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{key_file} is not an Ed25519 OpenSSH private key")
    fab = build_fab_from_disk(Path(app_dir))
    app_id, version = app_spec(app_dir)
    signed_at = int(time.time())
    signature = sign_message(key, create_message_to_sign(hashlib.sha256(fab).digest(), signed_at))
    verifications = [
        {
            "public_key_id": _name_ok(name),
            "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode(),
            "signed_at": signed_at,
        }
    ]
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{app_id.split('/')[-1]}-{version}"
    (out / f"{stem}.fab").write_bytes(fab)
    (out / f"{stem}.verifications.json").write_text(json.dumps(verifications, indent=1))
    return SignedApp(out / f"{stem}.fab", app_id, version, verifications)


class AppRegistry:
    """Serves signed apps to a SuperLink as Flower Hub would, on 127.0.0.1 only.

    ``with AppRegistry([signed]) as reg:`` start the SuperLink with
    ``FLWR_SUPERGRID_API_URL=reg.url``. Unknown apps get 404, as from Flower Hub.
    """

    def __init__(self, apps: list[SignedApp], host: str = "127.0.0.1", port: int = 0) -> None:
        for a in apps:  # refused here, so that find never has to guess an order
            try:
                Version(a.version)
            except InvalidVersion:
                raise ValueError(
                    f"{a.spec}: version {a.version!r} is not a PEP 440 version (such as 0.10.0); "
                    "set [project] version in the app's pyproject.toml and sign it again"
                ) from None
        self.apps = {(a.app_id, a.version): a for a in apps}
        self.fetched: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rstrip("/") != "/hub/fetch-fab":
                    return self._send(404, b'{"detail": "not found"}')
                try:
                    size = min(int(self.headers.get("Content-Length", "0")), 1 << 16)
                    body = json.loads(self.rfile.read(size))
                    app = registry.find(str(body["app_id"]), body.get("app_version"))
                except (ValueError, KeyError, TypeError):
                    return self._send(400, b'{"detail": "bad request"}')
                if app is None:
                    return self._send(404, b'{"detail": "app not found"}')
                registry.fetched.append(app.spec)
                url = f"{registry.url}/fab/{app.fab.name}"
                answer = {"fab_url": url, "verifications": app.verifications}
                return self._send(200, json.dumps(answer).encode())

            def do_GET(self) -> None:  # noqa: N802
                for app in registry.apps.values():
                    if self.path == f"/fab/{app.fab.name}":
                        return self._send(200, app.fab.read_bytes(), "application/octet-stream")
                return self._send(404, b"not found", "text/plain")

        self._server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def find(self, app_id: str, version: object) -> SignedApp | None:
        """The app at ``version``, or without one the newest by version order (0.10.0 is
        newer than 0.9.0, which string order would not say), as Flower Hub serves it."""
        if version:
            return self.apps.get((app_id, str(version)))
        versions = [v for a, v in self.apps if a == app_id]
        return self.apps[(app_id, max(versions, key=Version))] if versions else None

    def __enter__(self) -> AppRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
