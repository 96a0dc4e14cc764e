"""Signing and verifying tool definitions: the high-level API the gateway calls per tool."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from ._canonical import canonicalize, require_canonicalization
from ._crypto import DigestMode, sign_hash, verify_hash
from ._discovery import KeySnapshot
from ._domain import normalize_domain
from ._errors import (
    DefinitionChanged,
    DomainMismatch,
    KeyPinMismatch,
    KeyRevoked,
    RevocationUnavailable,
    SchemaPinError,
    SignatureMalformed,
)
from ._pinrules import PinStatus
from ._pins import Pins

Mode = Literal["strict", "tofu"]


@dataclass(frozen=True)
class VerificationResult:
    """A successful verification.

    Attributes:
        status: ``first_use`` (pinned now), ``pinned`` (matches the pin) or ``unpinned``
            (no pin store was given).
        domain: normalised domain (``None`` when verified against a bare key).
        tool_id: the id the pin is kept under.
        key_fingerprint: ``sha256:<hex>`` of the key that verified.
        definition_hash: hex SHA-256 of the canonical definition (the definition's identity).
        developer_name: from discovery, when known.
        revocation: ``checked`` or ``unavailable`` (only possible in ``tofu`` mode).
        warnings: machine-readable warnings (e.g. ``revocation_unavailable``).
    """

    status: str
    domain: str | None
    tool_id: str | None
    key_fingerprint: str
    definition_hash: str
    developer_name: str | None = None
    revocation: str = "checked"
    warnings: tuple[str, ...] = field(default=())

    @property
    def valid(self) -> bool:
        """Always true: failures raise instead of returning."""
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, close to the reference's ``VerificationResult.to_dict()``."""
        return {
            "valid": True,
            "status": self.status,
            "domain": self.domain,
            "tool_id": self.tool_id,
            "key_fingerprint": self.key_fingerprint,
            "definition_hash": self.definition_hash,
            "developer_name": self.developer_name,
            "key_pinning": {"status": self.status},
            "revocation": self.revocation,
            "warnings": list(self.warnings),
        }


def sign_tool(tool: Any, private_key: ec.EllipticCurvePrivateKey, *, mode: DigestMode = "double") -> str:
    """Sign a tool definition as the reference does; returns base64 DER (always low-S)."""
    return sign_hash(hashlib.sha256(canonicalize(tool)).digest(), private_key, mode=mode)


def verify_tool(
    tool_definition: Any,
    signature_b64: str,
    *,
    domain: str | None,
    tool_id: str | None,
    key_source: KeySnapshot,
    mode: Mode = "strict",
    pin_store: Pins | None = None,
    digest_mode: DigestMode = "double",
    require_low_s: bool = False,
    canonicalization: str | None = None,
) -> VerificationResult:
    """Verify one tool definition and its detached signature; pin it on first use.

    Order (fail closed at each step): canonicalise; domain of the key material matches;
    key not revoked; revocation state known (``strict``) or warned (``tofu``); signature
    verifies; only then the pin store is consulted and, on first use, written.

    Args:
        tool_definition: the tool as parsed from wire text (see :func:`parse_json`), with any
            carrier field (e.g. ``_meta``) already removed.
        signature_b64: base64 DER ECDSA signature.
        domain: the upstream's domain from gateway config (never from the server).
        tool_id: the id to pin under (the tool's original name).
        key_source: the key snapshot from one discovery fetch, a bundle or a static key.
        mode: ``strict`` refuses when revocation could not be checked; ``tofu`` warns.
        pin_store: where pins live; ``None`` verifies without pinning (status ``unpinned``).
        digest_mode: ``double`` (reference default) or ``single`` (Go SDK signatures, opt-in).
        require_low_s: refuse the high-S form of a signature. Off by default: the reference and
            the other SDKs do not normalise S (about half their signatures are high-S), and a
            signature is never used as an identity here, so its malleable twin gives an
            attacker nothing. Everything this library signs is low-S.
        canonicalization: a SchemaPin 1.4 ``canonicalization`` value; only ``schemapin-v1``.

    Raises:
        SchemaPinError: a subclass naming the failure (``SignatureInvalid``, ``KeyRevoked``,
            ``KeyPinMismatch``, ``DefinitionChanged``, ``RevocationUnavailable``, ...).
    """
    if mode not in ("strict", "tofu"):
        raise ValueError(f"mode must be 'strict' or 'tofu', not {mode!r}")
    require_canonicalization(canonicalization)
    dom = normalize_domain(domain) if domain else None
    digest = hashlib.sha256(canonicalize(tool_definition)).digest()
    def_hash = digest.hex()
    snap = key_source
    ctx = dict(domain=dom, tool_id=tool_id, key_fingerprint=snap.fingerprint, definition_hash=def_hash)
    warnings = _check_key(snap, dom, mode, ctx)
    warnings += _check_signature(digest, signature_b64, snap, digest_mode, require_low_s, ctx)
    status = _pin_status(pin_store, dom, tool_id, snap, def_hash, ctx)
    return VerificationResult(
        status=status,
        domain=dom,
        tool_id=tool_id,
        key_fingerprint=snap.fingerprint,
        definition_hash=def_hash,
        developer_name=snap.developer_name,
        revocation=snap.revocation,
        warnings=tuple(warnings),
    )


def _check_key(snap: KeySnapshot, dom: str | None, mode: Mode, ctx: dict[str, Any]) -> list[str]:
    """The key material is for ``dom``, not revoked, and its revocation state is known
    (``strict``) or warned about (``tofu``); returns the warnings so far."""
    if snap.domain is not None and dom is not None and snap.domain != dom:
        raise DomainMismatch(f"key material is for {snap.domain}, not {dom}", key_domain=snap.domain, **ctx)
    if snap.is_revoked():
        raise KeyRevoked(
            f"key {snap.fingerprint} is revoked by {dom or 'its publisher'}", status="revoked", **ctx
        )
    warnings: list[str] = []
    if snap.revocation != "checked":
        if mode == "strict":
            raise RevocationUnavailable(
                f"revocation state of {dom} is unknown: {snap.revocation_error}", **ctx
            )
        warnings.append("revocation_unavailable")
    return warnings


def _check_signature(
    digest: bytes,
    signature_b64: str,
    snap: KeySnapshot,
    digest_mode: DigestMode,
    require_low_s: bool,
    ctx: dict[str, Any],
) -> list[str]:
    """The signature verifies over ``digest`` (its error carries the verification's details);
    returns its warning, if any."""
    if not isinstance(signature_b64, str):
        raise SignatureMalformed("signature is not a string", **ctx)
    try:
        verify_hash(digest, signature_b64, snap.public_key, mode=digest_mode, require_low_s=require_low_s)
    except SchemaPinError as e:
        e.details.update(ctx)
        raise
    return ["single_hash_signature"] if digest_mode == "single" else []


def _pin_status(
    pin_store: Pins | None,
    dom: str | None,
    tool_id: str | None,
    snap: KeySnapshot,
    def_hash: str,
    ctx: dict[str, Any],
) -> str:
    """Consult the pin store (pinning on first use), only after the signature verified:
    the pin status (``unpinned`` without a store), or raises when the key or the definition
    changed."""
    if pin_store is None:
        return "unpinned"
    if dom is None or not tool_id:
        raise ValueError("pinning needs a domain and a tool_id")
    pin_status, pin = pin_store.check_and_pin(dom, tool_id, snap.fingerprint, def_hash)
    if pin_status not in (PinStatus.KEY_CHANGED, PinStatus.DEFINITION_CHANGED):
        return str(pin_status.value)
    # a change a person rejected is refused the same way, but says so: it is not pending
    # review, and only `pins approve` naming it (a person changing their mind) accepts it
    rejected = pin.rejects(snap.fingerprint, def_hash)
    details = {
        "status": pin_status.value,
        "pinned_fingerprint": pin.key_fingerprint,
        "pinned_definition_hash": pin.definition_hash,
        "rejected": rejected,
        **ctx,
    }
    if pin_status is PinStatus.KEY_CHANGED:
        what = f"is pinned to key {pin.key_fingerprint}, now signed by {snap.fingerprint}"
        raise KeyPinMismatch(
            f"{tool_id}@{dom} {what}; {_pin_next(rejected, 'key', '--fingerprint')}", **details
        )
    what = f"changed since it was pinned (definition {pin.definition_hash[:16]}... -> {def_hash[:16]}...)"
    raise DefinitionChanged(
        f"{tool_id}@{dom} {what}; {_pin_next(rejected, 'definition', '--definition-hash')}", **details
    )


def _pin_next(rejected: bool, what: str, option: str) -> str:
    """What a person can do about a refused pin change (the end of the refusal's message)."""
    if rejected:
        return (
            f"this {what} change was rejected (`symbi schemapin pins reject`): refused, not pending "
            f"review again; to accept it after all, `symbi schemapin pins approve {option}` naming it"
        )
    return (
        f"review the pending {what} with `symbi schemapin pins show`, approve it with "
        f"`symbi schemapin pins approve {option}` or turn it down with `pins reject {option}`"
    )


def sign_envelope(
    tool: Any, private_key: ec.EllipticCurvePrivateKey, *, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The reference envelope ``{"schema", "signature", "signed_at"}`` (``metadata`` is unsigned)."""
    env: dict[str, Any] = {
        "schema": tool,
        "signature": sign_tool(tool, private_key),
        "signed_at": datetime.now(UTC).isoformat(),
    }
    if metadata:
        env["metadata"] = dict(metadata)
    return env


def verify_envelope(
    envelope: Any,
    *,
    key_source: KeySnapshot,
    domain: str | None = None,
    tool_id: str | None = None,
    mode: Mode = "strict",
    pin_store: Pins | None = None,
    digest_mode: DigestMode = "double",
    require_low_s: bool = False,
) -> VerificationResult:
    """Verify a reference envelope; only ``schema`` and ``signature`` are authenticated.

    ``tool_id`` defaults to ``schema["name"]``. Raises like :func:`verify_tool`.
    """
    if not isinstance(envelope, dict) or not isinstance(envelope.get("schema"), dict):
        raise SignatureMalformed("envelope has no 'schema' object")
    if "signature" not in envelope:
        raise SignatureMalformed("envelope has no 'signature'")
    schema = envelope["schema"]
    tid = (
        tool_id
        if tool_id is not None
        else (schema.get("name") if isinstance(schema.get("name"), str) else None)
    )
    return verify_tool(
        schema,
        envelope["signature"],
        domain=domain if domain is not None else key_source.domain,
        tool_id=tid,
        key_source=key_source,
        mode=mode,
        pin_store=pin_store,
        digest_mode=digest_mode,
        require_low_s=require_low_s,
        canonicalization=envelope.get("canonicalization"),
    )


META_KEY = "_meta"
SIGNATURE_META_KEY = "schemapin/signature"


def split_carrier(tool: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Split an MCP tool into (signed object, in-band signature).

    Symbi's carrier: the signature travels in ``tool["_meta"]["schemapin/signature"]`` and the
    signed object is the tool definition *without* ``_meta`` (SchemaPin defines no MCP carrier).
    Returns ``None`` as the signature when there is none.
    """
    definition = {k: v for k, v in tool.items() if k != META_KEY}
    meta = tool.get(META_KEY)
    sig = meta.get(SIGNATURE_META_KEY) if isinstance(meta, Mapping) else None
    return definition, sig if isinstance(sig, str) else None


def same_definition(a: Any, b: Any) -> bool:
    """True when two definitions have the same canonical form."""
    try:
        return hmac.compare_digest(canonicalize(a), canonicalize(b))
    except SchemaPinError:
        return False
