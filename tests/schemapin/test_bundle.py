"""Trust bundles: only from allow-listed authorities, signatures and expiry enforced."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

import schemapin
from schemapin import TrustBundle

from .conftest import load_tool

DOMAIN = "acme.example"


def make_bundle(
    key: ec.EllipticCurvePrivateKey, authority: ec.EllipticCurvePrivateKey, **kw: Any
) -> dict[str, Any]:
    entry = {"domain": DOMAIN, **schemapin.build_well_known(schemapin.public_key_pem(key), "Acme")}
    return schemapin.sign_bundle(
        {"schemapin_bundle_version": "1.2", "documents": [entry], "revocations": []}, authority, **kw
    )


def test_bundle_from_allowed_authority(key: ec.EllipticCurvePrivateKey) -> None:
    auth = schemapin.generate_private_key()
    b = TrustBundle.load(
        json.dumps(make_bundle(key, auth)),
        trusted_authorities=[schemapin.fingerprint(auth).upper().replace("SHA256", "sha256")],
    )
    snap = b.snapshot("ACME.example.")
    _, tool = load_tool("create_issue")
    r = schemapin.verify_tool(
        tool, schemapin.sign_tool(tool, key), domain=DOMAIN, tool_id="create_issue", key_source=snap
    )
    assert r.key_fingerprint == schemapin.fingerprint(key)
    with pytest.raises(schemapin.DiscoveryFailed):
        b.snapshot("unknown.example")


def test_attack_bundle_from_unlisted_authority(key: ec.EllipticCurvePrivateKey) -> None:
    """The reference TOFU-pins a bundle authority by kid; an attacker's new kid is accepted there."""
    good, evil = schemapin.generate_private_key(), schemapin.generate_private_key()
    with pytest.raises(schemapin.BundleUntrusted) as e:
        TrustBundle.load(make_bundle(key, evil), trusted_authorities=[schemapin.fingerprint(good)])
    assert e.value.code == "bundle_untrusted" and e.value.reference_code == "bundle_unsigned"
    with pytest.raises(schemapin.BundleUntrusted):
        TrustBundle.load(make_bundle(key, good), trusted_authorities=[])


def test_attack_bundle_tampered_after_signing(
    key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> None:
    auth = schemapin.generate_private_key()
    b = make_bundle(key, auth)
    b["documents"][0]["public_key_pem"] = schemapin.public_key_pem(other_key)
    with pytest.raises(schemapin.BundleUntrusted):
        TrustBundle.load(b, trusted_authorities=[schemapin.fingerprint(auth)])


def test_unsigned_v12_bundle_refused(key: ec.EllipticCurvePrivateKey) -> None:
    auth = schemapin.generate_private_key()
    b = make_bundle(key, auth)
    for k in ("signature", "bundle_authority", "signed_at"):
        b.pop(k)
    with pytest.raises(schemapin.BundleUntrusted):
        TrustBundle.load(b, trusted_authorities=[schemapin.fingerprint(auth)])


def test_expired_bundle(key: ec.EllipticCurvePrivateKey) -> None:
    auth = schemapin.generate_private_key()
    b = make_bundle(key, auth, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(schemapin.BundleExpired) as e:
        TrustBundle.load(b, trusted_authorities=[schemapin.fingerprint(auth)])
    assert e.value.code == "bundle_expired"


def test_bundle_revocations_apply(key: ec.EllipticCurvePrivateKey) -> None:
    auth = schemapin.generate_private_key()
    entry = {"domain": DOMAIN, **schemapin.build_well_known(schemapin.public_key_pem(key), "Acme")}
    rev = {
        "schemapin_version": "1.2",
        "domain": DOMAIN,
        "updated_at": "2026-01-01T00:00:00Z",
        "revoked_keys": [
            {
                "fingerprint": schemapin.fingerprint(key),
                "revoked_at": "2026-01-01T00:00:00Z",
                "reason": "key_compromise",
            }
        ],
    }
    b = schemapin.sign_bundle({"documents": [entry], "revocations": [rev]}, auth)
    snap = TrustBundle.load(b, trusted_authorities=[schemapin.fingerprint(auth)]).snapshot(DOMAIN)
    _, tool = load_tool("create_issue")
    with pytest.raises(schemapin.KeyRevoked):
        schemapin.verify_tool(
            tool, schemapin.sign_tool(tool, key), domain=DOMAIN, tool_id="create_issue", key_source=snap
        )


def test_bundle_with_duplicate_keys_refused(key: ec.EllipticCurvePrivateKey) -> None:
    auth = schemapin.generate_private_key()
    text = json.dumps(make_bundle(key, auth))
    text = text[:-1] + ', "documents": []}'
    with pytest.raises(schemapin.BundleInvalid):
        TrustBundle.load(text, trusted_authorities=[schemapin.fingerprint(auth)])
