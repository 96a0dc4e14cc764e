"""Receiving: fetch an inbox, check every message BEFORE decrypting, settle what became of it.

Checks, in order: the sender's signature (key from the HMAC-authenticated directory), the
recipient (this agent, in the right inbox; for a topic message also a subscription), the timestamp
window; only a message that passed them is decrypted; then the replay window by id (for the
whole batch in one write). A failure is settled as rejected with a reason, counted, audited
(``bus.rejected``) and never delivered.

A receive may carry a byte budget (``bus__receive``: the policy's ``max_result_bytes``, and
``gateway.bus.results.RECEIVE_MAX_BYTES`` at most, whatever the policy says): the
messages are taken in order while what they add to the result fits it (the first always), and
the rest stay pending for the next receive. A result cut to the cap after its messages were
settled lost them: marked delivered, never read (a peer's few large messages hid the ones
behind them in the batch). A message larger than the budget alone stays pending too, for a
receive allowed more (or it expires, counted): rejecting it lost it, and a budget under the
result's envelope lost the whole inbox. Its sender was refused it if it could fit no receive
(``gateway.bus.results``); one that still could not (sent before that bound) is rejected.

A topic message whose topic the receiver may no longer subscribe to (the policy asked again,
once per topic, before the replay window) is neither rejected nor settled: it stays pending,
received once the grant is back, or it expires (counted), and never keeps the messages behind
it from being received.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from gateway.bus.backend import BusBackend, Outcome, Pending
from gateway.bus.crypto import KeyRing, PublicKeys, verify_signature
from gateway.bus.message import MessageKind, SecureMessage, pattern_regex
from gateway.bus.results import item_bound, item_bytes, receive_ceiling
from gateway.context import Decision, Principal
from gateway.errors import BusError
from gateway.events import Event, EventSink

# (kind, principal, recipient, topic) -> decision; None means the policy is off
Authorizer = Callable[[str, Principal, dict[str, Any] | None, str | None], Awaitable[Decision]]
_logger = logging.getLogger("symbi.bus")

PeerKeys = tuple[Ed25519PublicKey, X25519PublicKey, str, str]  # signing key, agreement key, principal, name
Granted = Callable[[str], Awaitable[bool]]  # may this receiver still subscribe to this topic?
REPLY_SUFFIX = "#r"  # the inbox of replies to an agent's requests ('#' is never in an agent id)


@dataclass(frozen=True, slots=True)
class Received:
    id: str
    sender: str
    kind: MessageKind
    topic: str | None
    reply_to: str | None
    timestamp_ms: int
    expires_ms: int
    body: Any
    size_bound: int  # at most what it adds to a result (``results.item_bound``), not serialising it

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.sender,
            "kind": self.kind,
            "topic": self.topic,
            "reply_to": self.reply_to,
            "timestamp_ms": self.timestamp_ms,
            "body": self.body,
        }

    def result_bytes(self) -> int:
        """What this message adds to the built-in's result (``gateway.bus.results``)."""
        return item_bytes(self.as_dict())


