"""The writer's Ed25519 signer: libsodium (PyNaCl) over the log's key.

Ed25519 signatures are deterministic (RFC 8032): libsodium's are byte for byte the ones
``cryptography`` (OpenSSL) makes for the same key and message. Records' signatures are checked
through libsodium too (``record.verify_hash_signature``); anchors, rotation proofs and seals
through ``cryptography``. libsodium signs in about 0.6x OpenSSL's CPU time on this machine (19 vs 32 us
a signature, ``reports/profile-16.md``), and the writer signs the head anchor of every commit
before its acknowledgement, so that time is on every audited call's path. cffi releases the
GIL while it signs. Key files, rotation proofs and retention seals keep using ``cryptography``.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from nacl.bindings import crypto_sign, crypto_sign_BYTES, crypto_sign_seed_keypair

from gateway.audit.record import SIG_PREFIX


class HeadSigner:
    """Signs with ``key`` through libsodium: anchors (``sign``) and records' chain hashes (``sign_hash``)."""

    __slots__ = ("_sk",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self._sk = crypto_sign_seed_keypair(seed)[1]  # libsodium's 64-byte form: seed || public key

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message`` (libsodium returns it ahead of the message)."""
        return crypto_sign(message, self._sk)[:crypto_sign_BYTES]

    def sign_hash(self, chain_hash_hex: str) -> str:
        """A record's signature, base64: ``gateway.audit.record.sign_hash``, through libsodium."""
        return base64.b64encode(self.sign(SIG_PREFIX + bytes.fromhex(chain_hash_hex))).decode("ascii")
