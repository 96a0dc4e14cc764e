"""The audit writer's work: queued items, one batch's chained rows, and waking its waiters.

``AuditLog`` (``gateway.audit.log``) queues ``Item`` objects (an event's: ``event_item``, its
details serialised on the caller's thread); its writer thread turns a batch of events into rows (``chain_rows``), commits them, then resolves the callers' futures
(``resolve``) and asyncio waiters (``wake``: one wake-up per loop and batch).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, Literal

from gateway.audit.record import CHAIN_PREFIX, DETAILS_CHARS, canonical_details, cut, spliced_bytes


@dataclass(slots=True)
class Item:
    kind: Literal["event", "flush", "rotate", "close", "maintain"]
    type: str = ""
    details_json: str = "{}"
    principal: str | None = None
    agent: str | None = None
    id: str = ""  # "": the writer assigns a UUID4 (one urandom call per batch, new_ids)
    ts_ns: int = 0
    future: concurrent.futures.Future[Any] | None = field(default=None)
    waiter: asyncio.Future[Any] | None = None  # record(): resolved on its loop, once per batch
    finish: bool = True  # rotate: make the new key current afterwards
    task: Callable[[WriterContext], Any] | None = None  # maintain: run on the writer thread
    urgent: bool = False  # an emit held for the linger already (gateway.audit.held): commit it now


def event_item(
    event_type: str,
    details: Mapping[str, Any],
    principal: str | None,
    agent: str | None,
    fut: concurrent.futures.Future[Any] | None,
    waiter: asyncio.Future[Any] | None = None,
) -> Item:
    """A caller's event as the writer takes it: its details serialised at once, on the caller's thread."""
    try:
        details_json = canonical_details(details)
        if len(details_json) > DETAILS_CHARS:  # a caller's megabytes are not the log's
            details_json = canonical_details(cut(details))
    except (ValueError, TypeError) as e:
        # never lose the event over a bad value; keep the key names only (no raw values)
        names = sorted(str(k).encode("utf-8", "backslashreplace").decode() for k in details)
        details_json = canonical_details({"unserialisable": str(e), "keys": names})
    return Item(
        "event",
        str(event_type),
        details_json,
        None if principal is None else str(principal),
        None if agent is None else str(agent),
        "",
        time.time_ns(),
        fut,
        waiter,
    )


def is_awaited(item: Item) -> bool:
    """Someone waits for this item (a ``record``/``append`` event, or any control item), or it
    waited for one long enough (``urgent``): the batch is not held back for more."""
    return item.kind != "event" or item.future is not None or item.waiter is not None or item.urgent


@dataclass
class WriterContext:
    """What a maintenance task (retention) gets on the writer thread, between batches.

    ``sign`` is the one signing interface it may use (Ed25519 over ``message``, base64): the
    task never holds the key, so a signer kept elsewhere can stand behind it. ``commit``
    appends one event and runs ``extra_sql`` in the same transaction; it returns the seq.
    """

    conn: sqlite3.Connection
    key_id: str
    head_seq: int
    head_hash: str
    sign: Callable[[bytes], str]
    commit: Callable[[str, Mapping[str, Any], list[tuple[str, tuple[Any, ...]]]], int]


def _settle_waiters(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Runs on the waiters' event loop: one wake-up per batch, not one per event."""
    for fut, value, exc in results:
        if not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)


