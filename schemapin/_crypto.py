"""ECDSA P-256 keys, fingerprints and signatures, strictly.

What the reference signs: ``ECDSA-SHA256(SHA-256(canonical))``. The reference passes the
32-byte hash to ``sign(..., ECDSA(SHA256()))``, which hashes again, so the ECDSA digest is a
double hash. The Go SDK signs a single hash (``Prehashed``); that mode is opt-in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from ._errors import KeyNotFound, SignatureInvalid, SignatureMalformed, SignatureNotCanonical, UnsupportedKey

DigestMode = Literal["double", "single"]
"""``double``: SHA-256(SHA-256(message)), the Python/JS/Rust SDKs. ``single``: the Go SDK."""

# Order of the P-256 group; a signature with s > n/2 is the malleated twin of (r, n - s).
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HALF_ORDER = P256_ORDER // 2
_FINGERPRINT_RE = re.compile(r"^sha256:[0-9a-f]{64}$", re.IGNORECASE)
_MAX_SIG_B64 = 256  # a P-256 DER signature is at most 72 bytes (96 base64 characters)


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def _require_p256(key: object) -> None:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return
        raise UnsupportedKey(
            f"key is on curve {key.curve.name}; SchemaPin uses P-256 only", curve=key.curve.name
        )
    raise UnsupportedKey(f"key type {type(key).__name__} is not ECDSA P-256")


def load_private_key_pem(pem: str | bytes) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PKCS#8 (or SEC1) PEM private key; only P-256 is accepted."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyNotFound(f"cannot load private key: {e}") from None
    _require_p256(key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public_key_pem(pem: str | bytes) -> ec.EllipticCurvePublicKey:
    """Load a SubjectPublicKeyInfo PEM (``BEGIN PUBLIC KEY``); only P-256 is accepted."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if b"-----BEGIN PUBLIC KEY-----" not in data:
        raise KeyNotFound("not a SubjectPublicKeyInfo PEM (-----BEGIN PUBLIC KEY-----)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyNotFound(f"cannot load public key: {e}") from None
    _require_p256(key)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """PKCS#8 PEM, unencrypted: the reference's private key format."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def public_key_pem(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """SubjectPublicKeyInfo PEM with ``\\n`` line endings and a trailing newline."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def fingerprint(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """``sha256:<lowercase hex of SHA-256(SPKI DER)>``."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(fp: str) -> str:
    """Lowercase a ``sha256:<hex>`` fingerprint; ``ValueError`` when it is not one."""
    if not isinstance(fp, str) or not _FINGERPRINT_RE.match(fp.strip()):
        raise ValueError(f"not a sha256:<64 hex> fingerprint: {fp!r}")
    return fp.strip().lower()


def fingerprints_equal(a: str, b: str) -> bool:
    """Compare two fingerprints case-insensitively (constant time); malformed ones never match."""
    try:
        return hmac.compare_digest(normalize_fingerprint(a), normalize_fingerprint(b))
    except ValueError:
        return False


def _algorithm(mode: DigestMode) -> ec.ECDSA:
    if mode == "double":
        return ec.ECDSA(hashes.SHA256())
    if mode == "single":
        return ec.ECDSA(Prehashed(hashes.SHA256()))
    raise ValueError(f"unknown digest mode {mode!r}")


def _low_s(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return encode_dss_signature(r, P256_ORDER - s) if s > _HALF_ORDER else der


def sign_hash(message_hash: bytes, key: ec.EllipticCurvePrivateKey, *, mode: DigestMode = "double") -> str:
    """Sign a 32-byte SHA-256 ``message_hash`` the way the reference does; base64 DER, low-S.

    ``double`` (default) is what the reference's ``sign_hash`` produces; ``single`` what Go does.
    """
    _require_p256(key)
    if len(message_hash) != 32:
        raise ValueError("message_hash must be a 32-byte SHA-256 digest")
    der = key.sign(message_hash, _algorithm(mode))
    return base64.b64encode(_low_s(der)).decode("ascii")


def sign_bytes(data: bytes, key: ec.EllipticCurvePrivateKey) -> str:
    """Plain ECDSA-SHA256 over ``data`` (trust bundles sign canonical bytes this way); low-S."""
    _require_p256(key)
    return base64.b64encode(_low_s(key.sign(data, ec.ECDSA(hashes.SHA256())))).decode("ascii")


def decode_signature(signature_b64: str, *, require_low_s: bool = False) -> bytes:
    """Strictly decode a base64 DER ECDSA signature.

    Refuses junk characters, non-canonical base64, non-DER encodings, out-of-range values and
    (when ``require_low_s``) the high-S form, which the reference SDKs produce half the time.
    """
    if not isinstance(signature_b64, str) or not signature_b64 or len(signature_b64) > _MAX_SIG_B64:
        raise SignatureMalformed("signature must be a non-empty base64 string of at most 256 characters")
    try:
        der = base64.b64decode(signature_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SignatureMalformed("signature is not strict base64") from None
    if base64.b64encode(der).decode("ascii") != signature_b64:
        raise SignatureMalformed("signature base64 is not canonical")
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        raise SignatureMalformed("signature is not a DER ECDSA-Sig-Value") from None
    if encode_dss_signature(r, s) != der:
        raise SignatureMalformed("signature is not minimal DER")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise SignatureMalformed("signature values are out of range for P-256")
    if s > _HALF_ORDER and require_low_s:
        raise SignatureNotCanonical("signature uses the high-S form")
    return der


def verify_hash(
    message_hash: bytes,
    signature_b64: str,
    key: ec.EllipticCurvePublicKey,
    *,
    mode: DigestMode = "double",
    require_low_s: bool = False,
) -> None:
    """Verify a signature over a 32-byte ``message_hash``; raise ``SignatureInvalid`` (or a subclass)."""
    _require_p256(key)
    der = decode_signature(signature_b64, require_low_s=require_low_s)
    try:
        key.verify(der, message_hash, _algorithm(mode))
    except InvalidSignature:
        raise SignatureInvalid(
            "signature does not verify with this key", key_fingerprint=fingerprint(key)
        ) from None


def verify_bytes(
    data: bytes, signature_b64: str, key: ec.EllipticCurvePublicKey, *, require_low_s: bool = False
) -> None:
    """Verify plain ECDSA-SHA256 over ``data``; raise ``SignatureInvalid`` (or a subclass)."""
    _require_p256(key)
    der = decode_signature(signature_b64, require_low_s=require_low_s)
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureInvalid(
            "signature does not verify with this key", key_fingerprint=fingerprint(key)
        ) from None
