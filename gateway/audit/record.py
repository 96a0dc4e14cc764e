"""One audit record: its canonical bytes, chain hash and signature.

Wire format (version 1), the same in the SQLite log and in a JSONL export::

    {"v": 1, "id": UUID, "seq": int, "ts_ns": int, "principal": str|null, "agent": str|null,
     "type": str, "details": {...}, "prev_hash": hex, "key_id": str,
     "chain_hash": hex, "signature": base64}

* canonical JSON = ``json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)``
  over the record *without* ``chain_hash`` and ``signature`` (and without ``v``), UTF-8.
* ``chain_hash = SHA-256(b"symbi-audit-chain-v1\\0" || bytes(prev_hash) || canonical)``;
  the first record's ``prev_hash`` is 64 zeros.
* ``signature = Ed25519(b"symbi-audit-sig-v1\\0" || bytes(chain_hash))``, base64 (standard),
  on the last record of each group commit (and every ``audit.key_rotated`` event); the other
  records carry ``""``: the next signed chain hash vouches for them (second-preimage
  resistance of SHA-256), so a line without a signature verifies only with the records after it.
* ``key_id = "ed25519:" + hex(SHA-256(raw 32-byte public key))[:32]``.

The domain prefixes keep a chain hash from ever being mistaken for another kind of message
signed by the same key (anchors use ``symbi-audit-anchor-v1``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
CHAIN_PREFIX = b"symbi-audit-chain-v1\x00"
SIG_PREFIX = b"symbi-audit-sig-v1\x00"
ANCHOR_PREFIX = b"symbi-audit-anchor-v1\x00"
ROTATE_PREFIX = b"symbi-audit-rotate-v1\x00"

# The fields covered by the chain hash, in canonical (sorted) order.
HASHED_FIELDS = ("agent", "details", "id", "key_id", "prev_hash", "principal", "seq", "ts_ns", "type")


def canonical_json(obj: Any) -> str:
    """The one canonical JSON text used for hashing (sorted keys, no spaces, UTF-8, no NaN)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


def canonical_details(details: Mapping[str, Any]) -> str:
    """Serialise event details once, at emit time (so later mutation by the caller is harmless).

    Values JSON cannot carry (bytes, paths, enums...) are written as their ``str()``.
    """
    return json.dumps(
        dict(details), ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False, default=str
    )


def _j(value: str | None) -> str:
    # the C string encoder json.dumps(ensure_ascii=False) itself uses; 10x faster per field
    return "null" if value is None else encode_basestring(str(value))


def record_bytes(
    *,
    seq: int,
    id: str,
    ts_ns: int,
    principal: str | None,
    agent: str | None,
    type: str,
    details_json: str,
    prev_hash: str,
    key_id: str,
) -> bytes:
    """Canonical bytes of a record, given the canonical text of its details.

    Equal to ``canonical_json`` of the record dict (a test checks it); built by splicing
    because the writer already holds the details' canonical text.
    """
    return (
        f'{{"agent":{_j(agent)},"details":{details_json},"id":{_j(id)},"key_id":{_j(key_id)},'
        f'"prev_hash":{_j(prev_hash)},"principal":{_j(principal)},"seq":{int(seq)},'
        f'"ts_ns":{int(ts_ns)},"type":{_j(type)}}}'
    ).encode()


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """SHA-256 over the domain prefix, the previous hash and the record's canonical bytes."""
    return hashlib.sha256(CHAIN_PREFIX + bytes.fromhex(prev_hash) + canonical).hexdigest()


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:32]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def sign_hash(key: Ed25519PrivateKey, chain_hash_hex: str) -> str:
    return base64.b64encode(key.sign(SIG_PREFIX + bytes.fromhex(chain_hash_hex))).decode("ascii")


