"""The writer's libsodium signer makes exactly the signatures ``cryptography`` makes and checks."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.record import SIG_PREFIX, anchor_message, sign_hash, verify_hash_signature
from gateway.audit.signer import HeadSigner


def test_signatures_are_byte_for_byte_cryptographys() -> None:
    key = Ed25519PrivateKey.generate()
    signer = HeadSigner(key)
    for message in (b"", b"x", anchor_message(7, "ab" * 32), os.urandom(1000)):
        sig = signer.sign(message)
        assert sig == key.sign(message)
        key.public_key().verify(sig, message)  # raises InvalidSignature otherwise


def test_a_head_signature_verifies_with_its_key_only() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    h = os.urandom(32).hex()
    sig = HeadSigner(key).sign_hash(h)
    assert sig == sign_hash(key, h)
    assert verify_hash_signature(key.public_key(), h, sig)
    assert not verify_hash_signature(other.public_key(), h, sig)
    assert not verify_hash_signature(key.public_key(), os.urandom(32).hex(), sig)


def _openssl_accepts(key: Ed25519PrivateKey, h: str, sig: str) -> bool:
    try:
        key.public_key().verify(base64.b64decode(sig, validate=True), SIG_PREFIX + bytes.fromhex(h))
    except (InvalidSignature, ValueError):
        return False
    return True


_L = 2**252 + 27742317777372353535851937790883648493  # the group order: S + L is the same S, non-canonical


def _variants(sig: str) -> list[str]:
    """The signature, and damaged or malleated copies of it (every one must fail)."""
    raw = base64.b64decode(sig)
    flipped = [bytes(raw[:i]) + bytes([raw[i] ^ 1]) + raw[i + 1 :] for i in (0, 31, 32, 63)]
    s = int.from_bytes(raw[32:], "little") + _L
    malleated = raw[:32] + s.to_bytes(32, "little")
    damaged = [*flipped, malleated, raw[:63], raw + b"\0", b"", raw[:32] * 2]
    return [sig, *(base64.b64encode(d).decode() for d in damaged), sig[:-4], "not base64!"]


def test_the_verifier_libsodium_agrees_with_openssl_on_genuine_and_damaged_signatures() -> None:
    """Records are verified through libsodium: it accepts exactly the genuine signature here, as
    OpenSSL does, and refuses bit flips, a wrong length and the malleated S + L."""
    for _ in range(20):
        key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        h = os.urandom(32).hex()
        for n, sig in enumerate(_variants(sign_hash(key, h))):
            assert verify_hash_signature(key.public_key(), h, sig) is (n == 0)
            assert _openssl_accepts(key, h, sig) is (n == 0)
            assert not verify_hash_signature(other.public_key(), h, sig)
