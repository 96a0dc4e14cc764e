"""The audit log's writer thread: group commits, checkpoints, key rotation, maintenance.

``AuditLog`` (``gateway.audit.log``) owns the queue, the lock and the thread; this is what
runs on the thread and the only code that writes the log's database.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import queue
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import keys as keyfiles
from gateway.audit import store
from gateway.audit.batch import Item, WriterContext, chain_rows, is_awaited, resolve, wake
from gateway.audit.checkpoints import CheckpointFiles
from gateway.audit.record import (
    ROTATION_EVENT,
    anchor_message,
    canonical_details,
    key_id_of,
    public_pem,
    rotation_message,
)
from gateway.audit.signer import HeadSigner
from gateway.errors import AuditError

_logger = logging.getLogger("symbi.audit")

# The writer checkpoints the WAL itself, after the waiters are woken, once about this many pages
# were written; SQLite's own autocheckpoint would run inside a COMMIT, before the acknowledgement.
# A small WAL is rewritten in place from its start after each checkpoint: an fdatasync of pages
# over existing blocks skips the file-size journal commit an append needs (on ext4 here about
# 0.08 ms less per commit than appending to a growing WAL). 1,024 pages: 4 MiB. The checkpoint
# (the pages copied into the database, its fsync) holds the writer, so the next commit waits
# for it: at 256 pages that was 11.5 checkpoints per 1,000 sequential secure calls, each making
# the call behind it ~3 ms slower (2 % of the calls: the p99 of a sequential caller); at 1,024,
# 2.75 per 1,000 calls and a third of the time in all (a page rewritten by many commits, the
# anchor's and the B-tree's, is copied once per checkpoint). bench/chain_ops.py --front --tail.
WAL_CHECKPOINT_PAGES = 1024

# A head record's signature, made after its waiters were woken, is stored by a LATER transaction
# (see ``commit_events``).
SIGN_SQL = "UPDATE events SET signature = ? WHERE seq = ? AND signature = ''"
# an idle writer signs and stores its unsigned head after this long without a new event (``seal``).
# Each seal is a signature and an fsync'd transaction of its own; the anchor vouches for the head
# meanwhile. At 50 ms (until session 9) calls 0.05-1 s apart paid two of each per call; at 1 s a
# second signature and commit per call remain only for calls more than a second apart.
SEAL_IDLE_S = 1.0

# Rows per INSERT statement (``insert_rows``): a batch's rows go in multi-row statements, whole
# chunks of this many, then one statement per power of two of the rest down to ``INSERT_EXACT``
# (each text prepared once by the connection's cache). ``executemany`` stepped once per row, and
# the sqlite3 module releases and retakes the GIL around every step: while a busy caller thread
# holds the GIL each retake can wait its switch interval (5 ms), so a 256-row batch was starved
# by the thread producing it. 64 x 11 parameters stay below SQLite's oldest limit (999).
INSERT_CHUNK = 64
# A rest of up to this many rows goes in ONE statement of exactly that many (a sequential secure
# call commits 3 rows: its record and two agent.state flips; as 2 + 1 that was a second statement
# step per commit, ~4 us of the writer's CPU). At most 16 + 2 statement texts in all, well inside
# the connection's statement cache (128).
INSERT_EXACT = 16
_INSERTS: dict[int, str] = {}


def _insert_sql(n: int) -> str:
    sql = _INSERTS.get(n)
    if sql is None:
        row = "(" + ",".join("?" * len(store.COLUMNS.split(","))) + ")"
        sql = _INSERTS[n] = f"INSERT INTO events ({store.COLUMNS}) VALUES " + ",".join([row] * n)
    return sql


def insert_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (``store.COLUMNS`` order) with one step per ``INSERT_CHUNK`` rows, in order."""
    i, n = 0, len(rows)
    while i < n:
        left = n - i
        k = left if left <= INSERT_EXACT else min(INSERT_CHUNK, 1 << (left.bit_length() - 1))
        conn.execute(_insert_sql(k), list(chain.from_iterable(rows[i : i + k])))
        i += k


