"""The bus's key ring and wire format pinned as documented (README: X25519 + HKDF-SHA256 per
pair of agents, a canonical JSON header, Ed25519 over a length-prefixed header, nonce and
ciphertext): gateways sharing a Redis bus, and `symbi bus verify` on another machine, must
derive and check the same bytes, which a test that only round-trips through one process cannot
see. Also the key ring's lifecycle: a re-keyed agent's old pair keys go, a forgotten agent's
stored keys go, and an agent whose id never comes back is marked for the next run.

Found by mutation testing (group "bus", scripts/mutate.py): each of these could change with the
suite green."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.bus.crypto import KeyRing
from gateway.bus.message import SecureMessage
from tests.bus.test_core import A, B, Env, _one_stored, _pair, env  # noqa: F401 - the backends' fixture

SECRET = b"s" * 32


def _documented_pair_key(own_dh: object, peer_pub: object, a: str, b: str) -> AESGCM:
    shared = own_dh.exchange(peer_pub)  # type: ignore[attr-defined]
    info = b"symbi-bus/v1 pair\0" + min(a, b).encode() + b"\0" + max(a, b).encode()
    return AESGCM(HKDF(SHA256(), 32, salt=None, info=info).derive(shared))


def test_a_pair_key_is_derived_as_documented_and_bound_to_both_agents() -> None:
    ring = KeyRing(SECRET, None)
    a, _ = ring.ensure("agent-a", "team")
    b, _ = ring.ensure("agent-b", "team")
    nonce = os.urandom(12)
    sealed = ring.pair_cipher(a, "agent-b", b.dh.public_key()).encrypt(nonce, b"body", b"ad")
    # the documented derivation opens it, from either end
    assert (
        _documented_pair_key(b.dh, a.dh.public_key(), "agent-a", "agent-b").decrypt(nonce, sealed, b"ad")
        == b"body"
    )
    assert (
        _documented_pair_key(a.dh, b.dh.public_key(), "agent-b", "agent-a").decrypt(nonce, sealed, b"ad")
        == b"body"
    )
    # the same shared secret under other agent names (info binds them) does not
    with pytest.raises(InvalidTag):
        _documented_pair_key(b.dh, a.dh.public_key(), "agent-a", "agent-c").decrypt(nonce, sealed, b"ad")


def test_a_re_keyed_agent_gets_a_new_pair_key_the_old_keys_cannot_open() -> None:
    ring = KeyRing(SECRET, None)
    old, _ = ring.ensure("agent-a", "team")
    b, _ = ring.ensure("agent-b", "team")
    c, _ = ring.ensure("agent-c", "team")
    ring.pair_cipher(b, "agent-a", old.dh.public_key())  # cached
    ring.pair_cipher(b, "agent-c", c.dh.public_key())
    new, _ = ring.ensure("agent-a", "someone-else")  # the id now belongs to another principal
    assert new is not old
    nonce = os.urandom(12)
    sealed = ring.pair_cipher(b, "agent-a", new.dh.public_key()).encrypt(nonce, b"for the new owner", None)
    with pytest.raises(InvalidTag):  # whoever holds the old private key reads nothing
        _documented_pair_key(old.dh, b.dh.public_key(), "agent-a", "agent-b").decrypt(nonce, sealed, None)
    opened = _documented_pair_key(new.dh, b.dh.public_key(), "agent-a", "agent-b").decrypt(
        nonce, sealed, None
    )
    assert opened == b"for the new owner"
    # only the re-keyed agent's pair keys went
    assert ring.footprint()["bus_pair_keys"] == 2


def test_a_forgotten_agents_stored_keys_are_gone_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "bus-keys.db"
    ring = KeyRing(SECRET, path)
    ring.ensure("agent-a", "team")
    ring.ensure("agent-b", "team")
    ring.forget("agent-a")
    ring.close()
    again = KeyRing(SECRET, path)
    try:
        assert again.local("agent-a") is None and again.local("agent-b") is not None
        assert again.footprint()["bus_stored_keys"] == 1
    finally:
        again.close()


def test_an_agent_whose_id_never_comes_back_is_marked_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "bus-keys.db"
    ring = KeyRing(SECRET, path)
    keys, _ = ring.ensure("agent-s", "alice", "alice/client", persist=False)
    assert keys.stored is False
    ring.close()
    again = KeyRing(SECRET, path)  # a crash: the next run finds what it has to clean
    try:
        assert again.left_behind == [("agent-s", "alice/client")]
        assert again.local("agent-s") is None  # its private keys never reached the disk
    finally:
        again.close()
    # without a key store there is nothing to mark (and nothing fails)
    mem = KeyRing(SECRET, None)
    assert mem.ensure("agent-s", "alice", persist=False)[0].stored is False
    assert mem.left_behind == []


@pytest.mark.anyio
async def test_a_stored_message_has_the_documented_header_and_signed_bytes(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    msg = await _one_stored(env, bus)
    head = [1, msg.id, "agent-a", "agent-b", None, "direct", msg.timestamp_ms, msg.expires_ms, msg.prev, None]
    assert msg.header() == json.dumps(head, separators=(",", ":")).encode()
    header = msg.header()
    signed = b"symbi-bus/v1\0" + len(header).to_bytes(4, "big") + header + msg.nonce + msg.ciphertext
    a = bus.ring.local("agent-a")
    assert a is not None
    pub = Ed25519PublicKey.from_public_bytes(a.sign.public_key().public_bytes_raw())
    pub.verify(msg.signature, signed)  # raises InvalidSignature if the layout differs


@pytest.mark.parametrize("head", [b"5", b"null", b'"1234567890"', b"[2]"])
def test_a_stored_header_that_is_not_a_version_1_list_is_refused_as_malformed(head: bytes) -> None:
    with pytest.raises(ValueError):
        SecureMessage.from_fields({"h": head, "n": b"n" * 12, "c": b"c", "s": b"s" * 64})
