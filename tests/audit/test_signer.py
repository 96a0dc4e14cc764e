"""The writer's libsodium signer makes exactly the signatures ``cryptography`` makes and checks."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.record import anchor_message, sign_hash, verify_hash_signature
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
