"""Sealing a bus message: JSON body, header, AES-256-GCM under the pair's (or topic's) key,
Ed25519 signature over the header, nonce and ciphertext; and each sender's chain per channel
(every message names the one before it on its channel, ``prev``)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from gateway.bus.crypto import NONCE_BYTES, AgentKeys, KeyRing
from gateway.bus.message import MessageKind, SecureMessage, header_bytes, new_id
from gateway.bus.message import signed_bytes as _signed
from gateway.bus.receiving import Receiver
from gateway.errors import ArgumentsInvalid, BusNoAgent


@dataclass(frozen=True, slots=True)
class Head:
    """The header fields shared by every delivery of one message (a topic message has one per subscriber)."""

    id: str
    now: int
    expires: int
    prev: str | None
    reply_to: str | None

    def topic_metadata(self, sender: str, topic: str, size: int) -> dict[str, Any]:
        """A topic message's ``SecureMessage.metadata`` (one for all its deliveries)."""
        return {
            "id": self.id,
            "sender": sender,
            "recipient": None,
            "topic": topic,
            "kind": "topic",
            "timestamp_ms": self.now,
            "expires_ms": self.expires,
            "prev": self.prev,
            "reply_to": self.reply_to,
            "size": size,
        }


class Sealer:
    def __init__(self, ring: KeyRing, receiver: Receiver, *, max_age_ms: int, max_body_bytes: int) -> None:
        self.ring = ring
        self.receiver = receiver
        self.max_age_ms = max_age_ms
        self.max_body_bytes = max_body_bytes
        self.last: dict[tuple[str, str], str] = {}  # (sender, channel) -> last id (the chain)

    def body(self, body: Any) -> bytes:
        try:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError):
            raise ArgumentsInvalid("body must be a JSON value") from None
        if len(data) > self.max_body_bytes:
            raise ArgumentsInvalid(f"body is {len(data)} bytes; bus.max_body_bytes is {self.max_body_bytes}")
        return data

    async def seal(
        self,
        me: AgentKeys,
        kind: MessageKind,
        body: bytes,
        *,
        to: str | None = None,
        topic: str | None = None,
        ttl_ms: int | None = None,
        reply_to: str | None = None,
    ) -> SecureMessage:
        """One message for one recipient (``to``): direct, request, reply, or a topic delivery."""
        now = int(time.time() * 1000)
        ttl = min(ttl_ms if ttl_ms is not None else self.max_age_ms, self.max_age_ms)
        channel = f"topic:{topic}" if topic is not None else f"agent:{to}"
        head = Head(new_id(), now, now + ttl, self.last.get((me.agent, channel)), reply_to)
        return await self.seal_for(me, kind, body, head, to=to, topic=topic)

    async def seal_for(
        self, me: AgentKeys, kind: MessageKind, body: bytes, head: Head, *, to: str | None, topic: str | None
    ) -> SecureMessage:
        # the recipient is in the header, so in what is signed and in the AEAD data: a delivery
        # copied into another inbox fails "wrong recipient", one rebound fails its signature
        hb = header_bytes(
            head.id, me.agent, to, topic, kind, head.now, head.expires, head.prev, head.reply_to
        )
        if topic is not None:
            cipher = self.ring.topic_cipher(topic)
        else:
            assert to is not None
            keys = await self.receiver.sender_keys(to)
            if isinstance(keys, str):
                raise BusNoAgent(f"no usable key for agent {to!r}: {keys}")
            cipher = self.ring.pair_cipher(me, to, keys[1])
        nonce = os.urandom(NONCE_BYTES)
        ct = cipher.encrypt(nonce, body, hb)
        sig = me.sign.sign(_signed(hb, nonce, ct))
        return SecureMessage(
            head.id,
            me.agent,
            to,
            topic,
            kind,
            head.now,
            head.expires,
            head.prev,
            head.reply_to,
            nonce,
            ct,
            sig,
        )


def ttl_ms_of(ttl_s: Any, max_age_ms: int) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or ttl_s <= 0:
        raise ArgumentsInvalid("ttl_s must be a positive number of seconds")
    if ttl_s * 1000 > max_age_ms:
        raise ArgumentsInvalid(f"ttl_s must be at most bus.max_age_s ({max_age_ms / 1000:g} s)")
    return max(int(ttl_s * 1000), 1)
