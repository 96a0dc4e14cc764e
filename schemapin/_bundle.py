"""Trust bundles for offline verification, accepted only from allow-listed authorities.

The content is the SchemaPin 1.2 bundle (``schemapin_bundle_version``, ``created_at``,
``documents`` = discovery documents with ``domain`` merged in, ``revocations`` = revocation
documents). The 1.2 format is unsigned; we require the SchemaPin 1.4 signing fields on top:
``bundle_authority: {kid, public_key_pem}``, ``signed_at``, optional ``expires_at`` and
``signature`` = base64 DER ECDSA-SHA256 over ``canonical(bundle with "signature": "")``.
The authority's fingerprint must be in the configured allow-list: never TOFU by ``kid``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ._canonical import canonicalize, parse_json
from ._crypto import (
    fingerprint,
    load_public_key_pem,
    normalize_fingerprint,
    public_key_pem,
    sign_bytes,
    verify_bytes,
)
from ._discovery import KeySnapshot, snapshot_from_documents
from ._domain import normalize_domain
from ._errors import BundleExpired, BundleInvalid, BundleUntrusted, DiscoveryFailed, SchemaPinError

MAX_BUNDLE_BYTES = 16 * 1024 * 1024


def _parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise BundleInvalid(f"bundle {name} is not a string")
    try:
        t = datetime.fromisoformat(value)  # 3.11 accepts a trailing Z
    except ValueError:
        raise BundleInvalid(f"bundle {name} {value!r} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise BundleInvalid(f"bundle {name} {value!r} has no time zone")
    return t


def sign_bundle(
    bundle: dict[str, Any],
    authority_key: ec.EllipticCurvePrivateKey,
    *,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """Return a copy of a 1.2 bundle signed by ``authority_key`` (1.4 signing fields added)."""
    out = copy.deepcopy(bundle)
    out.setdefault("schemapin_bundle_version", "1.2")
    out.setdefault("created_at", datetime.now(UTC).isoformat())
    out.setdefault("documents", [])
    out.setdefault("revocations", [])
    out["bundle_authority"] = {
        "kid": fingerprint(authority_key),
        "public_key_pem": public_key_pem(authority_key),
    }
    out["signed_at"] = datetime.now(UTC).isoformat()
    if expires_at is not None:
        out["expires_at"] = expires_at.astimezone(UTC).isoformat()
    out["signature"] = ""
    out["signature"] = sign_bytes(canonicalize(out), authority_key)
    return out


def _parse_bundle(bundle: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """The bundle as an object (wire text parsed strictly, an object copied), with a version."""
    if isinstance(bundle, (str, bytes)):
        try:
            doc = parse_json(bundle, max_bytes=MAX_BUNDLE_BYTES)
        except SchemaPinError as e:
            raise BundleInvalid(f"bundle is not strict JSON: {e.message}", cause=e.code) from None
    else:
        doc = copy.deepcopy(bundle)
    if not isinstance(doc, dict):
        raise BundleInvalid("bundle is not a JSON object")
    if not isinstance(doc.get("schemapin_bundle_version"), str):
        raise BundleInvalid("bundle has no schemapin_bundle_version")
    return doc


def _verify_authority(doc: dict[str, Any], allowed: set[str]) -> str:
    """The fingerprint of the bundle's authority, which must be allow-listed and must have
    signed the bundle (over its canonical form with an empty signature)."""
    authority = doc.get("bundle_authority")
    signature = doc.get("signature")
    if not isinstance(authority, dict) or not isinstance(signature, str) or not signature:
        raise BundleUntrusted("bundle is unsigned (no bundle_authority/signature)")
    pem = authority.get("public_key_pem")
    if not isinstance(pem, str):
        raise BundleUntrusted("bundle_authority has no public_key_pem")
    key = load_public_key_pem(pem)
    fp = fingerprint(key)
    if fp not in allowed:
        raise BundleUntrusted(f"bundle authority {fp} is not on the allow-list", authority_fingerprint=fp)
    unsigned = dict(doc)
    unsigned["signature"] = ""
    try:
        verify_bytes(canonicalize(unsigned), signature, key)
    except SchemaPinError as e:
        raise BundleUntrusted(f"bundle signature is invalid: {e.message}", cause=e.code) from None
    return fp


def _discovery_documents(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The discovery documents by normalised domain (without their ``domain`` key); one each."""
    docs: dict[str, dict[str, Any]] = {}
    for entry in doc.get("documents") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("domain"), str):
            raise BundleInvalid("bundle document without a domain")
        dom = normalize_domain(entry["domain"])
        if dom in docs:
            raise BundleInvalid(f"bundle has two discovery documents for {dom}")
        docs[dom] = {k: v for k, v in entry.items() if k != "domain"}
    return docs


