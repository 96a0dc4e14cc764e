"""Discovery documents (``/.well-known/schemapin.json``), revocation documents and key snapshots.

A :class:`KeySnapshot` is everything one verification needs about a domain's key, taken from
one fetch: the key, its fingerprint, and the revocation state. Verifying against a snapshot
means every check sees the same data (the reference fetches up to three times).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from ._canonical import parse_json
from ._crypto import fingerprint, load_public_key_pem, normalize_fingerprint
from ._domain import normalize_domain
from ._errors import DiscoveryInvalid, KeyNotFound, RevocationUnavailable, SchemaPinError

log = logging.getLogger("schemapin")

WELL_KNOWN_PATH = "/.well-known/schemapin.json"
REVOCATION_REASONS = frozenset(
    {"key_compromise", "superseded", "cessation_of_operation", "privilege_withdrawn"}
)
RevocationState = Literal["checked", "unavailable"]


@dataclass(frozen=True)
class KeySnapshot:
    """A domain's signing key and revocation state, as seen by one fetch.

    Attributes:
        domain: the normalised domain the key belongs to, or ``None`` for a key given directly
            (``--public-key``), which can be used for any domain.
        public_key: the ECDSA P-256 public key.
        fingerprint: ``sha256:<lowercase hex>`` of the key.
        revoked: lowercase fingerprints revoked by any source consulted.
        revocation: ``checked`` when every revocation source answered, else ``unavailable``.
        revocation_error: why revocation is unavailable.
        developer_name: from the discovery document.
        source: where the key came from (URL, file, bundle, static).
        fetched_at: ``time.time()`` of the fetch.
    """

    domain: str | None
    public_key: ec.EllipticCurvePublicKey
    fingerprint: str
    revoked: frozenset[str] = frozenset()
    revocation: RevocationState = "checked"
    revocation_error: str | None = None
    developer_name: str | None = None
    source: str = "static"
    fetched_at: float = field(default_factory=time.time)

    @classmethod
    def from_public_key(
        cls, key: ec.EllipticCurvePublicKey | str, *, domain: str | None = None
    ) -> KeySnapshot:
        """A snapshot for a key given directly (a PEM string or key object); nothing is revoked."""
        pub = load_public_key_pem(key) if isinstance(key, str) else key
        return cls(
            domain=normalize_domain(domain) if domain else None,
            public_key=pub,
            fingerprint=fingerprint(pub),
            source="static",
        )

    def is_revoked(self) -> bool:
        """True when this snapshot's key is on a revocation list it was built from."""
        return self.fingerprint.lower() in self.revoked


def well_known_url(domain: str, *, scheme: str = "https") -> str:
    """``https://<normalised domain>/.well-known/schemapin.json``."""
    return f"{scheme}://{normalize_domain(domain)}{WELL_KNOWN_PATH}"


@dataclass(frozen=True)
class DiscoveryDocument:
    """A validated ``.well-known/schemapin.json``; unknown fields are kept in ``raw``."""

    schema_version: str
    public_key: ec.EllipticCurvePublicKey
    fingerprint: str
    developer_name: str | None
    contact: str | None
    revoked_keys: frozenset[str]
    revocation_endpoint: str | None
    raw: dict[str, Any]


