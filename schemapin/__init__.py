"""SchemaPin for Symbi: a strict, interoperable implementation of ThirdKeyAI's SchemaPin.

Byte-for-byte compatible with the reference (PyPI ``schemapin`` 1.3): canonical JSON,
ECDSA P-256 over SHA-256(SHA-256(canonical)), base64 DER signatures, ``sha256:`` key
fingerprints, ``.well-known/schemapin.json`` discovery, revocation documents, trust bundles
and ``.schemapin.sig`` skill signatures. Stricter than it wherever the reference fails open:
pins only after a signature verified, strict base64 and DER, P-256 only, no redirects,
revocation failures refuse in strict mode, bundles only from allow-listed authorities. It
always signs low-S and accepts the high-S form the reference produces (``require_low_s`` opts in).

Typical use (the gateway, per tool)::

    snapshot = await resolver.resolve(domain)            # one fetch, TTL-cached
    tool = parse_json(wire_text)                          # strict: no dup keys, NaN, ...
    result = verify_tool(tool, signature, domain=domain, tool_id=tool["name"],
                         key_source=snapshot, mode="strict", pin_store=pins)
"""

from __future__ import annotations

from ._bundle import TrustBundle, sign_bundle
from ._canonical import CANONICALIZATION, canonicalize, definition_hash, parse_json
from ._crypto import (
    DigestMode,
    fingerprint,
    fingerprints_equal,
    generate_private_key,
    load_private_key_pem,
    load_public_key_pem,
    normalize_fingerprint,
    private_key_pem,
    public_key_pem,
)
from ._discovery import (
    KeySnapshot,
    build_well_known,
    load_discovery_text,
    parse_discovery,
    snapshot_from_documents,
    well_known_url,
)
from ._domain import normalize_domain
from ._errors import (
    BundleExpired,
    BundleInvalid,
    BundleUntrusted,
    CanonicalizationFailed,
    CanonicalizationUnsupported,
    DefinitionChanged,
    DiscoveryFailed,
    DiscoveryInvalid,
    DiscoveryRedirect,
    DiscoveryTooLarge,
    DocumentTooDeep,
    DocumentTooLarge,
    DomainMismatch,
    DuplicateKey,
    InsecureTransport,
    InvalidDomain,
    InvalidJSON,
    KeyNotFound,
    KeyPinMismatch,
    KeyRevoked,
    LoneSurrogate,
    NonFiniteNumber,
    PinStoreError,
    RevocationUnavailable,
    SchemaPinError,
    SignatureInvalid,
    SignatureMalformed,
    SignatureNotCanonical,
    SkillInvalid,
    UnsupportedKey,
    UnsupportedValue,
)
from ._pinrules import Pin, PinEvent, PinStatus, normalize_definition_hash
from ._pins import Pins, PinStore
from ._resolver import KeyResolver, StaticKeyResolver, WellKnownResolver
from ._skill import SkillVerification, canonicalize_skill, sign_skill, verify_skill
from ._verify import (
    SIGNATURE_META_KEY,
    Mode,
    VerificationResult,
    sign_envelope,
    sign_tool,
    split_carrier,
    verify_envelope,
    verify_tool,
)

__all__ = [  # noqa: RUF022 - grouped by topic
    # canonical JSON
    "CANONICALIZATION",
    "canonicalize",
    "definition_hash",
    "parse_json",
    # keys
    "DigestMode",
    "fingerprint",
    "fingerprints_equal",
    "normalize_fingerprint",
    "generate_private_key",
    "load_private_key_pem",
    "load_public_key_pem",
    "private_key_pem",
    "public_key_pem",
    # tools
    "Mode",
    "VerificationResult",
    "sign_tool",
    "verify_tool",
    "sign_envelope",
    "verify_envelope",
    "split_carrier",
    "SIGNATURE_META_KEY",
    # discovery, revocation, bundles
    "KeySnapshot",
    "KeyResolver",
    "StaticKeyResolver",
    "WellKnownResolver",
    "TrustBundle",
    "sign_bundle",
    "build_well_known",
    "parse_discovery",
    "load_discovery_text",
    "snapshot_from_documents",
    "well_known_url",
    "normalize_domain",
    "normalize_definition_hash",
    # pins
    "Pin",
    "PinEvent",
    "PinStatus",
    "PinStore",
    "Pins",
    # skills
    "SkillVerification",
    "canonicalize_skill",
    "sign_skill",
    "verify_skill",
    # errors
    "SchemaPinError",
    "CanonicalizationFailed",
    "InvalidJSON",
    "DuplicateKey",
    "NonFiniteNumber",
    "LoneSurrogate",
    "DocumentTooLarge",
    "DocumentTooDeep",
    "UnsupportedValue",
    "CanonicalizationUnsupported",
    "KeyNotFound",
    "UnsupportedKey",
    "SignatureInvalid",
    "SignatureMalformed",
    "SignatureNotCanonical",
    "KeyRevoked",
    "KeyPinMismatch",
    "DefinitionChanged",
    "DomainMismatch",
    "DiscoveryFailed",
    "DiscoveryRedirect",
    "DiscoveryTooLarge",
    "InsecureTransport",
    "DiscoveryInvalid",
    "InvalidDomain",
    "RevocationUnavailable",
    "BundleInvalid",
    "BundleUntrusted",
    "BundleExpired",
    "PinStoreError",
    "SkillInvalid",
]