@dataclass(eq=False)
class Writer:
    """The writer's state: the chain's head, the signing key, and whether it broke."""

    queue: queue.SimpleQueue[Item]
    conn: sqlite3.Connection
    path: Path
    key_path: Path
    key: Ed25519PrivateKey
    key_id: str
    seq: int
    head: str
    checkpoint_every: int
    batch_max: int
    on_failure: Literal["deny", "warn"]
    checkpoint_export: Path | None
    # how long fire-and-forget events wait for an awaited one to share its commit (_next_batch),
    # and how long an event loop holds them for its next awaited one (``gateway.audit.held``).
    # 50 ms: a call's agent-state flips go with its record when its upstream answers within it
    # (at 5 ms, until session 10, a call longer than that paid a commit of its own for the first
    # flip: an fsync, a writer wake-up, ~0.3 ms of CPU). Nobody waits for these events; an
    # awaited event, a flush or a close ends the wait at once.
    linger_s: float = 0.05
    # the head record's ts_ns: no record is stamped before it (``chain_rows``)
    ts_floor: int = 0
    broken: AuditError | None = None
    # False once ``run`` has returned or raised: read by every event's ``AuditLog._check``
    # (``Thread.is_alive`` takes a lock and two calls)
    running: bool = True
    # WAL pages (estimated) written since the writer last checkpointed the WAL (_checkpoint_wal)
    wal_pages: int = 0
    wal_checkpoint_pages: int = WAL_CHECKPOINT_PAGES
    # (seq, signature) of a head record, signed after its waiters were woken and stored by the
    # next transaction: until then the in-database anchor vouches for it (commit_events)
    pending: tuple[int, str] | None = None
    # the head record, committed by this writer, carries no stored signature yet (``seal``)
    unsigned_head: bool = False
    seal_idle_s: float = SEAL_IDLE_S
    # the batch being served (``_next_batch``): what a dying writer must still fail (``_died``)
    taken: list[Item] = field(default_factory=list)
    # ``key`` through libsodium: the anchors and head signatures (``gateway.audit.signer``)
    signer: HeadSigner = field(init=False)
    # the checkpoint file and export, written off this thread (``gateway.audit.checkpoints``)
    checkpoints: CheckpointFiles = field(init=False)

    def __post_init__(self) -> None:
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self.signer = HeadSigner(self.key)
        self.checkpoints = CheckpointFiles(self.path, self.checkpoint_export)

    def drain_after_close(self) -> None:
        """Commit events that raced past ``_closed`` into the queue behind the close marker."""
        late: list[Item] = []
        while True:
            try:
                late.append(self.queue.get_nowait())
            except queue.Empty:
                break
        events = [it for it in late if it.kind == "event"]
        if events and self.commit_events(events):
            self.seal()
            self.write_checkpoint()
        for it in late:
            if it.kind != "event":
                resolve(it.future, exc=AuditError("audit log is closed"))

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # noqa: BLE001 - logged with its trace, every commit failed
            self._died(e)
        finally:
            self.running = False

    def _died(self, e: BaseException) -> None:
        """An unexpected exception ends the writer (a handled write failure does not): every
        commit it had taken or still queued would stay pending for ever (``events.Unsent``
        holding them in flight, ``record`` callers hanging until their timeout). They fail
        now, with the log's broken error: the log refuses all after, calls fail closed at once."""
        err = AuditError(f"audit writer of {self.path} stopped: {e!r}")
        self.broken = self.broken or err  # before ``running``: a put after this is refused
        self.running = False
        _logger.critical("%s", err.message, exc_info=e)
        self._fail_all(self.taken, self.broken)
        self.taken = []

    def fail_late(self) -> None:
        """Fail what was put after a dead writer's last drain (a put that passed the log's
        check just before the death): nothing else would ever settle it."""
        if not self.running and self.broken is not None:
            self._fail_all([], self.broken)

    def _fail_all(self, items: list[Item], err: AuditError) -> None:
        # what was taken, then what is still queued (a put that raced past the check included)
        while True:
            for it in items:
                resolve(it.future, exc=err)
            wake(items, None, err)
            items = []
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self.queue.get_nowait())
            if not items:
                return

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            events = [it for it in batch if it.kind == "event"]
            if events and self.commit_events(events):
                self._checkpoint_wal()
            control = batch[-1] if batch[-1].kind != "event" else None
            if control is None:
                continue
            self._end_ahead()  # control items run as they always did: no transaction open
            self.seal()  # a flush, rotation, retention or close sees every head signed
            if control.kind == "flush":
                self.checkpoints.drain()  # and the checkpoint file holds the newest anchor
                resolve(control.future, None, self.broken)
            elif control.kind == "rotate":
                self._rotate(control)
            elif control.kind == "maintain":
                self._maintain(control)
            elif control.kind == "close":
                try:
                    self.write_checkpoint()
                    resolve(control.future)
                except Exception as e:  # noqa: BLE001 - reported to the closer
                    resolve(control.future, exc=AuditError(f"audit checkpoint on close failed: {e}"))
                finally:
                    self.checkpoints.stop()
                return

    def _next_batch(self) -> list[Item]:
        """The next group commit: what is queued, up to ``batch_max`` or a control item.

        While the batch holds only fire-and-forget events (``emit``: nobody waits for them),
        it waits up to ``linger_s`` (``AuditLog.EMIT_LINGER_S``) for an event someone waits for: a call's lifecycle
        flips then share the fsync of its ``record`` instead of taking one of their own
        before it (the call's reply waited for both). Nothing acknowledged is delayed: an
        awaited event, a flush or a close ends the wait at once.
        """
        item = self._take()
        # ``taken``: failed, with the queue, if the writer dies before it settled them (``_died``)
        batch, get_nowait, room = [item], self.queue.get_nowait, self.batch_max - 1
        self.taken = batch
        awaited = is_awaited(item)
        deadline: float | None = None
        while room > 0 and item.kind == "event":
            try:
                item = get_nowait()
            except queue.Empty:
                if awaited:
                    break
                if deadline is None:
                    deadline = time.monotonic() + self.linger_s
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self.queue.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            room -= 1
            awaited = awaited or is_awaited(item)
        return batch

    def _take(self) -> Item:
        """The next item; an idle writer first signs and stores its head's signature (``seal``).

        While it waits up to ``seal_idle_s`` for the next item, the next commit's write
        transaction is open (``_begin_ahead``); an idle writer holds no lock."""
        if self.seal_idle_s > 0:
            self._begin_ahead()
        try:
            return self.queue.get(timeout=self.seal_idle_s)
        except queue.Empty:
            self.seal()  # nothing to sign: a no-op
        self._end_ahead()
        return self.queue.get()

    def _begin_ahead(self) -> None:
        """Open the next write transaction before waiting for the next item, so that ``BEGIN
        IMMEDIATE`` (the WAL's write lock and a read snapshot: 8-20 us of CPU in locking syscalls)
        is off the next record's path. Nothing else writes this log (one writer: the log's
        ``flock``), and in WAL mode the write lock does not block readers; an outside connection
        that writes anyway waits (its busy timeout) until the writer idles or commits. A failure
        is left to ``_transact``, which begins the transaction itself when none is open and
        reports what fails."""
        if self.conn.in_transaction:
            return
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            _logger.debug("audit write transaction of %s not opened ahead: %s", self.path, e)

    def _end_ahead(self) -> None:
        """Roll back a transaction opened ahead that wrote nothing (before a control item:
        rotation, maintenance and close run with no transaction open, as before)."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as e:  # the connection's next BEGIN reports a real failure
                _logger.warning("audit: rolling back the open transaction of %s failed: %s", self.path, e)

    def commit_events(
        self, events: list[Item], extra_sql: list[tuple[str, tuple[Any, ...]]] | None = None
    ) -> bool:
        """Chain, insert and commit ``events`` with the signed head anchor; wake their waiters.

        ONE signature before the acknowledgement: the anchor's (seq and chain hash of the batch's
        last record; by SHA-256's second-preimage resistance it vouches for every record before
        it, as a signed tree head does). A record's own signature is not needed for that: the
        verifier accepts unsigned records followed by an anchor at or after them. Records are
        still signed, on the head, whenever the writer goes idle, before a flush, rotation,
        retention or close (``seal``), and once per ``checkpoint_every`` events under
        continuous load: then the signature is made after the waiters are woken (Ed25519
        signing releases the GIL, so the event loop runs meanwhile) and stored by the next
        transaction. Any record an anchor has moved past stays vouched for by the next signed
        record, which the verifier requires within the key's run. So a sequential caller pays
        one signature per call, not two. Rotations and maintenance (``extra_sql``) are signed
        at once.
        """
        seq, prev = self.seq, self.head
        defer = not extra_sql
        try:
            rows = chain_rows(events, seq, prev, self.key_id, self.ts_floor)
            seq, prev = rows[-1][0], rows[-1][8]
            if not defer:
                rows[-1] = (*rows[-1][:9], self.signer.sign_hash(prev), self.key_id)
            anchor = self._anchor(seq, prev)
            self._transact(rows, extra_sql or [], anchor)
        except Exception as e:  # noqa: BLE001 - any failure fails the batch closed
            err = AuditError(f"audit log {self.path} cannot be written: {e}")
            _logger.error("%s (%d events in the batch)", err.message, len(events))
            if any(it.future is None and it.waiter is None for it in events) and self.on_failure == "deny":
                self.broken = err  # unacknowledged events were lost: refuse everything after
            for it in events:
                resolve(it.future, exc=err)
            wake(events, None, err)
            return False
        old = self.seq
        self.seq, self.head, self.pending, self.unsigned_head = seq, prev, None, defer
        self.ts_floor = rows[-1][2]
        # the audited calls' waiters first (their loops wake while this thread goes on)
        seqs = range(old + 1, seq + 1)  # the rows' seqs, without a list
        wake(events, seqs, None)
        for s, it in zip(seqs, events, strict=True):
            if it.future is not None:
                resolve(it.future, s)
        # pages this commit wrote to the WAL: the rows' (about 200 bytes of columns besides the
        # details each), the B-tree's inner page and the anchor's
        self.wal_pages += 3 + (sum(map(len, map(itemgetter(6), rows))) + 200 * len(rows)) // 4096
        checkpoint = seq // self.checkpoint_every > old // self.checkpoint_every
        if defer and checkpoint:  # a signed record at least every checkpoint_every events
            self.pending = (seq, self.signer.sign_hash(prev))
        if checkpoint:  # the batch's signed anchor (no second signature), written off this thread
            self.checkpoints.submit(anchor)
        return True

    def _transact(
        self,
        rows: list[tuple[Any, ...]],
        extra_sql: list[tuple[str, tuple[Any, ...]]],
        anchor: store.Anchor | None,
    ) -> None:
        """One write transaction, whole or not at all: ``rows``, the deferred head signature
        (``pending``), ``extra_sql`` and the new ``anchor``; in the transaction opened ahead
        (``_begin_ahead``) if there is one."""
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            insert_rows(self.conn, rows)
            if self.pending is not None:
                self.conn.execute(SIGN_SQL, self.pending[::-1])
            for sql, params in extra_sql:
                self.conn.execute(sql, params)
            if anchor is not None:
                store.write_anchor(self.conn, anchor)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def seal(self) -> None:
        """Sign the head record (if this writer committed it unsigned) and store its signature in
        a transaction of its own (the writer is idle, or a control item follows). On failure the
        anchor still vouches for the head; retried later."""
        if self.pending is None and self.unsigned_head:
            self.pending = (self.seq, self.signer.sign_hash(self.head))
        if self.pending is None:
            return
        try:
            self._transact([], [], None)
        except sqlite3.Error as e:
            _logger.error("audit head signature of %s not stored yet (retried): %s", self.path, e)
            return
        if self.pending[0] == self.seq:
            self.unsigned_head = False
        self.pending = None

    def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database once it holds ``wal_checkpoint_pages`` (PASSIVE: never
        waits for a reader; a reader's snapshot only delays the WAL's restart). The events are
        already durable in the WAL: a failure here loses nothing and is retried later."""
        if self.wal_pages < self.wal_checkpoint_pages:
            return
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.wal_pages = 0
        except sqlite3.Error as e:
            _logger.warning("audit WAL checkpoint of %s failed (retried later): %s", self.path, e)

    def _anchor(self, seq: int, head: str) -> store.Anchor:
        sig = base64.b64encode(self.signer.sign(anchor_message(seq, head))).decode("ascii")
        return store.Anchor(seq=seq, chain_hash=head, ts_ns=time.time_ns(), key_id=self.key_id, signature=sig)

    def write_checkpoint(self) -> None:
        """Write the head's checkpoint now, after any handed over (close, retention). Raises ``OSError``."""
        self.checkpoints.write(self._anchor(self.seq, self.head))

    def _rotate(self, control: Item) -> None:
        try:
            pending = keyfiles.pending_key_path(self.key_path)
            if pending.exists():  # a rotation of a sibling chain (same key) already made it
                new_key = keyfiles.load_private_key(pending)
            else:
                new_key = Ed25519PrivateKey.generate()
                keyfiles.write_private_key(pending, new_key)  # on disk before any log names it
            new_pub = new_key.public_key()
            new_id = key_id_of(new_pub)
            if new_id != self.key_id:
                proof = base64.b64encode(new_key.sign(rotation_message(self.key_id, new_id))).decode("ascii")
                details = {
                    "old_key_id": self.key_id,
                    "new_key_id": new_id,
                    "new_public_key": public_pem(new_pub),
                    "proof": proof,
                }
                item = Item(
                    "event",
                    type=ROTATION_EVENT,
                    details_json=canonical_details(details),
                    id=str(uuid.uuid4()),
                    ts_ns=time.time_ns(),
                    future=None,
                )
                key_row = (
                    "INSERT OR IGNORE INTO keys (key_id, public_pem, created_ns) VALUES (?,?,?)",
                    (new_id, public_pem(new_pub), time.time_ns()),
                )
                if not self.commit_events([item], [key_row]):
                    raise self.broken or AuditError("rotation event could not be committed")
                self.key, self.key_id, self.signer = new_key, new_id, HeadSigner(new_key)
            if control.finish:
                keyfiles.finish_rotation(self.key_path)
            resolve(control.future, new_id)
        except Exception as e:  # noqa: BLE001
            resolve(
                control.future,
                exc=e if isinstance(e, AuditError) else AuditError(f"key rotation failed: {e}"),
            )

    def _maintain(self, control: Item) -> None:
        assert control.task is not None

        def sign(message: bytes) -> str:
            return base64.b64encode(self.key.sign(message)).decode("ascii")

        def commit(
            event_type: str, details: Mapping[str, Any], extra_sql: list[tuple[str, tuple[Any, ...]]]
        ) -> int:
            item = Item(
                "event",
                type=event_type,
                details_json=canonical_details(details),
                id=str(uuid.uuid4()),
                ts_ns=time.time_ns(),
                future=None,
            )
            if not self.commit_events([item], extra_sql):
                raise self.broken or AuditError(f"{event_type} could not be committed")
            try:  # retention took events out: export a checkpoint the live log holds right away
                self.write_checkpoint()
            except OSError as e:  # start-up can still prove the old one from the hand-off/archive
                _logger.error("audit checkpoint file not written: %s", e)
            return self.seq

        ctx = WriterContext(
            conn=self.conn,
            key_id=self.key_id,
            head_seq=self.seq,
            head_hash=self.head,
            sign=sign,
            commit=commit,
        )
        try:
            resolve(control.future, control.task(ctx))
        except Exception as e:  # noqa: BLE001 - reported to the caller, the writer carries on
            resolve(control.future, exc=e)
