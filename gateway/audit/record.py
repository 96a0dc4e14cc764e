"""One audit record: its canonical bytes, chain hash and signature.

Wire format (version 1), the same in the SQLite log and in a JSONL export::

    {"v": 1, "id": UUID, "seq": int, "ts_ns": int, "principal": str|null, "agent": str|null,
     "type": str, "details": {...}, "prev_hash": hex, "key_id": str,
     "chain_hash": hex, "signature": base64}

* canonical JSON = ``json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)``
  over the record *without* ``chain_hash`` and ``signature`` (and without ``v``), UTF-8, where
  ``details`` is spliced in as the text the writer stored (``canonical_details``: the same
  text, written by orjson where orjson writes what ``json.dumps`` writes).
* ``chain_hash = SHA-256(b"symbi-audit-chain-v1\\0" || bytes(prev_hash) || canonical)``;
  the first record's ``prev_hash`` is 64 zeros.
* ``signature = Ed25519(b"symbi-audit-sig-v1\\0" || bytes(chain_hash))``, base64 (standard),
  on a head record (the last of a group commit) whenever the writer goes idle, is flushed or
  closed, and at least once per ``audit.checkpoint_every`` events (and on every
  ``audit.key_rotated`` event); the other records carry ``""``: the next signed chain hash, or
  the signed head anchor, vouches for them (second-preimage resistance of SHA-256), so a line
  without a signature verifies only with the records after it.
* ``key_id = "ed25519:" + hex(SHA-256(raw 32-byte public key))[:32]``.

The domain prefixes keep a chain hash from ever being mistaken for another kind of message
signed by the same key (anchors use ``symbi-audit-anchor-v1``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring
from typing import Any, NamedTuple

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import crypto_sign_BYTES, crypto_sign_open
from nacl.exceptions import BadSignatureError

from gateway.events import Event

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
CHAIN_PREFIX = b"symbi-audit-chain-v1\x00"
SIG_PREFIX = b"symbi-audit-sig-v1\x00"
ANCHOR_PREFIX = b"symbi-audit-anchor-v1\x00"
ROTATE_PREFIX = b"symbi-audit-rotate-v1\x00"
ROTATION_EVENT = Event.AUDIT_KEY_ROTATED  # always signed: it hands the chain to a new key

# The fields covered by the chain hash, in canonical (sorted) order.
HASHED_FIELDS = ("agent", "details", "id", "key_id", "prev_hash", "principal", "seq", "ts_ns", "type")


def canonical_json(obj: Any) -> str:
    """The one canonical JSON text used for hashing (sorted keys, no spaces, UTF-8, no NaN)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)


# orjson writes these as str() like json.dumps(default=str) does (it would serialise them itself)
_ORJSON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
# a number in exponent form or below 1e-4 in orjson's compact text (every number follows ':', ','
# or '['): orjson writes those differently from json.dumps. Checked against 3.3M floats of every
# magnitude: every other finite float orjson writes as json.dumps does. A string that happens to
# match (",3e") only takes json's path.
_ORJSON_DIFFERS = re.compile(rb"[:,\[]-?[0-9][0-9.]*e|[:,\[]-?0\.0000")


# the types orjson writes exactly as json.dumps does, whatever their value
_SAME_TEXT = frozenset((str, int, bool, type(None)))


def _plain(values: Iterable[Any]) -> bool:
    """True when ``values`` hold only dicts, lists, tuples, strings, ints, bools, None and floats
    from 1e-4 to below 1e16 (or zero): what orjson writes as ``json.dumps`` does, so its text
    needs no search (``_ORJSON_DIFFERS``). A walk of a tool call's details costs about a third
    of that search over their text (about 600 bytes). Called only after orjson wrote them: no
    deeper than orjson's own limit (255)."""
    for v in values:
        t = type(v)
        if t in _SAME_TEXT:
            continue
        if t is dict:
            if not _plain(v.values()):
                return False
        elif t is list or t is tuple:
            if not _plain(v):
                return False
        elif t is float:
            a = abs(v)  # NaN compares False: not plain
            if not (1e-4 <= a < 1e16 or a == 0.0):
                return False
        else:  # anything else (a subclass, an object written by str()): the search decides
            return False
    return True