def wake(items: list[Item], values: Sequence[Any] | None, exc: BaseException | None) -> None:
    """Resolve the asyncio waiters of ``items``, grouped by loop (one call_soon_threadsafe each)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
    for i, it in enumerate(items):
        if it.waiter is not None:
            value = values[i] if values is not None else None
            by_loop.setdefault(it.waiter.get_loop(), []).append((it.waiter, value, exc))
    for loop, results in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_waiters, results)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def resolve(
    fut: concurrent.futures.Future[Any] | None, value: Any = None, exc: BaseException | None = None
) -> None:
    if fut is None or fut.done():
        return
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
    except concurrent.futures.InvalidStateError:  # cancelled by the waiter meanwhile
        pass


# version 4 and the RFC 4122 variant (10xx), as uuid4 sets them: byte tables for bytes.translate
_VERSION_4 = bytes(b & 0x0F | 0x40 for b in range(256))
_VARIANT = bytes(b & 0x3F | 0x80 for b in range(256))
# where each of an id's 32 hex digits goes among its 36 characters (8-4-4-4-12)
_HEX_AT = [i + (i >= 8) + (i >= 12) + (i >= 16) + (i >= 20) for i in range(32)]
# from this many ids on, a batch's are laid out by 32 strided copies (fixed cost ~20 us, then a
# fraction of a microsecond per id) instead of five slices and a format per id
_STRIDED_IDS = 16


def new_ids(n: int) -> list[str]:
    """``n`` random UUID4 strings from one ``os.urandom`` call (``uuid.uuid4()`` makes one per id)."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    h = raw.hex()
    if n < _STRIDED_IDS:
        return [
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-{h[i + 20 : i + 32]}"
            for i in range(0, 32 * n, 32)
        ]
    hexed, out = h.encode(), bytearray(b"-" * (36 * n))
    for src, dst in enumerate(_HEX_AT):
        out[dst::36] = hexed[src::32]
    text = out.decode()
    return [text[i : i + 36] for i in range(0, 36 * n, 36)]


def chain_rows(
    events: list[Item], seq: int, prev: str, key_id: str, ts_floor: int = 0
) -> list[tuple[Any, ...]]:
    """The rows of a batch after ``seq`` / ``prev``: ids assigned, canonical bytes, chain hashes
    (unsigned: the caller signs the last). One tight loop; the hash chain is kept as bytes.

    A record's ``ts_ns`` is its event's, but never before the record's before it (``ts_floor``:
    the head's): events queued from several threads, or a wall clock that steps back, would
    otherwise put timestamps out of seq order, and queries find a time window as a seq range
    (``store.seq_from``). A record stamped at the step keeps the head's time until the clock
    passes it again.

    The canonical bytes are ``record.spliced_bytes``' (the layout ``canonical_bytes`` and the
    verifier use too), from what repeats in a batch escaped once: the key id, and the principals,
    agents and types (a small cache); a chain hash made here is hex, written quoted as it is. The hash state after
    the domain prefix is copied, not rebuilt, for each record."""
    ids = iter(new_ids(sum(1 for it in events if not it.id)))
    prefixed = hashlib.sha256(CHAIN_PREFIX)
    prev_raw = bytes.fromhex(prev)
    esc = encode_basestring  # json.dumps' own C string encoder, as record.canonical_bytes uses
    key_j, prev_j = esc(key_id), esc(prev)
    escaped: dict[str | None, str] = {None: "null"}  # a miss is never None: str() for the types
    rows: list[tuple[Any, ...]] = []
    for it in events:
        seq += 1
        if not it.id:
            it.id = next(ids)
        p, a, t, details, ts = it.principal, it.agent, it.type, it.details_json, int(it.ts_ns)
        if ts < ts_floor:
            ts = ts_floor
        ts_floor = ts
        pj = escaped.get(p) or escaped.setdefault(p, esc(str(p)))
        aj = escaped.get(a) or escaped.setdefault(a, esc(str(a)))
        tj = escaped.get(t) or escaped.setdefault(t, esc(str(t)))
        digest = prefixed.copy()
        digest.update(prev_raw)
        digest.update(spliced_bytes(aj, details, esc(it.id), key_j, prev_j, pj, seq, ts, tj))
        prev_raw = digest.digest()
        h = prev_raw.hex()
        rows.append((seq, it.id, ts, p, a, t, details, prev, h, "", key_id))
        prev, prev_j = h, f'"{h}"'
    return rows
