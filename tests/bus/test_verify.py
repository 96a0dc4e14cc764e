"""``gateway.bus.verify`` in-process (``symbi bus verify``'s checks; tests/bus/test_bus_cmd.py runs
the command): every stored message's signature against its sender's HMAC-authenticated key,
and the chain of ids per sender and channel (a removed message is a gap, an inserted or
reordered one a fork, the oldest message's dangling link is expected)."""

from __future__ import annotations

import dataclasses
import hmac
import sqlite3
import tracemalloc
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Literal

import anyio

from gateway.bus.backend import StoredMessage
from gateway.bus.core import Bus
from gateway.bus.crypto import AgentKeys, KeyRing, PublicKeys
from gateway.bus.embedded import EmbeddedBackend, open_db, scan_db
from gateway.bus.message import SecureMessage, header_bytes, signed_bytes
from gateway.bus.verify import VerifyReport, verify_messages
from gateway.context import Principal
from gateway.events import LoggingSink

SECRET = b"s" * 32


def _ring() -> KeyRing:
    return KeyRing(SECRET, None)


def _msg(
    keys: AgentKeys,
    mid: str,
    prev: str | None,
    ts: int,
    *,
    to: str = "ag-b",
    topic: str | None = None,
    ct: bytes = b"ciphertext",
) -> SecureMessage:
    kind: Literal["topic", "direct"] = "topic" if topic is not None else "direct"
    hb = header_bytes(mid, keys.agent, to, topic, kind, ts, ts + 1000, prev, None)
    nonce = b"n" * 12
    sig = keys.sign.sign(signed_bytes(hb, nonce, ct))
    return SecureMessage(mid, keys.agent, to, topic, kind, ts, ts + 1000, prev, None, nonce, ct, sig)


def _stored(*msgs: SecureMessage, inbox: str = "ag-b") -> list[StoredMessage]:
    return [StoredMessage(inbox, "pending", m) for m in msgs]


def _kinds(report: VerifyReport) -> list[str]:
    # the problem's kind: the words before its details
    return sorted(str(p["problem"]).split(":")[0] for p in report.problems)


def test_a_clean_chain_verifies_and_counts_every_message() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    msgs = [_msg(a, "m1", None, 1), _msg(a, "m2", "m1", 2), _msg(a, "m3", "m2", 3)]
    report = verify_messages(_stored(*msgs), {"ag-a": entry}.get, SECRET)
    assert report.ok and report.checked == 3 and report.problems == []
    assert report.as_dict() == {"ok": True, "checked": 3, "problems": []}


def test_the_oldest_message_may_point_to_a_pruned_one() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    msgs = [_msg(a, "m2", "m1", 2), _msg(a, "m3", "m2", 3)]
    assert verify_messages(_stored(*msgs), {"ag-a": entry}.get, SECRET).ok


def test_a_changed_message_fails_its_signature_and_is_named() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    good = _msg(a, "m1", None, 1)
    bad = dataclasses.replace(good, ciphertext=b"changed")
    report = verify_messages(_stored(bad), {"ag-a": entry}.get, SECRET)
    assert not report.ok and report.checked == 1
    assert report.problems == [{"inbox": "ag-b", "id": "m1", "sender": "ag-a", "problem": "bad signature"}]
    assert report.as_dict()["ok"] is False


def test_a_signature_by_another_key_is_bad() -> None:
    ring = _ring()
    _, entry = ring.ensure("ag-a", "t")
    impostor = AgentKeys.generate("ag-a", "t")
    report = verify_messages(_stored(_msg(impostor, "m1", None, 1)), {"ag-a": entry}.get, SECRET)
    assert _kinds(report) == ["bad signature"]


def test_a_sender_without_an_authentic_key_is_a_problem() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    msg = _msg(a, "m1", None, 1)
    # no directory entry at all
    assert _kinds(verify_messages(_stored(msg), lambda _a: None, SECRET)) == [
        "no authentic key for the sender"
    ]
    # an entry whose HMAC was made with another secret (a forged directory entry)
    assert _kinds(verify_messages(_stored(msg), {"ag-a": entry}.get, b"x" * 32)) == [
        "no authentic key for the sender"
    ]
    # an entry with a valid HMAC over a key that is not an Ed25519 public key
    broken = PublicKeys("ag-a", "t", b"\x01" * 31, entry.dh_pub, b"")
    broken = PublicKeys(
        "ag-a", "t", broken.sign_pub, broken.dh_pub, hmac.new(SECRET, broken.body(), sha256).digest()
    )
    report = verify_messages(_stored(msg), {"ag-a": broken}.get, SECRET)
    assert report.problems == [
        {"inbox": "ag-b", "id": "m1", "sender": "ag-a", "problem": "no authentic key for the sender"}
    ]


def test_the_key_is_looked_up_once_per_sender() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    asked: list[str] = []

    def lookup(agent: str) -> PublicKeys | None:
        asked.append(agent)
        return entry

    msgs = [_msg(a, "m1", None, 1), _msg(a, "m2", "m1", 2)]
    assert verify_messages(_stored(*msgs), lookup, SECRET).ok
    assert asked == ["ag-a"]


def test_the_chains_hold_links_not_the_messages() -> None:
    # every signed message was kept whole (its ciphertext too) until the chains were checked
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    size, count = 64 * 1024, 100

    def stored() -> Iterator[StoredMessage]:  # one message at a time, as a store's scan
        for i in range(count):
            ct = bytes([i % 256]) * size
            yield StoredMessage("ag-b", "pending", _msg(a, f"m{i}", f"m{i - 1}" if i else None, i, ct=ct))

    tracemalloc.start()
    try:
        report = verify_messages(stored(), {"ag-a": entry}.get, SECRET)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.ok and report.checked == count
    assert peak < 10 * size, peak  # a few messages at a time, not the 100 (6.4 MB)