# An event's details longer than this (canonical JSON characters) are cut (``cut``) before they
# are stored: a caller's 3 MB argument, tool name or resource URI was 3-6 MB of log per event
# (the tool.call record, the agent.state flip naming its task, request.refused), on the disk
# whose filling refuses every call.
DETAILS_CHARS = 16_384
VALUE_CHARS = 1000  # a cut string keeps this many characters, how many more, and its SHA-256
MEMBERS_KEPT = 256  # a cut object or array keeps this many members and the count of the rest
CUT_CHARS = 65_536  # the strings a cut document keeps in all; members past it are counted
_CUT_DEPTH = 100


def cut(details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` cut to what a record keeps: each string to ``VALUE_CHARS`` characters with
    the SHA-256 of the whole value (what was sent can still be matched), each object or array
    to ``MEMBERS_KEPT`` members, ``CUT_CHARS`` of strings in all; what is left out is counted."""
    left = CUT_CHARS

    def walk(v: Any, depth: int) -> Any:
        nonlocal left
        if isinstance(v, str):
            left -= min(len(v), VALUE_CHARS)
            if len(v) <= VALUE_CHARS:
                return v
            digest = hashlib.sha256(v.encode("utf-8", "surrogatepass")).hexdigest()
            return (
                f"{v[:VALUE_CHARS]}... [{len(v) - VALUE_CHARS} more characters not recorded, sha256 {digest}]"
            )
        if not isinstance(v, Mapping | list | tuple):
            return v
        if depth > _CUT_DEPTH:
            return "[nested too deep: not recorded]"
        pairs = list(v.items()) if isinstance(v, Mapping) else list(enumerate(v))
        kept: list[tuple[Any, Any]] = []
        for k, x in pairs:
            if len(kept) >= MEMBERS_KEPT or left <= 0:
                break
            kept.append((k, walk(x, depth + 1)))
        rest = len(pairs) - len(kept)
        if isinstance(v, Mapping):
            out = {str(k): x for k, x in kept}
            if rest:
                out["[not recorded]"] = f"{rest} more members"
            return out
        items = [x for _, x in kept]
        if rest:
            items.append(f"[{rest} more items not recorded]")
        return items

    result: dict[str, Any] = walk(details, 0)
    return result


def canonical_details(details: Mapping[str, Any]) -> str:
    """Serialise event details once, at emit time (so later mutation by the caller is harmless).

    The text of ``json.dumps(sort_keys=True, default=str)`` (values JSON cannot carry, bytes,
    paths, datetimes..., are written as their ``str()``), written by orjson (a tenth of the time)
    whenever orjson writes the same: not for a float below 1e-4 or from 1e16 (``0.00001`` where
    json writes ``1e-05``), which the search below finds in orjson's text, nor for what orjson
    refuses (an integer beyond 64 bits, a non-str key). NaN and infinities become ``null`` on
    orjson's path and are refused on json's.

    Raises:
        ValueError: NaN on json's path, or details that cannot be written as UTF-8 (a lone surrogate).
        TypeError: keys that json cannot sort.
    """
    try:
        out: bytes | None = orjson.dumps(details, option=_ORJSON_OPTS)
    except TypeError:  # orjson.JSONEncodeError too: a non-JSON value, a non-str key, a Mapping
        out = None
    if out is not None and (_plain(details.values()) or _ORJSON_DIFFERS.search(out) is None):
        return out.decode()
    text = json.dumps(
        dict(details), ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False, default=str
    )
    text.encode()  # UnicodeEncodeError (a ValueError) now rather than in the writer's batch
    return text


def orjson_details(details: Mapping[str, Any]) -> str | None:
    """orjson's text of ``details`` whatever its floats (what the writer stored for a while on
    2026-11-30: ``from_dict`` accepts it when the chain hash covers it); None if orjson refuses."""
    try:
        return orjson.dumps(details, option=_ORJSON_OPTS).decode()
    except TypeError:
        return None


def is_json_object(text: str) -> bool:
    """True when ``text`` parses as one JSON object (orjson, else ``json.loads``: NaN, big ints)."""
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return isinstance(json.loads(text), dict)


_esc = encode_basestring  # the C string encoder json.dumps(ensure_ascii=False) itself uses


def canonical_bytes(
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
    """``record_bytes`` with positional arguments."""
    return spliced_bytes(
        "null" if agent is None else _esc(agent),
        details_json,
        _esc(id),
        _esc(key_id),
        _esc(prev_hash),
        "null" if principal is None else _esc(principal),
        seq,
        ts_ns,
        _esc(type),
    )


def spliced_bytes(
    agent_j: str,
    details_json: str,
    id_j: str,
    key_id_j: str,
    prev_hash_j: str,
    principal_j: str,
    seq: int,
    ts_ns: int,
    type_j: str,
) -> bytes:
    """The canonical bytes from the text fields already written as JSON (``_esc`` or ``null``):
    the one splice ``canonical_bytes``, the writer's ``batch.chain_rows`` and the verifier's loop
    (both escape what repeats, key id, principal, agent and type, once) share."""
    return (
        f'{{"agent":{agent_j},"details":{details_json},"id":{id_j},"key_id":{key_id_j},'
        f'"prev_hash":{prev_hash_j},"principal":{principal_j},"seq":{int(seq)},"ts_ns":{int(ts_ns)},'
        f'"type":{type_j}}}'
    ).encode()


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
    return canonical_bytes(seq, id, ts_ns, principal, agent, type, details_json, prev_hash, key_id)


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
    """True when ``signature_b64`` is a valid signature of ``chain_hash_hex``; never raises.

    Checked by libsodium (about half OpenSSL's CPU time here: 70 vs 135-150 us, and a full
    verification checks every stored signature). libsodium accepts no signature OpenSSL
    refuses: the same cofactorless equation over canonical encodings, and it also refuses
    small-order points and non-canonical keys, which no honest signer produces."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
        if len(sig) != crypto_sign_BYTES:  # crypto_sign_open would read the message's first bytes
            return False
        crypto_sign_open(sig + SIG_PREFIX + bytes.fromhex(chain_hash_hex), public_key.public_bytes_raw())
        return True
    except (BadSignatureError, binascii.Error, ValueError, TypeError):
        return False


def anchor_message(seq: int, head_hash: str) -> bytes:
    return ANCHOR_PREFIX + f"{int(seq)}:{head_hash}".encode("ascii")


def rotation_message(old_key_id: str, new_key_id: str) -> bytes:
    return ROTATE_PREFIX + f"{old_key_id}>{new_key_id}".encode("ascii")


class AuditRecord(NamedTuple):
    """One stored record (all fields of the wire format), in ``store.COLUMNS`` order.

    A named tuple, not a dataclass: a verifier builds one per row (``AuditRecord._make(row)``
    is a C call, a frozen dataclass' ``__init__`` several times that).
    """

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
        if not is_json_object(self.details_json):
            raise ValueError("details is not a JSON object")
        return canonical_bytes(
            self.seq,
            self.id,
            self.ts_ns,
            self.principal,
            self.agent,
            self.type,
            self.details_json,
            self.prev_hash,
            self.key_id,
        )

    def hash_matches(self) -> bool:
        """Its content hashes to its chain hash (False, never an exception, when it cannot)."""
        try:
            return chain_hash(self.prev_hash, self.canonical()) == self.chain_hash
        except (ValueError, TypeError):
            return False

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
        """Parse the wire form; raises ``ValueError`` when a field is missing or mistyped.

        The details' text is rebuilt as the writer writes it (``canonical_details``); when
        that does not hash to the record's chain hash but orjson's own text does (written for
        a while on 2026-11-30: ``0.00001`` where json writes ``1e-05``), that one is kept.
        """
        try:
            details = doc["details"]
            text = canonical_details(details) if isinstance(details, dict) else canonical_json(details)
            rec = cls(
                seq=doc["seq"],
                id=doc["id"],
                ts_ns=doc["ts_ns"],
                principal=doc["principal"],
                agent=doc["agent"],
                type=doc["type"],
                details_json=text,
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
        if isinstance(details, dict) and not rec.hash_matches():
            other = orjson_details(details)
            if other is not None and other != text:
                legacy = rec._replace(details_json=other)
                if legacy.hash_matches():
                    return legacy
        return rec


def verify_record(record: AuditRecord, public_key: Ed25519PublicKey) -> bool:
    """Check one record on its own: its content hashes to its chain hash, and the signature.

    This is what makes a signed exported JSONL line (the last of its group commit) verifiable
    on its own; an unsigned one is False here and verifies only with the records after it.
    The links between records are checked by ``gateway.audit.verify``.
    """
    if not record.hash_matches():
        return False
    return key_id_of(public_key) == record.key_id and verify_hash_signature(
        public_key, record.chain_hash, record.signature
    )
