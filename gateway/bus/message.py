"""``SecureMessage``: what the bus stores and carries (only ciphertext, never a body).

The header (every field but the nonce, ciphertext and signature) is the AES-GCM associated
data, and the Ed25519 signature covers header, nonce and ciphertext, so changing any of
them (a recipient, a timestamp, one ciphertext byte) fails verification before decryption.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import ArgumentsInvalid
from gateway.textcheck import not_utf8_at

MessageKind = Literal["direct", "request", "reply", "topic"]
KINDS: tuple[str, ...] = ("direct", "request", "reply", "topic")

# Topic names; subscriptions may add the glob wildcards * and ? (and ** across dots).
TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
PATTERN_RE = re.compile(r"^[A-Za-z0-9._*?-]{1,128}$")
AGENT_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def new_id() -> str:
    """A time-ordered unique id (UUIDv7 layout: 48-bit ms timestamp + 74 random bits)."""
    ms = time.time_ns() // 1_000_000
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


@dataclass(frozen=True, slots=True)
class SecureMessage:
    """One signed, encrypted delivery. ``recipient`` always (a topic message is sealed once per
    subscriber, with the same id), ``topic`` for topic messages."""

    id: str
    sender: str
    recipient: str | None
    topic: str | None
    kind: MessageKind
    timestamp_ms: int
    expires_ms: int
    prev: str | None  # the sender's previous message id on this channel (the chain of ids)
    reply_to: str | None  # request id, for kind "reply"
    nonce: bytes
    ciphertext: bytes
    signature: bytes
    _header: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # serialised once: the header is the AEAD associated data and part of what is signed
        object.__setattr__(
            self,
            "_header",
            header_bytes(
                self.id,
                self.sender,
                self.recipient,
                self.topic,
                self.kind,
                self.timestamp_ms,
                self.expires_ms,
                self.prev,
                self.reply_to,
            ),
        )

    @property
    def channel(self) -> str:
        """Where it goes: ``agent:<id>`` or ``topic:<name>`` (the chain of ids is per sender+channel)."""
        return f"topic:{self.topic}" if self.topic is not None else f"agent:{self.recipient}"

    def header(self) -> bytes:
        return self._header

    def signed_bytes(self) -> bytes:
        return signed_bytes(self.header(), self.nonce, self.ciphertext)

    def metadata(self) -> dict[str, Any]:
        """What may be shown or audited: everything but nonce, ciphertext and signature."""
        return {
            "id": self.id,
            "sender": self.sender,
            "recipient": self.recipient,
            "topic": self.topic,
            "kind": self.kind,
            "timestamp_ms": self.timestamp_ms,
            "expires_ms": self.expires_ms,
            "prev": self.prev,
            "reply_to": self.reply_to,
            "size": len(self.ciphertext),
        }

    def to_fields(self) -> dict[str, bytes]:
        """Flat bytes fields (Redis stream entry, SQLite row)."""
        return {
            "h": self.header(),
            "n": self.nonce,
            "c": self.ciphertext,
            "s": self.signature,
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes] | dict[str, bytes]) -> SecureMessage:
        """Parse stored fields; raises ``ValueError`` on anything malformed."""
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        try:
            head = json.loads(f["h"])
            nonce, ct, sig = bytes(f["n"]), bytes(f["c"]), bytes(f["s"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed stored message: {e}") from None
        if not isinstance(head, list) or len(head) != 10 or head[0] != 1:
            raise ValueError("malformed stored message header")
        # its canonical form is ASCII, so the escape "\\ud800" survives the check below; the
        # directory lookup, the inbox and the audit record cannot take such a sender or topic
        if (bad := not_utf8_at(head)) is not None:
            raise ValueError(f"malformed stored message header: the text at {bad} is not valid UTF-8")
        _, mid, sender, recipient, topic, kind, ts, exp, prev, reply_to = head
        if kind not in KINDS or not isinstance(ts, int) or not isinstance(exp, int):
            raise ValueError("malformed stored message header")
        msg = cls(mid, sender, recipient, topic, kind, ts, exp, prev, reply_to, nonce, ct, sig)
        if msg.header() != bytes(f["h"]):
            raise ValueError("stored message header is not canonical")
        return msg

    def to_json(self) -> str:
        d = self.metadata()
        d.pop("size")
        d.update(n=_b64(self.nonce), c=_b64(self.ciphertext), s=_b64(self.signature))
        return json.dumps(d, separators=(",", ":"))


def header_bytes(
    mid: str,
    sender: str,
    recipient: str | None,
    topic: str | None,
    kind: str,
    ts: int,
    exp: int,
    prev: str | None,
    reply_to: str | None,
) -> bytes:
    # canonical: a JSON array with a version tag, compact separators
    return json.dumps(
        [1, mid, sender, recipient, topic, kind, ts, exp, prev, reply_to],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def signed_bytes(header: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    # length-prefixed so no field can shift into another
    return b"symbi-bus/v1\0" + len(header).to_bytes(4, "big") + header + nonce + ciphertext


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@functools.lru_cache(maxsize=4096)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A subscription pattern: ``*`` is any run within one dot-separated part, ``?`` one char."""
    out = "".join("[^.]*" if ch == "*" else "[^.]" if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile(f"^{out}$")


def validate_topic(topic: Any, *, pattern: bool = False, where: str = "topic") -> str:
    if not isinstance(topic, str):
        raise ArgumentsInvalid(f"{where} must be a string")
    if pattern:
        if not PATTERN_RE.match(topic) or "**" in topic:
            raise ArgumentsInvalid(
                f"{where}: a subscription must match ^[A-Za-z0-9._*?-]{{1,128}}$ "
                "(wildcards * and ? within one dot-separated part)"
            )
    elif not TOPIC_RE.match(topic):
        raise ArgumentsInvalid(
            f"{where}: a topic name must match ^[A-Za-z0-9._-]{{1,128}}$ (no wildcards when publishing)"
        )
    return topic
