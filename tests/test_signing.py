"""Signed apps, checked with Flower 1.42's own code: what a SuperNode started with
``--trusted-entities`` verifies, and what a SuperLink fetches from an app registry."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from flwr.supercore.fab import Fab
from flwr.supercore.utils import request_download_link
from flwr.superlink.servicer.control.control_handlers import _format_verification
from flwr.supernode.start_client_internal import _verify_fab

from azsl_flower.tools.signing import AppRegistry, generate_signing_key, sign_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    work = tmp_path_factory.mktemp("signing")
    key, pub, trusted = generate_signing_key(work / "signer", "reviewer")
    app = sign_app(ROOT, key, "reviewer", work / "apps")
    return work, key, trusted, app


def _as_superlink_stores(fab: bytes, verifications: list[dict]) -> Fab:
    return Fab(hashlib.sha256(fab).hexdigest(), fab, _format_verification(verifications))


def test_signing_keys_are_what_flower_reads(signed):
    work, key, trusted, _ = signed
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    entities = yaml.safe_load(trusted.read_text())
    assert list(entities) == ["reviewer"] and entities["reviewer"].startswith("ssh-ed25519 ")
    with pytest.raises(FileExistsError):
        generate_signing_key(work / "signer", "reviewer")  # never overwritten


def test_a_signed_app_verifies_and_nothing_else_does(signed, tmp_path):
    work, _, trusted, app = signed
    entities = yaml.safe_load(trusted.read_text())
    fab = app.fab.read_bytes()
    assert _verify_fab(_as_superlink_stores(fab, app.verifications), entities)
    # the same signature on any other bundle (one byte of code changed) does not verify
    assert not _verify_fab(_as_superlink_stores(fab + b"\0", app.verifications), entities)
    # nor does a bundle signed by a key the owners do not trust
    other_key, _, other = generate_signing_key(tmp_path, "reviewer")
    forged = sign_app(ROOT, other_key, "reviewer", tmp_path / "apps")
    assert not _verify_fab(
        _as_superlink_stores(forged.fab.read_bytes(), forged.verifications), entities
    )
    assert _verify_fab(
        _as_superlink_stores(forged.fab.read_bytes(), forged.verifications),
        yaml.safe_load(other.read_text()),
    )


def test_the_registry_answers_a_superlink_as_flower_hub_does(signed):
    _, _, _, app = signed
    with AppRegistry([app]) as reg:
        url, verifications, _ = request_download_link(
            app.app_id, app.version, f"{reg.url}/hub/fetch-fab", "fab_url"
        )
        assert verifications == app.verifications
        import urllib.request

        assert urllib.request.urlopen(url, timeout=10).read() == app.fab.read_bytes()
        with pytest.raises(ValueError, match="not found"):
            request_download_link("@someone/else", "1.0.0", f"{reg.url}/hub/fetch-fab", "fab_url")
    assert json.loads(app.fab.with_name(app.fab.stem + ".verifications.json").read_text())
