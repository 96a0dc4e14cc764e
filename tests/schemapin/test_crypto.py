"""Keys, fingerprints and signatures: strictness the reference lacks (B2, B3, B7)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

import schemapin
from schemapin._crypto import P256_ORDER, sign_hash, verify_hash

TOOL = {"name": "t", "description": "d", "inputSchema": {"type": "object"}}


def test_pem_formats_and_fingerprint(key: ec.EllipticCurvePrivateKey) -> None:
    priv = schemapin.private_key_pem(key)
    pub = schemapin.public_key_pem(key)
    assert priv.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pub.startswith("-----BEGIN PUBLIC KEY-----\n") and pub.endswith("-----END PUBLIC KEY-----\n")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert len(der) == 91
    fp = schemapin.fingerprint(schemapin.load_public_key_pem(pub))
    assert fp == "sha256:" + hashlib.sha256(der).hexdigest()
    assert fp == schemapin.fingerprint(schemapin.load_private_key_pem(priv))


def test_fingerprints_compare_case_insensitively(key: ec.EllipticCurvePrivateKey) -> None:
    fp = schemapin.fingerprint(key)
    assert schemapin.fingerprints_equal(fp, "SHA256:" + fp[7:].upper())
    assert not schemapin.fingerprints_equal(fp, fp[:-1] + ("0" if fp[-1] != "0" else "1"))
    assert not schemapin.fingerprints_equal(fp, "md5:abc")


def test_sign_verify_roundtrip(key: ec.EllipticCurvePrivateKey) -> None:
    sig = schemapin.sign_tool(TOOL, key)
    snap = schemapin.KeySnapshot.from_public_key(key.public_key())
    res = schemapin.verify_tool(TOOL, sig, domain=None, tool_id="t", key_source=snap)
    assert res.definition_hash == schemapin.definition_hash(TOOL)
    assert res.status == "unpinned"


def test_double_hash_is_what_is_signed(key: ec.EllipticCurvePrivateKey) -> None:
    """The ECDSA digest is SHA-256(SHA-256(canonical)): check with the raw primitive."""
    sig = base64.b64decode(schemapin.sign_tool(TOOL, key))
    m = hashlib.sha256(schemapin.canonicalize(TOOL)).digest()
    key.public_key().verify(sig, m, ec.ECDSA(hashes.SHA256()))  # raises if not


def test_single_hash_mode_is_opt_in(key: ec.EllipticCurvePrivateKey) -> None:
    """A Go-SDK style signature (ECDSA over SHA-256(canonical), one hash) fails by default."""
    m = hashlib.sha256(schemapin.canonicalize(TOOL)).digest()
    der = key.sign(m, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    sig = base64.b64encode(encode_dss_signature(r, min(s, P256_ORDER - s))).decode()
    snap = schemapin.KeySnapshot.from_public_key(key.public_key())
    with pytest.raises(schemapin.SignatureInvalid):
        schemapin.verify_tool(TOOL, sig, domain=None, tool_id="t", key_source=snap)
    res = schemapin.verify_tool(TOOL, sig, domain=None, tool_id="t", key_source=snap, digest_mode="single")
    assert "single_hash_signature" in res.warnings


def _high_s_twin(sig_b64: str) -> str:
    r, s = decode_dss_signature(base64.b64decode(sig_b64))
    return base64.b64encode(encode_dss_signature(r, P256_ORDER - s)).decode()


def test_high_s_twin_verifies_by_default_and_is_refused_on_request(key: ec.EllipticCurvePrivateKey) -> None:
    """The malleated twin (r, n-s) of a valid signature (probe B3) is mathematically valid.

    Signatures are never identities here, so it verifies by default (the reference signs
    high-S half the time); ``require_low_s`` refuses it for those who want canonical form.
    """
    sig = schemapin.sign_tool(TOOL, key)
    _r, s = decode_dss_signature(base64.b64decode(sig))
    assert s <= P256_ORDER // 2  # we always sign low-S
    twin = _high_s_twin(sig)
    snap = schemapin.KeySnapshot.from_public_key(key.public_key())
    schemapin.verify_tool(TOOL, twin, domain=None, tool_id="t", key_source=snap)
    with pytest.raises(schemapin.SignatureNotCanonical) as e:
        schemapin.verify_tool(TOOL, twin, domain=None, tool_id="t", key_source=snap, require_low_s=True)
    assert e.value.code == "signature_high_s" and e.value.reference_code == "signature_invalid"
    schemapin.verify_tool(TOOL, sig, domain=None, tool_id="t", key_source=snap, require_low_s=True)


def test_we_always_sign_low_s(key: ec.EllipticCurvePrivateKey) -> None:
    for i in range(64):
        sig = schemapin.sign_tool({**TOOL, "description": f"v{i}"}, key)
        assert decode_dss_signature(base64.b64decode(sig))[1] <= P256_ORDER // 2


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:10] + "!" + s[10:],  # junk character (reference drops it: probe B7)
        lambda s: s[:10] + "\n" + s[10:],  # whitespace inside
        lambda s: s + "\n",  # trailing newline
        lambda s: s.rstrip("=") if s.endswith("=") else s + "=",  # bad padding
        lambda s: (
            s.replace("+", "-").replace("/", "_") if ("+" in s or "/" in s) else "-" + s[1:]
        ),  # urlsafe alphabet
        lambda s: "",
        lambda s: "A" * 300,
        lambda s: base64.b64encode(b"\x30\x03\x02\x01\x01").decode(),  # truncated DER
    ],
)
def test_attack_junk_base64_rejected(key: ec.EllipticCurvePrivateKey, mangle: object) -> None:
    sig = schemapin.sign_tool(TOOL, key)
    bad = mangle(sig)  # type: ignore[operator]
    assert bad != sig
    snap = schemapin.KeySnapshot.from_public_key(key.public_key())
    with pytest.raises(schemapin.SignatureMalformed) as e:
        schemapin.verify_tool(TOOL, bad, domain=None, tool_id="t", key_source=snap)
    assert isinstance(e.value, schemapin.SignatureInvalid)


def test_non_minimal_der_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    m = hashlib.sha256(b"x").digest()
    der = base64.b64decode(sign_hash(m, key))
    # Long-form length byte for the outer SEQUENCE: BER, not DER.
    ber = bytes([0x30, 0x81, der[1]]) + der[2:]
    with pytest.raises(schemapin.SignatureMalformed):
        verify_hash(m, base64.b64encode(ber).decode(), key.public_key())


def test_attack_p384_key_rejected() -> None:
    """The reference accepts a P-384 key (probe B2); SchemaPin is P-256 only."""
    k384 = ec.generate_private_key(ec.SECP384R1())
    pub_pem = (
        k384.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    priv_pem = k384.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(schemapin.UnsupportedKey) as e:
        schemapin.load_public_key_pem(pub_pem)
    assert e.value.code == "key_unsupported" and isinstance(e.value, schemapin.KeyNotFound)
    with pytest.raises(schemapin.UnsupportedKey):
        schemapin.load_private_key_pem(priv_pem)
    with pytest.raises(schemapin.UnsupportedKey):
        schemapin.parse_discovery({"schema_version": "1.2", "public_key_pem": pub_pem})


def test_ed25519_key_rejected() -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(schemapin.UnsupportedKey):
        schemapin.load_public_key_pem(pem)


def test_garbage_pem_is_key_not_found() -> None:
    with pytest.raises(schemapin.KeyNotFound) as e:
        schemapin.load_public_key_pem("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    assert e.value.code == "key_not_found"