class _Budget:
    """What the messages a receive takes add to its result, against its byte budget: summed as
    upper bounds (``Received.size_bound``, no serialising) while that sum fits, then measured
    exactly (three ``json.dumps`` a message) once a bound could pass the budget, so a receive
    far under its budget (most: the ceiling gives every receive one) serialises nothing, and
    one near it takes exactly what fits."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.spent = 0  # an upper bound until ``exact``, then exact
        self.exact = False
        self.taken: list[Received] = []

    def size(self, received: Received) -> int:
        if not self.exact and self.spent + received.size_bound > self.max_bytes:
            self.exact = True  # near the budget: what was taken, measured
            self.spent = sum(r.result_bytes() for r in self.taken)
        return received.result_bytes() if self.exact else received.size_bound

    def take(self, received: Received, size: int) -> bool:
        """Whether ``received`` (of ``size``) fits what is left; counted if it does."""
        if self.spent + size > self.max_bytes:
            return False
        self.spent += size
        self.taken.append(received)
        return True


class Receiver:
    """The receive checks of one bus (and the verified sender keys they use)."""

    def __init__(
        self, backend: BusBackend, ring: KeyRing, events: EventSink, *, max_age_ms: int, skew_ms: int
    ) -> None:
        self.backend = backend
        self.ring = ring
        self.events = events
        self.max_age_ms = max_age_ms
        self.skew_ms = skew_ms
        self.keys: dict[str, PeerKeys] = {}  # verified directory entries
        self.rejected: dict[str, int] = {}
        self.held: dict[str, int] = {}  # inbox -> messages left pending (not granted, or too big)

    async def take(
        self,
        agent: str,
        inbox: str,
        max_items: int,
        wait_s: float,
        granted: Granted | None = None,
        max_bytes: int | None = None,
    ) -> list[Received]:
        """Fetch, check, settle: what passed every check, in inbox order. A topic message whose
        topic ``granted`` refuses now is left pending (never marked delivered nor seen): it is
        received once the grant is back, or expires (counted). With ``max_bytes``, the messages
        past what fits it (``Received.result_bytes``) stay pending too, and so does one that alone
        does not fit it (a receive allowed more takes it); one past any receive's result
        (``results.receive_ceiling``) is rejected."""
        n = max_items + self.held.get(inbox, 0)  # those left pending last time are fetched along
        while True:
            pending = await self.backend.fetch(inbox, n, wait_s)
            out, held = await self._settle(agent, inbox, pending, max_items, granted, max_bytes)
            if held:
                self.held[inbox] = held
            else:
                self.held.pop(inbox, None)
            if out or not held or len(pending) < n:
                break
            n = max_items + held  # only held-back messages filled the batch: fetch past them
        if not out and held and wait_s > 0:
            # only held-back messages wait: wait for a new one rather than fetch them again at once
            await self.backend.wait_arrival(inbox, wait_s, None)
        return out

    async def _settle(
        self,
        agent: str,
        inbox: str,
        pending: list[Pending],
        max_items: int,
        granted: Granted | None,
        max_bytes: int | None = None,
    ) -> tuple[list[Received], int]:
        """Check and settle a fetched batch: what passed (at most ``max_items``, and within
        ``max_bytes``; those past either stay pending), and how many were held back (no longer
        granted, or alone larger than ``max_bytes``: left pending, for a receive allowed more)."""
        if not pending:
            return [], 0
        outcomes, passed = await self._checked(agent, inbox, pending)
        kept = [x for x in passed if granted is None or x[1].topic is None or await granted(x[1].topic)]
        held = len(passed) - len(kept)
        opened: list[tuple[Pending, SecureMessage, Received]] = []
        budget = _Budget(max_bytes if max_bytes is not None else sys.maxsize)  # (None: no byte cap)
        for p, msg, dh_pub in kept[:max_items]:
            received = self._open_message(agent, inbox, msg, dh_pub)  # only now: decrypt
            if received is None:
                outcomes[p.ref] = "rejected"
                continue
            size = budget.size(received)
            if size > budget.max_bytes:
                if size > receive_ceiling():  # no receive could ever hold it (sent before the bound)
                    outcomes[p.ref] = self._reject(agent, inbox, msg, "larger than any receive's result")
                else:  # alone past this receive's cap, not another's: it waits (as if not granted)
                    held += 1
                continue
            if not budget.take(received, size):
                break  # this one and those after it stay pending (neither seen nor settled)
            opened.append((p, msg, received))
        # 4. the replay window, for the whole batch at once (one write)
        fresh = await self.backend.first_seen(
            agent, [(m.id, m.timestamp_ms + self.max_age_ms + 2 * self.skew_ms) for _, m, _ in opened]
        )
        out: list[Received] = []
        for p, msg, received in opened:
            if msg.id not in fresh:
                outcomes[p.ref] = self._reject(agent, inbox, msg, "replayed id")
                continue
            fresh.discard(msg.id)  # the same id twice in one batch: the second is a replay
            outcomes[p.ref] = "delivered"
            out.append(received)
        await self.backend.settle(inbox, [(p.ref, outcomes[p.ref]) for p in pending if p.ref in outcomes])
        return out, held

    async def _checked(
        self, agent: str, inbox: str, pending: list[Pending]
    ) -> tuple[dict[str, Outcome], list[tuple[Pending, SecureMessage, X25519PublicKey]]]:
        """Checks 1-3 for each entry: the outcome of those that failed, and those that passed."""
        subs = (
            await self.backend.subscriptions_of(agent)
            if any(p.msg is not None and p.msg.kind == "topic" for p in pending)
            else set()
        )
        outcomes: dict[str, Outcome] = {}
        passed: list[tuple[Pending, SecureMessage, X25519PublicKey]] = []
        for p in pending:  # 1-3: signature, recipient, timestamps
            outcome, dh_pub = await self._check(agent, inbox, p, subs)
            if outcome is not None:
                outcomes[p.ref] = outcome
            else:
                assert p.msg is not None and dh_pub is not None
                passed.append((p, p.msg, dh_pub))
        return outcomes, passed

    async def sender_keys(self, sender: str, *, fresh: bool = False) -> PeerKeys | str:
        """An agent's keys and principal from the (HMAC-authenticated) key directory, or why not.

        Cached once verified (an agent's keys change only when it registers again)."""
        cached = None if fresh else self.keys.get(sender)
        if cached is not None:
            return cached
        return self._admit(sender, await self.backend.lookup_keys(sender))

    async def sender_keys_many(self, agents: list[str]) -> dict[str, PeerKeys | str]:
        """``sender_keys`` of each agent, those not cached looked up together (one read)."""
        out: dict[str, PeerKeys | str] = {a: k for a in agents if (k := self.keys.get(a)) is not None}
        missing = [a for a in agents if a not in out]
        if missing:
            entries = await self.backend.lookup_keys_many(missing)
            out.update({a: self._admit(a, entries.get(a)) for a in missing})
        return out

    def _admit(self, sender: str, entry: PublicKeys | None) -> PeerKeys | str:
        if entry is None:
            return "unknown sender"
        try:
            sign_pub, dh_pub, principal = self.ring.admit(entry)
        except BusError:
            return "sender key entry fails its HMAC"
        keys = self.keys[sender] = (sign_pub, dh_pub, principal, entry.name)
        return keys

    async def _check(
        self, agent: str, inbox: str, p: Pending, subs: set[str]
    ) -> tuple[Outcome | None, X25519PublicKey | None]:
        """None and the sender's agreement key when the message passed checks 1-3."""
        msg = p.msg
        if msg is None:
            return self._reject(agent, inbox, None, p.error or "unreadable entry"), None
        now = int(time.time() * 1000)
        if msg.expires_ms < now:
            self.events.emit(Event.BUS_EXPIRED, {**msg.metadata(), "inbox": inbox}, agent=agent)
            return "expired", None
        # 1. signature (a cached key that fails is looked up again: the sender may have re-registered)
        keys = await self.sender_keys(msg.sender)
        if not isinstance(keys, str) and not verify_signature(keys[0], msg.signature, msg.signed_bytes()):
            keys = await self.sender_keys(msg.sender, fresh=True)
            if not isinstance(keys, str) and not verify_signature(keys[0], msg.signature, msg.signed_bytes()):
                keys = "bad signature"
        if isinstance(keys, str):
            return self._reject(agent, inbox, msg, keys), None
        # 2. recipient: this agent, in the right inbox (and a subscription to a topic message's topic)
        reason = _recipient_problem(msg, agent, inbox, subs)
        if reason:
            return self._reject(agent, inbox, msg, reason), None
        # 3. timestamp window
        if (
            msg.timestamp_ms > now + self.skew_ms
            or msg.timestamp_ms < now - self.max_age_ms - self.skew_ms
            or msg.expires_ms > msg.timestamp_ms + self.max_age_ms
        ):
            return self._reject(agent, inbox, msg, "timestamp outside the window"), None
        return None, keys[1]

    def _open_message(
        self, agent: str, inbox: str, msg: SecureMessage, dh_pub: X25519PublicKey
    ) -> Received | None:
        try:
            if msg.topic is not None:
                cipher = self.ring.topic_cipher(msg.topic)
            else:
                me = self.ring.local(agent)
                if me is None:
                    self._reject(agent, inbox, msg, "no key for this agent")
                    return None
                cipher = self.ring.pair_cipher(me, msg.sender, dh_pub)
            plain = cipher.decrypt(msg.nonce, msg.ciphertext, msg.header())
            body = json.loads(plain)
        except (InvalidTag, ValueError):
            self._reject(agent, inbox, msg, "decryption failed")
            return None
        if not _encodable(plain, body):
            self._reject(agent, inbox, msg, "malformed body")
            return None
        # any stored body, Sealer's form or not: its worst (a float such as 1e15, written as
        # 1000000000000000.0) stays within the bound's bytes per stored byte
        bound = item_bound(len(plain))
        return Received(
            msg.id,
            msg.sender,
            msg.kind,
            msg.topic,
            msg.reply_to,
            msg.timestamp_ms,
            msg.expires_ms,
            body,
            bound,
        )

    def _reject(self, agent: str, inbox: str, msg: SecureMessage | None, reason: str) -> Outcome:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        meta = msg.metadata() if msg is not None else {}
        self.events.emit(Event.BUS_REJECTED, {**meta, "inbox": inbox, "reason": reason}, agent=agent)
        _logger.warning("bus: rejected a message for %s: %s", agent, reason)
        return "rejected"


def _encodable(plain: bytes, body: Any) -> bool:
    """Whether the body's strings encode as UTF-8: a lone surrogate (an ``\\ud800`` escape, only
    stored by a sender bypassing ``Sealer.body``) was settled as delivered, then its result
    could not be built (lost). Only a body with such an escape is written again to find out."""
    if b"\\ud" not in plain and b"\\uD" not in plain:
        return True
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _recipient_problem(msg: SecureMessage, agent: str, inbox: str, subs: set[str]) -> str | None:
    if msg.kind == "topic":
        if msg.topic is None or inbox != agent:
            return "malformed topic message"
        if msg.recipient != agent:  # each subscriber's delivery is sealed for it alone
            return "wrong recipient"
        if not any(pattern_regex(p).match(msg.topic) for p in subs):
            return "not subscribed to this topic"
        return None
    if msg.recipient != agent or msg.topic is not None:
        return "wrong recipient"
    if (msg.kind == "reply") != inbox.endswith(REPLY_SUFFIX):
        return "wrong inbox for this kind"
    return None


def grants(
    authorize: Authorizer,
    principal: Principal,
    emit: Callable[[Event, dict[str, Any], Principal], None],
) -> Granted:
    """Whether the receiver may still subscribe to a topic, asked once per topic (per receive):
    the subscription was decided once, so a grant taken away later (a policy or data reload, a
    role removed) still delivered every publication. A topic refused is audited; its messages
    stay pending (``Receiver.take``): received if the grant comes back, else they expire."""
    allowed: dict[str, bool] = {}

    async def granted(topic: str) -> bool:
        ok = allowed.get(topic)
        if ok is None:
            decision = await authorize("bus/subscribe", principal, None, topic)
            ok = allowed[topic] = bool(decision.allow)
            if not ok:
                reasons = ["no longer granted: its messages wait until it is again", *decision.reasons]
                meta = {"kind": "bus/subscribe", "recipient": None, "topic": topic}
                emit(Event.BUS_DENIED, {**meta, "reasons": reasons}, principal)
        return ok

    return granted
