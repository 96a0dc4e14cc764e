"""``symbi bus verify``: every stored message's signature, and the chain of ids.

Each message names the sender's previous message on the same channel (``prev``), so per
sender and channel the stored messages form one chain. A deleted message in the middle
leaves two chains (a gap), a reordered or inserted one a fork; a changed one fails its
signature. ``prev = null`` starts a new chain (the sender's gateway restarted). The oldest
stored message may point to one already settled and pruned (or delivered and removed from
Redis), so one dangling link per chain is expected.

A chain is checked whole, not streamed per inbox: a topic chain spans its subscribers' inboxes
(one id, sealed per subscriber), and a fork or a gap is only known once every link is read (a
reordered message comes before the one it follows). What is held is each link, not the message.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import sha256

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.bus.backend import StoredMessage
from gateway.bus.crypto import PublicKeys, verify_signature


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "checked": self.checked, "problems": self.problems}


_Link = tuple[int, str | None]  # a chained message's time and the id it follows


def verify_messages(
    stored: Iterable[StoredMessage], lookup: Callable[[str], PublicKeys | None], secret: bytes
) -> VerifyReport:
    report = VerifyReport()
    keys: dict[str, Ed25519PublicKey | None] = {}
    # (sender, channel) -> id -> (time, prev): the links only, never a message's ciphertext
    chains: dict[tuple[str, str], dict[str, _Link]] = defaultdict(dict)
    for s in stored:
        report.checked += 1
        msg = s.msg
        if msg is None:
            report.problems.append({"inbox": s.inbox, "id": None, "problem": f"unreadable entry: {s.error}"})
            continue
        if msg.sender not in keys:
            keys[msg.sender] = _key(lookup(msg.sender), secret)
        pub = keys[msg.sender]
        if pub is None:
            problem = "no authentic key for the sender"
        elif not verify_signature(pub, msg.signature, msg.signed_bytes()):
            problem = "bad signature"
        else:
            chains[(msg.sender, msg.channel)][msg.id] = (msg.timestamp_ms, msg.prev)
            continue
        report.problems.append({"inbox": s.inbox, "id": msg.id, "sender": msg.sender, "problem": problem})
    for (sender, channel), msgs in sorted(chains.items()):
        report.problems.extend(_chain_problems(sender, channel, msgs))
    return report


def _key(entry: PublicKeys | None, secret: bytes) -> Ed25519PublicKey | None:
    if entry is None or not hmac.compare_digest(hmac.new(secret, entry.body(), sha256).digest(), entry.mac):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(entry.sign_pub)
    except ValueError:
        return None


def _chain_problems(sender: str, channel: str, links: dict[str, _Link]) -> list[dict[str, str | None]]:
    out: list[dict[str, str | None]] = []
    by_prev: dict[str, list[str]] = defaultdict(list)
    dangling: list[str] = []
    for _, mid, prev in sorted((ts, mid, prev) for mid, (ts, prev) in links.items()):  # (ids unique)
        if prev is None:
            continue
        by_prev[prev].append(mid)
        if prev not in links:
            dangling.append(mid)
    for prev, ids in by_prev.items():
        if len(ids) > 1:
            out.append(
                {
                    "sender": sender,
                    "channel": channel,
                    "id": ids[1],
                    "problem": f"fork: {len(ids)} messages follow {prev} (reordered or inserted)",
                }
            )
    for mid in dangling[1:]:
        out.append(
            {
                "sender": sender,
                "channel": channel,
                "id": mid,
                "problem": f"gap: the message before {mid} is missing (removed from the middle)",
            }
        )
    return out
