"""The SchemaPin error family: one base class, one subclass per failure.

``code`` is stable and machine-readable. Where the reference implementation (PyPI
``schemapin``) has an error code for the same failure, ``code`` equals it; a finer-grained
subclass keeps its own ``code`` and names the reference's in ``reference_code``.
"""

from __future__ import annotations

from typing import Any


class SchemaPinError(Exception):
    """Base of every failure this library reports.

    Attributes:
        code: stable machine-readable identifier of this failure.
        reference_code: the nearest error code of the reference implementation.
        message: a human-readable reason.
        details: extra machine-readable facts (fingerprints, hashes, paths...).
    """

    code: str = "schemapin_error"
    reference_code: str = "schemapin_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (for ``--json`` output and audit logs)."""
        return {
            "valid": False,
            "error_code": self.code,
            "reference_code": self.reference_code,
            "error_message": self.message,
            "details": self.details,
        }


# --- canonical JSON ---------------------------------------------------------------------------


class CanonicalizationFailed(SchemaPinError):
    """The input cannot be turned into SchemaPin canonical JSON."""

    code = reference_code = "schema_canonicalization_failed"


class InvalidJSON(CanonicalizationFailed):
    """The wire text is not valid JSON (or not UTF-8)."""

    code = "invalid_json"


class DuplicateKey(CanonicalizationFailed):
    """An object has the same key twice: parsers disagree on which one wins."""

    code = "duplicate_key"


class NonFiniteNumber(CanonicalizationFailed):
    """NaN or +/-Infinity: not JSON, and the reference would emit non-JSON tokens."""

    code = "non_finite_number"


class LoneSurrogate(CanonicalizationFailed):
    """A string holds an unpaired UTF-16 surrogate, which has no UTF-8 encoding."""

    code = "lone_surrogate"


class DocumentTooLarge(CanonicalizationFailed):
    """The document is over the size cap."""

    code = "document_too_large"


class DocumentTooDeep(CanonicalizationFailed):
    """The document nests deeper than the depth cap."""

    code = "document_too_deep"


class UnsupportedValue(CanonicalizationFailed):
    """A value that is not a JSON type (or a non-string object key)."""

    code = "unsupported_value"


class CanonicalizationUnsupported(SchemaPinError):
    """A ``canonicalization`` other than ``schemapin-v1`` was requested (SchemaPin 1.4)."""

    code = reference_code = "canonicalization_unsupported"


# --- keys and signatures ----------------------------------------------------------------------


class KeyNotFound(SchemaPinError):
    """No usable public/private key: missing, not PEM, or cannot be loaded."""

    code = reference_code = "key_not_found"


class UnsupportedKey(KeyNotFound):
    """The key is valid but not ECDSA P-256 (e.g. P-384, RSA, Ed25519)."""

    code = "key_unsupported"


class SignatureInvalid(SchemaPinError):
    """The signature does not verify for this definition and key."""

    code = reference_code = "signature_invalid"


class SignatureMalformed(SignatureInvalid):
    """The signature is not strict base64 of a DER ECDSA-Sig-Value."""

    code = "signature_malformed"


class SignatureNotCanonical(SignatureInvalid):
    """The signature uses the high-S form (a malleated twin of a valid signature)."""

    code = "signature_high_s"


# --- trust decisions --------------------------------------------------------------------------


class KeyRevoked(SchemaPinError):
    """The signing key is listed as revoked (``revoked_keys`` or the revocation document)."""

    code = reference_code = "key_revoked"


class KeyPinMismatch(SchemaPinError):
    """The key differs from the key pinned for this (domain, tool): needs ``pins approve``."""

    code = reference_code = "key_pin_mismatch"


class DefinitionChanged(SchemaPinError):
    """Same key, valid signature, but a different definition than the pinned one."""

    code = "definition_changed"
    reference_code = "key_pin_mismatch"


class DomainMismatch(SchemaPinError):
    """Key material for one domain was offered to verify another."""

    code = reference_code = "domain_mismatch"


# --- discovery and revocation -----------------------------------------------------------------


class DiscoveryFailed(SchemaPinError):
    """The discovery document could not be fetched."""

    code = reference_code = "discovery_fetch_failed"


class DiscoveryRedirect(DiscoveryFailed):
    """The server answered with a redirect; discovery never follows redirects."""

    code = "discovery_redirect"


class DiscoveryTooLarge(DiscoveryFailed):
    """The response body is over the size cap."""

    code = "discovery_too_large"


class InsecureTransport(DiscoveryFailed):
    """A plain-HTTP URL without the explicit insecure setting."""

    code = "discovery_insecure_transport"


class DiscoveryInvalid(SchemaPinError):
    """The discovery document is malformed (fields missing, wrong types, bad key)."""

    code = reference_code = "discovery_invalid"


class InvalidDomain(DiscoveryInvalid):
    """The domain name cannot be normalised (bad characters, bad IDNA)."""

    code = "domain_invalid"


class RevocationUnavailable(SchemaPinError):
    """Revocation state could not be established (fetch failed, malformed, wrong domain)."""

    code = "revocation_unavailable"
    reference_code = "discovery_fetch_failed"


# --- trust bundles ----------------------------------------------------------------------------


class BundleInvalid(SchemaPinError):
    """The trust bundle is malformed."""

    code = "bundle_invalid"
    reference_code = "discovery_invalid"


class BundleUntrusted(BundleInvalid):
    """The bundle is unsigned, badly signed, or signed by an authority not on the allow-list."""

    code = "bundle_untrusted"
    reference_code = "bundle_unsigned"


class BundleExpired(BundleInvalid):
    """The bundle's ``expires_at`` is in the past."""

    code = reference_code = "bundle_expired"


# --- local state ------------------------------------------------------------------------------


class PinStoreError(SchemaPinError):
    """The pin store cannot be read or written (fail closed)."""

    code = "pin_store_error"
    reference_code = "key_pin_mismatch"


class SkillInvalid(SchemaPinError):
    """A skill folder's ``.schemapin.sig`` is missing or malformed."""

    code = "skill_signature_missing"
    reference_code = "signature_invalid"