def _revocation_documents(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The revocation documents by normalised domain; one each."""
    revs: dict[str, dict[str, Any]] = {}
    for rev in doc.get("revocations") or []:
        if not isinstance(rev, dict) or not isinstance(rev.get("domain"), str):
            raise BundleInvalid("bundle revocation document without a domain")
        dom = normalize_domain(rev["domain"])
        if dom in revs:
            raise BundleInvalid(f"bundle has two revocation documents for {dom}")
        revs[dom] = rev
    return revs


@dataclass(frozen=True)
class TrustBundle:
    """A verified trust bundle: discovery and revocation documents per domain."""

    authority_fingerprint: str
    documents: dict[str, dict[str, Any]]
    revocations: dict[str, dict[str, Any]]
    created_at: str

    @classmethod
    def load(
        cls,
        bundle: str | bytes | dict[str, Any],
        *,
        trusted_authorities: Iterable[str],
        now: datetime | None = None,
    ) -> TrustBundle:
        """Parse and verify a signed bundle.

        Args:
            bundle: wire text (parsed strictly) or an already-parsed object.
            trusted_authorities: fingerprints (``sha256:<hex>``) of authorities whose bundles
                are accepted. Empty means no bundle is accepted.
            now: the time to check ``expires_at`` against (default: now).

        Raises ``BundleInvalid``, ``BundleUntrusted`` or ``BundleExpired``.
        """
        try:
            allowed = {normalize_fingerprint(fp) for fp in trusted_authorities}
        except ValueError as e:
            raise BundleUntrusted(f"bad authority fingerprint in allow-list: {e}") from None
        doc = _parse_bundle(bundle)
        fp = _verify_authority(doc, allowed)
        _parse_time(doc.get("signed_at"), "signed_at")
        if doc.get("expires_at") is not None:
            expires = _parse_time(doc["expires_at"], "expires_at")
            if expires <= (now or datetime.now(UTC)):
                raise BundleExpired(f"bundle expired at {doc['expires_at']}", expires_at=doc["expires_at"])
        return cls(
            authority_fingerprint=fp,
            documents=_discovery_documents(doc),
            revocations=_revocation_documents(doc),
            created_at=str(doc.get("created_at")),
        )

    def snapshot(self, domain: str) -> KeySnapshot:
        """The key snapshot for ``domain``; ``DiscoveryFailed`` when the bundle has none."""
        dom = normalize_domain(domain)
        disc = self.documents.get(dom)
        if disc is None:
            raise DiscoveryFailed(f"trust bundle has no discovery document for {dom}", domain=dom)
        rev = self.revocations.get(dom)
        # A bundle is a complete offline snapshot: a domain without a revocation document
        # in it has nothing revoked beyond its revoked_keys list.
        err = None
        if rev is None and disc.get("revocation_endpoint"):
            rev = {"domain": dom, "revoked_keys": []}
        return snapshot_from_documents(
            disc,
            domain=dom,
            revocation=rev,
            revocation_error=err,
            source=f"bundle:{self.authority_fingerprint}",
        )

    async def resolve(self, domain: str) -> KeySnapshot:
        """:class:`KeyResolver` interface over :meth:`snapshot`."""
        return self.snapshot(domain)