def test_an_unreadable_entry_is_a_problem_without_an_id_and_the_check_goes_on() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    good = _msg(a, "m1", None, 1)
    bad = dataclasses.replace(_msg(a, "m2", "m1", 2), ciphertext=b"changed")
    stored = [StoredMessage("ag-b", "pending", None, "malformed"), *_stored(good, bad)]
    report = verify_messages(stored, {"ag-a": entry}.get, SECRET)
    assert report.checked == 3 and not report.ok
    first, second = report.problems
    assert first["inbox"] == "ag-b" and first["id"] is None and first["problem"] is not None
    assert str(first["problem"]).startswith("unreadable entry")
    assert second["id"] == "m2" and second["problem"] == "bad signature"


def test_a_removed_message_in_the_middle_is_a_gap_naming_the_next_one() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    # the oldest (x2) points to a pruned one (expected), b4's predecessor was removed; ids
    # are not in time order (a chain is ordered by timestamp)
    msgs = [_msg(a, "x2", "x1", 2), _msg(a, "b4", "b3", 4), _msg(a, "c5", "b4", 5)]
    report = verify_messages(_stored(*msgs), {"ag-a": entry}.get, SECRET)
    assert _kinds(report) == ["gap"]
    (p,) = report.problems
    assert p["id"] == "b4" and p["sender"] == "ag-a" and p["channel"] == "agent:ag-b"
    # two removals: two gaps besides the expected dangling oldest link
    msgs = [_msg(a, "m2", "m1", 2), _msg(a, "m4", "m3", 4), _msg(a, "m6", "m5", 6)]
    report = verify_messages(_stored(*msgs), {"ag-a": entry}.get, SECRET)
    assert sorted(str(p["id"]) for p in report.problems) == ["m4", "m6"]


def test_two_messages_after_the_same_one_are_a_fork() -> None:
    ring = _ring()
    a, entry = ring.ensure("ag-a", "t")
    msgs = [_msg(a, "m1", None, 1), _msg(a, "a3", "m1", 3), _msg(a, "z2", "m1", 2)]
    report = verify_messages(_stored(*msgs), {"ag-a": entry}.get, SECRET)
    assert _kinds(report) == ["fork"]
    (p,) = report.problems
    # the later one (by timestamp, not by id) is named, on the sender's channel
    assert p["id"] == "a3" and p["sender"] == "ag-a" and p["channel"] == "agent:ag-b"


def test_chains_are_per_sender_and_channel() -> None:
    ring = _ring()
    a, ea = ring.ensure("ag-a", "t")
    c, ec = ring.ensure("ag-c", "t")
    keys = {"ag-a": ea, "ag-c": ec}
    # each starts its own chain on each channel: no fork, no gap
    msgs = [
        _msg(a, "a1", None, 1),
        _msg(a, "a2", "a1", 2),
        _msg(c, "c1", None, 1),
        _msg(c, "c2", "c1", 2),
        _msg(a, "t1", None, 1, to="ag-b", topic="news"),
        _msg(a, "t2", "t1", 2, to="ag-b", topic="news"),
        _msg(a, "x1", None, 1, to="ag-x"),
    ]
    assert verify_messages(_stored(*msgs), keys.get, SECRET).ok
    # a message of another sender naming one of ag-a's is a dangling link in its own chain
    # (its first: expected), but a second one of its messages pointing to ag-a's is a gap
    msgs += [_msg(c, "c3", "a9", 3), _msg(c, "c4", "a8", 4)]
    report = verify_messages(_stored(*msgs), keys.get, SECRET)
    assert [(p["sender"], p["id"]) for p in report.problems] == [("ag-c", "c4")]


def test_a_real_store_scanned_as_symbi_bus_verify_does(tmp_path: Path) -> None:
    """Messages sent through the bus into the embedded store, read back with scan_db: clean,
    then one ciphertext byte flipped and one message removed from the middle."""
    ring = KeyRing(SECRET, None)

    async def fill() -> None:
        backend = EmbeddedBackend(tmp_path / "bus.db")
        await backend.start()
        bus = Bus(backend, ring, events=LoggingSink(), buffer_size=100)
        await bus.register("ag-b", "t")
        for i in range(4):
            await bus.send(Principal(id="t", agent="ag-a"), "ag-b", f"body-{i}")
        await backend.close()

    anyio.run(fill)
    entries = {a: ring.entry_for(k) for a in ("ag-a", "ag-b") if (k := ring.local(a)) is not None}
    db = open_db(tmp_path / "bus.db", readonly=True)
    report = verify_messages(scan_db(db), entries.get, SECRET)
    assert report.ok and report.checked == 4
    db.close()
    rw = sqlite3.connect(tmp_path / "bus.db")
    with rw:
        seqs = [s for (s,) in rw.execute("SELECT seq FROM messages ORDER BY seq")]
        (c,) = rw.execute("SELECT c FROM messages WHERE seq=?", (seqs[0],)).fetchone()
        rw.execute("UPDATE messages SET c=? WHERE seq=?", (bytes([c[0] ^ 1]) + c[1:], seqs[0]))
        rw.execute("DELETE FROM messages WHERE seq=?", (seqs[2],))
    rw.close()
    db = open_db(tmp_path / "bus.db", readonly=True)
    report = verify_messages(scan_db(db), entries.get, SECRET)
    db.close()
    assert report.checked == 3 and _kinds(report) == ["bad signature", "gap"]