def verify_hash_signature(public_key: Ed25519PublicKey, chain_hash_hex: str, signature_b64: str) -> bool:
    """True when ``signature_b64`` is a valid signature of ``chain_hash_hex``; never raises."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
        public_key.verify(sig, SIG_PREFIX + bytes.fromhex(chain_hash_hex))
        return True
    except (InvalidSignature, binascii.Error, ValueError, TypeError):
        return False


def anchor_message(seq: int, head_hash: str) -> bytes:
    return ANCHOR_PREFIX + f"{int(seq)}:{head_hash}".encode("ascii")


def rotation_message(old_key_id: str, new_key_id: str) -> bytes:
    return ROTATE_PREFIX + f"{old_key_id}>{new_key_id}".encode("ascii")


@dataclass(frozen=True)
class AuditRecord:
    """One stored record (all fields of the wire format)."""

    seq: int
    id: str
    ts_ns: int
    principal: str | None
    agent: str | None
    type: str
    details_json: str
    prev_hash: str
    chain_hash: str
    signature: str
    key_id: str

    @property
    def details(self) -> dict[str, Any]:
        value = json.loads(self.details_json)
        return value if isinstance(value, dict) else {"value": value}

    def canonical(self) -> bytes:
        """The bytes the chain hash covers, rebuilt from the stored fields.

        The stored details text is used as is (the writer stored it canonical, and any other
        text changes the hash); it must parse as ONE JSON object, which makes the spliced
        record unambiguous: no other split of the same bytes into fields exists.
        """
        if not isinstance(json.loads(self.details_json), dict):
            raise ValueError("details is not a JSON object")  # noqa: TRY004 - "cannot be parsed"
        details = self.details_json
        return record_bytes(
            seq=self.seq,
            id=self.id,
            ts_ns=self.ts_ns,
            principal=self.principal,
            agent=self.agent,
            type=self.type,
            details_json=details,
            prev_hash=self.prev_hash,
            key_id=self.key_id,
        )

    def as_dict(self) -> dict[str, Any]:
        """The wire form: everything a verifier needs besides the public key."""
        return {
            "v": FORMAT_VERSION,
            "id": self.id,
            "seq": self.seq,
            "ts_ns": self.ts_ns,
            "principal": self.principal,
            "agent": self.agent,
            "type": self.type,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "key_id": self.key_id,
            "chain_hash": self.chain_hash,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AuditRecord:
        """Parse the wire form; raises ``ValueError`` when a field is missing or mistyped."""
        try:
            principal, agent = doc["principal"], doc["agent"]
            rec = cls(
                seq=doc["seq"],
                id=doc["id"],
                ts_ns=doc["ts_ns"],
                principal=principal,
                agent=agent,
                type=doc["type"],
                details_json=canonical_json(doc["details"]),
                prev_hash=doc["prev_hash"],
                chain_hash=doc["chain_hash"],
                signature=doc["signature"],
                key_id=doc["key_id"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed audit record: {e}") from None
        ints = (rec.seq, rec.ts_ns)
        strs = (rec.id, rec.type, rec.prev_hash, rec.chain_hash, rec.signature, rec.key_id)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ints) or not all(
            isinstance(s, str) for s in strs
        ):
            raise ValueError("malformed audit record: wrong field types")
        if not all(v is None or isinstance(v, str) for v in (rec.principal, rec.agent)):
            raise ValueError("malformed audit record: principal/agent must be strings or null")
        return rec


def verify_record(record: AuditRecord, public_key: Ed25519PublicKey) -> bool:
    """Check one record on its own: its content hashes to its chain hash, and the signature.

    This is what makes a signed exported JSONL line (the last of its group commit) verifiable
    on its own; an unsigned one is False here and verifies only with the records after it.
    The links between records are checked by ``gateway.audit.verify``.
    """
    try:
        if chain_hash(record.prev_hash, record.canonical()) != record.chain_hash:
            return False
    except (ValueError, TypeError):
        return False
    return key_id_of(public_key) == record.key_id and verify_hash_signature(
        public_key, record.chain_hash, record.signature
    )
