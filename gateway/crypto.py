"""``security.crypto_provider``: the library every signature, hash and cipher goes through.

Only ``cryptography`` (OpenSSL) runs in Python; the seed's ``ring`` maps to it (see
config/notices.py). At start the provider proves it has every primitive the gateway relies
on, with a sign/verify and seal/open round trip, so a crippled OpenSSL build (no Ed25519, a
FIPS mode without P-256...) stops the start with a clear error instead of failing on the
first call.
"""

from __future__ import annotations

import hashlib
import os

import cryptography
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.backends.openssl.backend import backend as _openssl
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config.model import Config
from gateway.errors import ConfigError

PROVIDERS = {"cryptography": "cryptography", "ring": "cryptography"}  # configured -> what runs


def _self_test() -> None:
    msg = hashlib.sha256(b"symbi crypto self-test").digest()
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256.public_key().verify(p256.sign(msg, ec.ECDSA(hashes.SHA256())), msg, ec.ECDSA(hashes.SHA256()))
    ed = ed25519.Ed25519PrivateKey.generate()
    ed.public_key().verify(ed.sign(msg), msg)
    key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    if AESGCM(key).decrypt(nonce, AESGCM(key).encrypt(nonce, msg, b"aad"), b"aad") != msg:
        raise ValueError("AES-256-GCM round trip returned other bytes")


def start_provider(config: Config) -> str:
    """Check the configured provider can do every job; returns what runs, e.g.
    ``"cryptography 46.0.1 (OpenSSL 3.0.15 ...)"``.

    Raises:
        ConfigError: naming ``security.crypto_provider`` when a primitive is missing.
    """
    name = PROVIDERS[config.security.crypto_provider]
    try:
        _self_test()
    except (InvalidSignature, UnsupportedAlgorithm, ValueError) as e:
        raise ConfigError(
            f"security.crypto_provider = {config.security.crypto_provider!r}: the {name} library cannot "
            f"do ECDSA P-256 / Ed25519 / AES-256-GCM here ({type(e).__name__}: {e})"
        ) from None
    return f"{name} {cryptography.__version__} ({_openssl.openssl_version_text()})"
