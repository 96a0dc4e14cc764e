"""``AuditLog``: the signed, hash-chained, durable event log (the gateway's ``EventSink``).

Callers never touch the database: ``emit`` / ``record`` / ``append`` serialise the details at
once and put the event on an unbounded queue (never dropped); one writer thread takes up to
``audit.batch_max`` events at a time, assigns sequence numbers, chains them, signs the head
anchor (seq and chain hash of the batch's LAST record: it vouches for every record before it,
like a signed tree head), inserts the records and the anchor in ONE transaction and commits
(WAL, fsync). Only then are the events acknowledged: ``record`` / ``append`` return the
sequence number after the commit: the anchor's is the one signature before it. Records carry a
signature of their own on the head record the writer leaves when it goes idle, before a flush,
rotation or close returns, and once per ``checkpoint_every`` events (made after the
acknowledgement, stored by the next transaction); the others carry an empty signature and are
vouched for by the next signed record or the anchor (``Writer.commit_events``).
One fsync per batch is what makes durable appends cheap under load (group commit).

Fail closed: when a batch cannot be committed, waiting callers get ``AuditError``; if events
that nobody waited for (``emit``) were lost, the log refuses every later event too, so the
gateway refuses calls instead of running unaudited. ``audit.on_failure = "unsafe_warn"`` logs instead.

One process writes a log at a time (an exclusive ``flock`` on ``<log>.lock``); readers
(verify, query, tail, ``recent``) use their own read-only connections.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit import keys as keyfiles
from gateway.audit import store
from gateway.audit.batch import Item, WriterContext, event_item
from gateway.audit.held import HeldEmits
from gateway.audit.record import GENESIS_HASH, AuditRecord, key_id_of
from gateway.audit.refusals import RefusalKey, RefusalSummary, RefusalTally, event_key
from gateway.audit.startup import (
    check_export,
    check_pinned,
    expected_key_id,
    load_key,
    register_key,
    take_lock,
)
from gateway.audit.waits import LoopWaits, RecordWaits
from gateway.audit.writer import SEAL_IDLE_S, WAL_CHECKPOINT_PAGES, Writer
from gateway.custody import create_private
from gateway.errors import AuditError
from gateway.events import TALLIED_EVENTS, Event, tallied_as

if TYPE_CHECKING:
    from gateway.audit.verify import VerifyResult
    from gateway.config.model import Config

_logger = logging.getLogger("symbi.audit")


class AuditLog:
    """The audit log. Implements ``gateway.events.EventSink``.

    Args:
        path: the SQLite log (``Config.audit_path``), created on first start.
        key_path: the Ed25519 signing key (``Config.audit_key_path``), created mode 0600 on first
            start, with ``audit-key.pub.pem`` exported beside it.
        checkpoint_every: write the signed checkpoint file every this many events (and on close).
        batch_max: most events committed in one transaction.
        on_failure: ``"deny"`` raises ``AuditError`` when events cannot be made durable;
            ``"warn"`` logs the failure and carries on.
        wal_checkpoint_pages: the writer checkpoints the WAL (off the acknowledgement path) once
            about this many pages were written since the last checkpoint (``Writer``).
        seal_idle_s: an idle writer signs its head record and stores the signature after
            this long without a new event (``Writer.seal``). Until then the signed head anchor
            vouches for it.
        refusals: past a few refused calls per principal and window, count the rest and
            record the counts (``gateway.audit.refusals``); None: every refusal is a record.

    Raises:
        AuditError: the log or key cannot be opened, another process holds the log, or the key
            does not match the one the log's head was signed with.
    """

    def __init__(
        self,
        path: Path,
        key_path: Path,
        *,
        checkpoint_every: int = 100,
        batch_max: int = 256,
        on_failure: Literal["deny", "warn"] = "deny",
        pinned_keys: tuple[str, ...] = (),
        checkpoint_export: Path | None = None,
        archive_dir: Path | None = None,
        wal_checkpoint_pages: int = WAL_CHECKPOINT_PAGES,
        seal_idle_s: float = SEAL_IDLE_S,
        refusals: RefusalTally | None = None,
    ) -> None:
        self.path = Path(path)
        self.refusals = refusals
        self.key_path = Path(key_path)
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.batch_max = max(1, int(batch_max))
        self.on_failure = on_failure
        self.pinned_keys = tuple(pinned_keys)
        self.checkpoint_export = Path(checkpoint_export) if checkpoint_export else None
        # where retention's segments are (retention.archive_dir_for): they can prove an exported checkpoint
        self.archive_dir = Path(archive_dir) if archive_dir else self.path.parent / "audit-archive"
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = take_lock(self.path)
        try:
            conn, last, key, key_id = self._open()
        except BaseException:
            self._release_lock()
            raise
        self._writer = Writer(
            self._queue,
            conn,
            self.path,
            self.key_path,
            key,
            key_id,
            last.seq if last else 0,
            last.chain_hash if last else GENESIS_HASH,
            self.checkpoint_every,
            self.batch_max,
            on_failure,
            self.checkpoint_export,
            wal_checkpoint_pages=max(1, int(wal_checkpoint_pages)),
            seal_idle_s=max(0.0, float(seal_idle_s)),
            ts_floor=last.ts_ns if last else 0,
        )
        self._thread = threading.Thread(target=self._writer.run, name="symbi-audit-writer", daemon=True)
        self._thread.start()
        # emits on an event loop's thread wait there for that thread's next record (gateway.audit.held)
        self._held = HeldEmits(lambda: self._writer.linger_s, self._queue_all)
        self._waits = RecordWaits()  # record()'s timeouts: one timer per loop (gateway.audit.waits)
        atexit.register(self.close)  # queued events are committed even if the owner forgets close()

    def _open(self) -> tuple[sqlite3.Connection, AuditRecord | None, Ed25519PrivateKey, str]:
        """Open the log for writing and check it against its key, pins and exported checkpoint:
        the connection, the head record, the signing key and its id. Raises ``AuditError``."""
        create_private(self.path)  # 0600 before SQLite opens it: its -wal/-shm inherit the mode
        conn = store.open_writer(self.path)
        last = store.head(conn)
        check_export(
            conn,
            self.path,
            self.checkpoint_export,
            archive_dir=self.archive_dir,
            key_path=self.key_path,
            pinned=self.pinned_keys,
        )
        key = load_key(self.key_path, self.path, expected_key_id(last))
        key_id = key_id_of(key.public_key())
        check_pinned(conn, self.path, self.key_path, key_id, self.pinned_keys)
        register_key(conn, self.path, key.public_key())
        return conn, last, key, key_id

    @classmethod
    def from_config(
        cls, config: Config, path: Path | None = None, *, key_path: Path | None = None
    ) -> AuditLog:
        """The log as ``symbi.toml`` configures it (``[audit]`` and ``gateway.data_dir``); the one
        construction from config, for the gateway and the CLI alike (``path``: another chain file
        of the same log, see open_audit, or ``--log``; ``key_path``: the CLI's ``--key``)."""
        from gateway.audit.retention import archive_dir  # retention imports this module (via verify)

        a = config.audit
        return cls(
            path or config.audit_path,
            key_path or config.audit_key_path,
            checkpoint_every=a.checkpoint_every,
            batch_max=a.batch_max,
            on_failure="warn" if config.audit_fails_open else "deny",
            pinned_keys=a.pinned_keys,
            checkpoint_export=a.checkpoint_export,
            archive_dir=archive_dir(config),
            refusals=RefusalTally(a.refusals_recorded_per_window, a.refusal_window_s),
        )

    # -- public API ---------------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        return self._writer.key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._writer.key.public_key()

    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed event (0 for an empty log)."""
        return self._writer.seq

    @property
    def EMIT_LINGER_S(self) -> float:
        return self._writer.linger_s

    @EMIT_LINGER_S.setter
    def EMIT_LINGER_S(self, seconds: float) -> None:
        self._writer.linger_s = seconds

    def emit(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        """Queue one event and return at once (``EventSink``). It is committed within one batch:
        on an event loop's thread, with the next event awaited on that thread, or after
        ``EMIT_LINGER_S`` (``gateway.audit.held``).

        Raises:
            AuditError: the log is closed or broken (only when ``on_failure = "deny"``).
        """
        try:
            if (
                self.refusals is not None
                and event_type in TALLIED_EVENTS
                and (whom := tallied_as(event_type, details, principal)) is not None
            ):
                self._check()  # a broken log fails the emit, counted or not
                if not self.admit_refusal(whom, event_key(event_type, details, agent), None):
                    return  # counted: recorded with its principal's other refusals (a flood)
            item = event_item(event_type, details, principal, agent, None)
            # None off an event loop (worker threads, scripts): no RuntimeError raised per event
            loop = asyncio.events._get_running_loop()
            if loop is not None:
                self._check()
                if self._held.hold(loop, item):
                    return
            self._put(item)
        except AuditError as e:
            self._failed(e)

    async def record(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
        timeout: float | None = None,
    ) -> int | None:
        """Write one event and return its sequence number once it is committed (durable).

        The event loop is not blocked; concurrent callers share one fsync (group commit).
        Returns None only when the write failed and ``on_failure = "warn"``. After ``timeout``
        seconds without a commit the caller gets ``AuditError``; the event is still written.

        Raises:
            AuditError: the event could not be made durable (``on_failure = "deny"``).
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        waits: LoopWaits | None = None
        try:
            # a stalled disk fails the caller, the event stays queued. A deadline on the waiter
            # itself, not wait_for: wait_for's own future would take one more loop pass per record.
            # No shield needed: cancelling the waiter (a cancelled caller) does not take the event
            # off the writer's queue, and the writer skips a settled waiter. Set before the event
            # is queued: the writer wakes at the put, and what this thread still runs until it
            # awaits holds the GIL the writer needs.
            if timeout is not None:
                waits = self._waits.of(loop)
                waits.add(loop, waiter, timeout)
            self._put(event_item(event_type, details, principal, agent, None, waiter))
            seq: int = await waiter
            return seq
        except AuditError as e:
            self._failed(e)
            return None
        finally:
            if waits is not None:
                if not waiter.done():  # refused before it was queued: nothing will settle it
                    waiter.cancel()
                waits.settled()

    def submit(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> asyncio.Future[int]:
        """Queue one event now (an event emitted after it is written after it) and return its
        commit: settled with its sequence number, or with the writer's error. No timeout: on a
        stalled disk it stays pending and the event queued, once (``events.Unsent`` waits on it
        a while, then again later, without queueing a copy).

        Raises:
            AuditError: refused before it was queued (the log is closed or broken).
        """
        commit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._put(event_item(event_type, details, principal, agent, None, commit))
        return commit

    def append(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
        timeout: float | None = None,
    ) -> int | None:
        """Blocking ``record`` for threads and scripts: returns the seq once committed."""
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()
        try:
            self._put(event_item(event_type, details, principal, agent, fut))
            return int(self._wait(fut, timeout))
        except AuditError as e:
            self._failed(e)
            return None

    def flush(self, timeout: float | None = None) -> None:
        """Return once every event queued before this call is committed (the refusals counted
        so far included: ``summarize_refusals``)."""
        self.summarize_refusals(every=True)
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._held.release_all()  # events held on other threads' loops came before this call too
        self._put(Item("flush", future=fut))
        self._wait(fut, timeout)

    def rotate_key(self, *, finish: bool = True, timeout: float | None = None) -> str:
        """Replace the signing key; returns the new key id.

        Writes an ``audit.key_rotated`` event signed by the OLD key that names the new key, its
        public key and a proof signed by the NEW key, so a verifier trusting the old key learns
        the new one from the chain itself. The new key is written first as ``audit-key.pem.new``;
        ``finish`` then makes it current: the old private key is overwritten and its public key
        kept as ``audit-key.pub.<id>.pem`` for verifiers. Chains sharing one key (several
        gateway processes) rotate with ``finish=False`` each, then ``keys.finish_rotation`` once
        (``symbi audit rotate-key`` does this).
        """
        fut: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._put(Item("rotate", future=fut, finish=finish))
        return str(self._wait(fut, timeout))

    def maintain(self, task: Callable[[WriterContext], Any], timeout: float | None = None) -> Any:
        """Run ``task`` on the writer thread between batches and return its result.

        The single writer stays the only one that writes the log (retention uses this).
        """
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(Item("maintain", future=fut, task=task))
        return self._wait(fut, timeout)

    def admit_refusal(self, principal: str, key: RefusalKey, call_id: str | None) -> bool:
        """Whether a refused call (or a refused request's event, ``call_id`` None) gets a
        record of its own; False: it was counted, and its count will be recorded
        (``gateway.audit.refusals``). The principal's summary of a window that ended is queued
        first."""
        if self.refusals is None:
            return True
        admitted, ended = self.refusals.admit(principal, key, call_id)
        self._summaries(ended)
        return admitted

    def summarize_refusals(self, *, every: bool = False) -> None:
        """Record the counted refusals of the windows that ended (a periodic sweep: a burst that
        stops is recorded too), or with ``every`` all counted so far (a flush, a close)."""
        if self.refusals is not None:
            self._summaries(self.refusals.take(every=every))

    def _summaries(self, summaries: list[RefusalSummary]) -> None:
        for s in summaries:
            self.emit(Event.AUDIT_REFUSALS_SUMMARIZED, s.details, principal=s.principal)

    def ensure_writable(self) -> None:
        """Raise ``AuditError`` now if events cannot be recorded (closed, broken, writer gone).
        The audit step calls this before dispatching, so a call with side effects is refused
        while the log is down. Logged, not raised, when ``on_failure = "warn"``."""
        if (err := self.unwritable()) is not None:
            self._failed(err)

    def unwritable(self) -> AuditError | None:
        """Why events cannot be recorded now, or None; nothing raised or logged (the hosted
        agents' lease runner looks at each renewal, and warns once per outage)."""
        if self._closed:
            return AuditError("audit log is closed")
        if self._writer.broken is not None:
            return self._writer.broken
        if not self._writer.running:  # as ``_check``: Thread.is_alive takes a lock and two calls
            return AuditError("audit writer thread is not running")
        return None

    def verify(self, *, all_signatures: bool = True) -> VerifyResult:
        """Verify this log (while it is written): against the pinned key ids and the exported
        checkpoints when configured, else against the public keys exported beside the key."""
        from gateway.audit.trust import verify_anchored

        keys = {**keyfiles.exported_public_keys(self.key_path), self.key_id: self.public_key}
        return verify_anchored(
            self.path,
            keys,
            pinned=self.pinned_keys,
            export=self.checkpoint_export,
            all_signatures=all_signatures,
        )

    def recent(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` committed events, oldest first, in wire form (``audit://recent``)."""
        conn = store.open_reader(self.path)
        try:
            return [r.as_dict() for r in store.query(conn, limit=max(0, int(n)), newest_first=True)]
        finally:
            conn.close()

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit everything queued, write the final checkpoint, stop the writer. Idempotent."""
        if self._closed:
            return
        try:  # the counted refusals go on the record before the close marker
            self.summarize_refusals(every=True)
        except AuditError as e:  # a broken log: those calls were refused anyway, and said so
            _logger.error("counted refusals not recorded at close: %s", e.message)
        self._closed = True
        atexit.unregister(self.close)
        if not self._writer.running or not self._thread.is_alive():  # died: nothing takes a close
            self._release_lock()
            return
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._held.close()  # held emits go before the close marker
        self._queue.put(Item("close", future=fut))
        self._writer.fail_late()  # died since the check above: the marker fails, not hangs
        try:
            self._wait(fut, timeout)
        except AuditError as e:
            # the writer died between the check and the marker (its one broken error): nothing
            # takes a close; any other (a final checkpoint that failed) is the caller's to see
            if e is not self._writer.broken:
                raise
        finally:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._writer.drain_after_close()
                self._writer.conn.close()
            self._release_lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- caller side --------------------------------------------------------------------------

    def _check(self) -> None:
        if (err := self.unwritable()) is not None:  # (a broken writer's frames dropped: ``_failed``)
            raise err.with_traceback(None)

    def _put(self, item: Item) -> None:
        self._check()
        self._held.release_here()  # this thread's held emits first: they came before ``item``
        self._queue.put(item)
        self._writer.fail_late()  # the writer died since the check: settled here, not never

    def _queue_all(self, items: list[Item]) -> None:
        for it in items:
            self._queue.put(it)
        self._writer.fail_late()

    @staticmethod
    def _wait(fut: concurrent.futures.Future[Any], timeout: float | None) -> Any:
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise AuditError(f"audit write not committed within {timeout}s") from None

    def _failed(self, err: AuditError) -> None:
        if self.on_failure == "warn":
            _logger.warning("audit event not recorded (audit.on_failure = unsafe_warn): %s", err.message)
            return
        # the stored ``broken`` error is raised again and again (every hosted agent's check, each
        # renewal): each raise added its frames to that one object, which grew without end
        raise err.with_traceback(None)

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