def parse_discovery(doc: Any, *, domain: str | None = None) -> DiscoveryDocument:
    """Validate a parsed discovery document.

    Stricter than the reference: ``schema_version`` and ``public_key_pem`` must be strings,
    the key must be P-256, every ``revoked_keys`` entry must be a ``sha256:<hex>`` fingerprint
    (compared lowercase), and ``revocation_endpoint`` must be HTTPS on the same host.
    Raises ``DiscoveryInvalid`` (``KeyNotFound``/``UnsupportedKey`` for the key itself).
    """
    if not isinstance(doc, dict):
        raise DiscoveryInvalid("discovery document is not a JSON object")
    version = doc.get("schema_version")
    if not isinstance(version, str) or not version:
        raise DiscoveryInvalid("discovery document has no schema_version string")
    pem = doc.get("public_key_pem")
    if not isinstance(pem, str) or "-----BEGIN PUBLIC KEY-----" not in pem:
        raise DiscoveryInvalid("discovery document has no public_key_pem (SPKI PEM)")
    try:
        key = load_public_key_pem(pem)
    except KeyNotFound as e:
        e.details.setdefault("domain", domain)
        raise
    revoked_raw = doc.get("revoked_keys", [])
    if revoked_raw is None:
        revoked_raw = []
    if not isinstance(revoked_raw, list):
        raise DiscoveryInvalid("revoked_keys is not a list")
    revoked: set[str] = set()
    for fp in revoked_raw:
        try:
            revoked.add(normalize_fingerprint(fp))
        except ValueError:
            raise DiscoveryInvalid(f"revoked_keys entry {fp!r} is not a sha256:<hex> fingerprint") from None
    endpoint = doc.get("revocation_endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise DiscoveryInvalid("revocation_endpoint is not a string")
    for name in ("developer_name", "contact"):
        if doc.get(name) is not None and not isinstance(doc.get(name), str):
            raise DiscoveryInvalid(f"{name} is not a string")
    return DiscoveryDocument(
        schema_version=version,
        public_key=key,
        fingerprint=fingerprint(key),
        developer_name=doc.get("developer_name"),
        contact=doc.get("contact"),
        revoked_keys=frozenset(revoked),
        revocation_endpoint=endpoint or None,
        raw=dict(doc),
    )


def parse_revocation_document(doc: Any, *, domain: str) -> frozenset[str]:
    """Validate a standalone revocation document for ``domain``; return revoked fingerprints.

    Raises ``RevocationUnavailable`` when it is malformed or names another domain. An entry
    with an unknown ``reason`` still revokes its key (the reference drops the whole document).
    """
    if not isinstance(doc, dict):
        raise RevocationUnavailable("revocation document is not a JSON object", domain=domain)
    doc_domain = doc.get("domain")
    try:
        same = isinstance(doc_domain, str) and normalize_domain(doc_domain) == normalize_domain(domain)
    except SchemaPinError:
        same = False
    if not same:
        raise RevocationUnavailable(
            f"revocation document is for {doc_domain!r}, not {domain!r}",
            domain=domain,
            document_domain=doc_domain,
        )
    entries = doc.get("revoked_keys", [])
    if not isinstance(entries, list):
        raise RevocationUnavailable("revocation document revoked_keys is not a list", domain=domain)
    out: set[str] = set()
    for entry in entries:
        fp = entry.get("fingerprint") if isinstance(entry, dict) else None
        try:
            out.add(normalize_fingerprint(fp) if isinstance(fp, str) else normalize_fingerprint(""))
        except ValueError:
            raise RevocationUnavailable(
                f"revocation entry {entry!r} has no valid fingerprint", domain=domain
            ) from None
        if isinstance(entry, dict) and entry.get("reason") not in REVOCATION_REASONS:
            log.warning(
                "schemapin: revocation entry for %s has unknown reason %r; treating as revoked",
                fp,
                entry.get("reason"),
            )
    return frozenset(out)


def check_revocation_endpoint(endpoint: str, *, domain: str, allow_insecure_http: bool = False) -> None:
    """The revocation endpoint must be HTTPS on the discovery host (plain HTTP only if allowed)."""
    parts = urlsplit(endpoint)
    schemes = ("https", "http") if allow_insecure_http else ("https",)
    if parts.scheme not in schemes:
        raise RevocationUnavailable(f"revocation endpoint {endpoint!r} is not HTTPS", domain=domain)
    try:
        host = normalize_domain(parts.netloc)
    except SchemaPinError:
        host = ""
    if host != normalize_domain(domain):
        raise RevocationUnavailable(
            f"revocation endpoint {endpoint!r} is not on {domain!r}", domain=domain, endpoint=endpoint
        )


def snapshot_from_documents(
    discovery: Any,
    *,
    domain: str,
    revocation: Any = None,
    revocation_error: str | None = None,
    source: str = "document",
) -> KeySnapshot:
    """Build a snapshot from a parsed discovery document and (optional) revocation document.

    When the discovery document names a ``revocation_endpoint`` and neither ``revocation`` nor
    ``revocation_error`` is given, revocation is ``unavailable`` (strict verification refuses).
    """
    dom = normalize_domain(domain)
    doc = parse_discovery(discovery, domain=dom)
    revoked = set(doc.revoked_keys)
    state: RevocationState = "checked"
    error = revocation_error
    if revocation is not None and error is None:
        try:
            revoked |= parse_revocation_document(revocation, domain=dom)
        except RevocationUnavailable as e:
            error = e.message
    elif doc.revocation_endpoint and error is None:
        error = f"revocation endpoint {doc.revocation_endpoint} was not consulted"
    if error is not None:
        state = "unavailable"
    return KeySnapshot(
        domain=dom,
        public_key=doc.public_key,
        fingerprint=doc.fingerprint,
        revoked=frozenset(revoked),
        revocation=state,
        revocation_error=error,
        developer_name=doc.developer_name,
        source=source,
    )


def load_discovery_text(text: str | bytes, *, max_bytes: int) -> Any:
    """Parse discovery/revocation wire text strictly (errors become ``DiscoveryInvalid``)."""
    try:
        return parse_json(text, max_bytes=max_bytes, max_depth=16)
    except SchemaPinError as e:
        raise DiscoveryInvalid(f"discovery document is not strict JSON: {e.message}", cause=e.code) from None


def build_well_known(
    public_key_pem: str,
    developer_name: str,
    *,
    contact: str | None = None,
    revoked_keys: list[str] | None = None,
    revocation_endpoint: str | None = None,
    schema_version: str = "1.2",
) -> dict[str, Any]:
    """A ``.well-known/schemapin.json`` document, as the reference's ``create_well_known_response``."""
    load_public_key_pem(public_key_pem)  # refuse to publish a key we would not accept
    doc: dict[str, Any] = {
        "schema_version": schema_version,
        "developer_name": developer_name,
        "public_key_pem": public_key_pem,
    }
    if contact:
        doc["contact"] = contact
    if revoked_keys:
        doc["revoked_keys"] = [normalize_fingerprint(fp) for fp in revoked_keys]
    if revocation_endpoint:
        doc["revocation_endpoint"] = revocation_endpoint
    return doc
