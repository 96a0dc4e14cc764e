"""``AuditLog``: the signed, hash-chained, durable event log (the gateway's ``EventSink``).

Callers never touch the database: ``emit`` / ``record`` / ``append`` serialise the details at
once and put the event on an unbounded queue (never dropped); one writer thread takes up to
``audit.batch_max`` events at a time, assigns sequence numbers, chains them, signs the LAST
record of the batch (its chain hash vouches for every record before it, like a signed tree
head; the others carry an empty signature), inserts them and the signed head anchor in ONE
transaction and commits (WAL, fsync). Only then are the
events acknowledged: ``record`` / ``append`` return the sequence number after the commit.
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
import base64
import concurrent.futures
import fcntl
import hashlib
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit import keys as keyfiles
from gateway.audit import store
from gateway.audit.record import (
    CHAIN_PREFIX,
    GENESIS_HASH,
    anchor_message,
    canonical_bytes,
    canonical_details,
    key_id_of,
    public_pem,
    rotation_message,
    sign_hash,
)
from gateway.custody import create_private
from gateway.errors import AuditError, AuditLogBusy
from gateway.events import Event

if TYPE_CHECKING:
    from gateway.audit.verify import VerifyResult
    from gateway.config.model import Config

_logger = logging.getLogger("symbi.audit")

ROTATION_EVENT = Event.AUDIT_KEY_ROTATED


@dataclass(slots=True)
class _Item:
    kind: Literal["event", "flush", "rotate", "close", "maintain"]
    type: str = ""
    details_json: str = "{}"
    principal: str | None = None
    agent: str | None = None
    id: str = ""  # "": the writer assigns a UUID4 (one urandom call per batch, _new_ids)
    ts_ns: int = 0
    future: concurrent.futures.Future[Any] | None = field(default=None)
    waiter: asyncio.Future[Any] | None = None  # record(): resolved on its loop, once per batch
    finish: bool = True  # rotate: make the new key current afterwards
    task: Callable[[WriterContext], Any] | None = None  # maintain: run on the writer thread


def _awaited(item: _Item) -> bool:
    """Someone waits for this item: a ``record``/``append`` event, or any control item."""
    return item.kind != "event" or item.future is not None or item.waiter is not None


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


def _wake(items: list[_Item], values: list[Any] | None, exc: BaseException | None) -> None:
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


def _resolve(
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


def _new_ids(n: int) -> list[str]:
    """``n`` random UUID4 strings from one ``os.urandom`` call (``uuid.uuid4()`` makes one per id)."""
    h = os.urandom(16 * n).hex()
    out = []
    for i in range(0, 32 * n, 32):
        # version 4 and the RFC 4122 variant (10xx) set as uuid4 sets them
        out.append(
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
            f"{'89ab'[int(h[i + 16], 16) & 3]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        )
    return out


def _chain_rows(events: list[_Item], seq: int, prev: str, key_id: str) -> list[tuple[Any, ...]]:
    """The rows of a batch after ``seq`` / ``prev``: ids assigned, canonical bytes, chain hashes
    (unsigned: the caller signs the last). One tight loop; the hash chain is kept as bytes."""
    ids = iter(_new_ids(sum(1 for it in events if not it.id)))
    prev_raw = bytes.fromhex(prev)
    sha256 = hashlib.sha256
    rows: list[tuple[Any, ...]] = []
    for it in events:
        seq += 1
        if not it.id:
            it.id = next(ids)
        canon = canonical_bytes(
            seq, it.id, it.ts_ns, it.principal, it.agent, it.type, it.details_json, prev, key_id
        )
        digest = sha256(CHAIN_PREFIX + prev_raw + canon)
        h = digest.hexdigest()
        rows.append(
            (seq, it.id, it.ts_ns, it.principal, it.agent, it.type, it.details_json, prev, h, "", key_id)
        )
        prev, prev_raw = h, digest.digest()
    return rows


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

    Raises:
        AuditError: the log or key cannot be opened, another process holds the log, or the key
            does not match the one the log's head was signed with.
    """

    # how long fire-and-forget events wait for an awaited one to share its commit (_next_batch)
    EMIT_LINGER_S = 0.005

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
    ) -> None:
        self.path = Path(path)
        self.key_path = Path(key_path)
        self.checkpoint_every = max(1, int(checkpoint_every))
        self.batch_max = max(1, int(batch_max))
        self.on_failure = on_failure
        self.pinned_keys = tuple(pinned_keys)
        self.checkpoint_export = Path(checkpoint_export) if checkpoint_export else None
        # where retention's segments are (retention.archive_dir_for): they can prove an exported checkpoint
        self.archive_dir = Path(archive_dir) if archive_dir else self.path.parent / "audit-archive"
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closed = False
        self._broken: AuditError | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = self._take_lock()
        try:
            create_private(self.path)  # 0600 before SQLite opens it: its -wal/-shm inherit the mode
            self._conn = store.open_writer(self.path)
            last = store.head(self._conn)
            self._seq = last.seq if last else 0
            self._head = last.chain_hash if last else GENESIS_HASH
            self._check_export()
            expected = self._expected_key_id(last)
            self._key = self._load_key(expected)
            self._key_id = key_id_of(self._key.public_key())
            self._check_pinned()
            self._register_key(self._key.public_key())
        except BaseException:
            self._release_lock()
            raise
        self._thread = threading.Thread(target=self._run, name="symbi-audit-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # queued events are committed even if the owner forgets close()

    @classmethod
    def from_config(cls, config: Config) -> AuditLog:
        """The log as ``symbi.toml`` configures it (``[audit]`` and ``gateway.data_dir``)."""
        from gateway.audit.retention import archive_dir  # retention imports this module (via verify)

        a = config.audit
        return cls(
            config.audit_path,
            config.audit_key_path,
            checkpoint_every=a.checkpoint_every,
            batch_max=a.batch_max,
            on_failure="warn" if config.audit_fails_open else "deny",
            pinned_keys=a.pinned_keys,
            checkpoint_export=a.checkpoint_export,
            archive_dir=archive_dir(config),
        )

    # -- public API ---------------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed event (0 for an empty log)."""
        return self._seq

    def emit(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        """Queue one event and return at once (``EventSink``). It is committed within one batch.

        Raises:
            AuditError: the log is closed or broken (only when ``on_failure = "deny"``).
        """
        try:
            self._submit(event_type, details, principal, agent, None)
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
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        try:
            self._submit(event_type, details, principal, agent, None, waiter)
            # no shield needed: cancelling the waiter (a cancelled caller, the timeout) does not
            # take the event off the writer's queue, and the writer skips a settled waiter
            try:
                seq: int = await (waiter if timeout is None else asyncio.wait_for(waiter, timeout))
            except TimeoutError:  # a stalled disk: fail the caller, the event stays queued
                raise AuditError(f"audit write not committed within {timeout}s") from None
            return seq
        except AuditError as e:
            self._failed(e)
            return None

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
            self._submit(event_type, details, principal, agent, fut)
            return int(self._wait(fut, timeout))
        except AuditError as e:
            self._failed(e)
            return None

    def flush(self, timeout: float | None = None) -> None:
        """Return once every event queued before this call is committed."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._put(_Item("flush", future=fut))
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
        self._put(_Item("rotate", future=fut, finish=finish))
        return str(self._wait(fut, timeout))

    def maintain(self, task: Callable[[WriterContext], Any], timeout: float | None = None) -> Any:
        """Run ``task`` on the writer thread between batches and return its result.

        The single writer stays the only one that writes the log (retention uses this).
        """
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._put(_Item("maintain", future=fut, task=task))
        return self._wait(fut, timeout)

    def ensure_writable(self) -> None:
        """Raise ``AuditError`` now if events cannot be recorded (closed, broken, writer gone).

        The audit step calls this before dispatching, so a call with side effects is refused
        while the log is down. Silent when ``on_failure = "warn"`` (that failure is logged).
        """
        err: AuditError | None = None
        if self._closed:
            err = AuditError("audit log is closed")
        elif self._broken is not None:
            err = self._broken
        elif not self._thread.is_alive():
            err = AuditError("audit writer thread is not running")
        if err is not None:
            self._failed(err)

    def verify(self, *, all_signatures: bool = True) -> VerifyResult:
        """Verify this log (while it is written): against the pinned key ids and the exported
        checkpoints when configured, else against the public keys exported beside the key."""
        from gateway.audit.trust import verify_anchored

        keys = {**keyfiles.exported_public_keys(self.key_path), self._key_id: self.public_key}
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
        self._closed = True
        atexit.unregister(self.close)
        if not self._thread.is_alive():
            self._release_lock()
            return
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(_Item("close", future=fut))
        try:
            self._wait(fut, timeout)
        finally:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._drain_after_close()
                self._conn.close()
            self._release_lock()

    def _drain_after_close(self) -> None:
        """Commit events that raced past ``_closed`` into the queue behind the close marker."""
        late: list[_Item] = []
        while True:
            try:
                late.append(self._queue.get_nowait())
            except queue.Empty:
                break
        events = [it for it in late if it.kind == "event"]
        if events and self._commit_events(events):
            self._write_checkpoint()
        for it in late:
            if it.kind != "event":
                _resolve(it.future, exc=AuditError("audit log is closed"))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- caller side --------------------------------------------------------------------------

    def _submit(
        self,
        event_type: str,
        details: Mapping[str, Any],
        principal: str | None,
        agent: str | None,
        fut: concurrent.futures.Future[Any] | None,
        waiter: asyncio.Future[Any] | None = None,
    ) -> None:
        try:
            details_json = canonical_details(details)
        except (ValueError, TypeError) as e:
            # never lose the event over a bad value; keep the key names only (no raw values)
            names = sorted(str(k).encode("utf-8", "backslashreplace").decode() for k in details)
            details_json = canonical_details({"unserialisable": str(e), "keys": names})
        self._put(
            _Item(
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
        )

    def _put(self, item: _Item) -> None:
        if self._closed:
            raise AuditError("audit log is closed")
        if self._broken is not None:
            raise self._broken
        if not self._thread.is_alive():
            raise AuditError("audit writer thread is not running")
        self._queue.put(item)

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
        raise err

    # -- writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            events = [it for it in batch if it.kind == "event"]
            if events:
                self._commit_events(events)
            control = batch[-1] if batch[-1].kind != "event" else None
            if control is None:
                continue
            if control.kind == "flush":
                _resolve(control.future, None, self._broken)
            elif control.kind == "rotate":
                self._rotate(control)
            elif control.kind == "maintain":
                self._maintain(control)
            elif control.kind == "close":
                try:
                    self._write_checkpoint()
                    _resolve(control.future)
                except Exception as e:  # noqa: BLE001 - reported to the closer
                    _resolve(control.future, exc=AuditError(f"audit checkpoint on close failed: {e}"))
                return

    def _next_batch(self) -> list[_Item]:
        """The next group commit: what is queued, up to ``batch_max`` or a control item.

        While the batch holds only fire-and-forget events (``emit``: nobody waits for them),
        it waits up to ``EMIT_LINGER_S`` for an event someone waits for: a call's lifecycle
        flips then share the fsync of its ``record`` instead of taking one of their own
        before it (the call's reply waited for both). Nothing acknowledged is delayed: an
        awaited event, a flush or a close ends the wait at once.
        """
        batch = [self._queue.get()]
        awaited = _awaited(batch[0])
        deadline: float | None = None
        while len(batch) < self.batch_max and batch[-1].kind == "event":
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if awaited:
                    break
                if deadline is None:
                    deadline = time.monotonic() + self.EMIT_LINGER_S
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            awaited = awaited or _awaited(item)
        return batch

    def _commit_events(
        self, events: list[_Item], extra_sql: list[tuple[str, tuple[Any, ...]]] | None = None
    ) -> bool:
        seq, prev = self._seq, self._head
        try:
            rows = _chain_rows(events, seq, prev, self._key_id)
            seq, prev = rows[-1][0], rows[-1][8]
            # one signature per group commit: the batch's last chain hash covers the batch
            rows[-1] = (*rows[-1][:9], sign_hash(self._key, prev), self._key_id)
            anchor = self._anchor(seq, prev)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(store.INSERT, rows)
                for sql, params in extra_sql or ():
                    self._conn.execute(sql, params)
                store.write_anchor(self._conn, anchor)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        except Exception as e:  # noqa: BLE001 - any failure fails the batch closed
            err = AuditError(f"audit log {self.path} cannot be written: {e}")
            _logger.error("%s (%d events in the batch)", err.message, len(events))
            if any(it.future is None and it.waiter is None for it in events) and self.on_failure == "deny":
                self._broken = err  # unacknowledged events were lost: refuse everything after
            for it in events:
                _resolve(it.future, exc=err)
            _wake(events, None, err)
            return False
        old = self._seq
        self._seq, self._head = seq, prev
        for row, it in zip(rows, events, strict=True):
            if it.future is not None:
                _resolve(it.future, row[0])
        _wake(events, [row[0] for row in rows], None)
        if seq // self.checkpoint_every > old // self.checkpoint_every:
            try:
                self._write_checkpoint(anchor)  # the batch's signed anchor: no second signature
            except OSError as e:  # the in-database anchor still covers this batch
                _logger.error("audit checkpoint file not written: %s", e)
        return True

    def _anchor(self, seq: int, head: str) -> store.Anchor:
        sig = base64.b64encode(self._key.sign(anchor_message(seq, head))).decode("ascii")
        return store.Anchor(
            seq=seq, chain_hash=head, ts_ns=time.time_ns(), key_id=self._key_id, signature=sig
        )

    def _write_checkpoint(self, anchor: store.Anchor | None = None) -> None:
        if anchor is None:
            anchor = self._anchor(self._seq, self._head)
        store.write_checkpoint_file(store.checkpoint_path(self.path), anchor)
        if self.checkpoint_export is not None and anchor.seq > 0:
            store.export_checkpoint(self.checkpoint_export, self.path, anchor)

    def _rotate(self, control: _Item) -> None:
        try:
            pending = keyfiles.pending_key_path(self.key_path)
            if pending.exists():  # a rotation of a sibling chain (same key) already made it
                new_key = keyfiles.load_private_key(pending)
            else:
                new_key = Ed25519PrivateKey.generate()
                keyfiles.write_private_key(pending, new_key)  # on disk before any log names it
            new_pub = new_key.public_key()
            new_id = key_id_of(new_pub)
            if new_id != self._key_id:
                proof = base64.b64encode(new_key.sign(rotation_message(self._key_id, new_id))).decode("ascii")
                details = {
                    "old_key_id": self._key_id,
                    "new_key_id": new_id,
                    "new_public_key": public_pem(new_pub),
                    "proof": proof,
                }
                item = _Item(
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
                if not self._commit_events([item], [key_row]):
                    raise self._broken or AuditError("rotation event could not be committed")
                self._key, self._key_id = new_key, new_id
            if control.finish:
                keyfiles.finish_rotation(self.key_path)
            _resolve(control.future, new_id)
        except Exception as e:  # noqa: BLE001
            _resolve(
                control.future,
                exc=e if isinstance(e, AuditError) else AuditError(f"key rotation failed: {e}"),
            )

    def _maintain(self, control: _Item) -> None:
        assert control.task is not None

        def sign(message: bytes) -> str:
            return base64.b64encode(self._key.sign(message)).decode("ascii")

        def commit(
            event_type: str, details: Mapping[str, Any], extra_sql: list[tuple[str, tuple[Any, ...]]]
        ) -> int:
            item = _Item(
                "event",
                type=event_type,
                details_json=canonical_details(details),
                id=str(uuid.uuid4()),
                ts_ns=time.time_ns(),
                future=None,
            )
            if not self._commit_events([item], extra_sql):
                raise self._broken or AuditError(f"{event_type} could not be committed")
            try:  # retention took events out: export a checkpoint the live log holds right away
                self._write_checkpoint()
            except OSError as e:  # start-up can still prove the old one from the hand-off/archive
                _logger.error("audit checkpoint file not written: %s", e)
            return self._seq

        ctx = WriterContext(
            conn=self._conn,
            key_id=self._key_id,
            head_seq=self._seq,
            head_hash=self._head,
            sign=sign,
            commit=commit,
        )
        try:
            _resolve(control.future, control.task(ctx))
        except Exception as e:  # noqa: BLE001 - reported to the caller, the writer carries on
            _resolve(control.future, exc=e)

    # -- start-up -----------------------------------------------------------------------------

    def _expected_key_id(self, last: Any) -> str | None:
        if last is None:
            return None
        if last.type == ROTATION_EVENT:
            return str(last.details.get("new_key_id"))
        return str(last.key_id)

    def _load_key(self, expected: str | None) -> Ed25519PrivateKey:
        """The key the log's head says signs next: the key file, or a rotation's pending key.

        A pending key is never deleted here: after a rotation cut short, chains that already
        recorded the hand-over sign with it, the others with the old key, until
        ``symbi audit rotate-key`` is run again and completes the rotation.
        """
        if expected is None:
            return keyfiles.load_or_create_key(self.key_path)
        pending = keyfiles.pending_key_path(self.key_path)
        found = []
        for candidate in (self.key_path, pending):
            if candidate.exists():
                key = keyfiles.load_private_key(candidate)
                if key_id_of(key.public_key()) == expected:
                    if candidate == self.key_path and not keyfiles.public_key_path(self.key_path).exists():
                        keyfiles.write_public_key(keyfiles.public_key_path(self.key_path), key.public_key())
                    return key
                found.append(key_id_of(key.public_key()))
        raise AuditError(
            f"audit key {self.key_path} ({', '.join(found) or 'missing'}) is not the key the log {self.path} "
            f"is signed with ({expected}); restore that key or start a new log"
        )

    def _check_export(self) -> None:
        """Refuse a log that is behind (or forks from) its own exported checkpoints: it was
        emptied, truncated or replaced while the gateway was down."""
        if self.checkpoint_export is None or not self.checkpoint_export.exists():
            return
        try:
            anchors = store.read_exported(self.checkpoint_export, self.path.name)
        except (OSError, ValueError) as e:
            raise AuditError(
                f"audit.checkpoint_export {self.checkpoint_export} cannot be read: {e}"
            ) from None
        # not filtered by signature: the export's place is trusted, and a data-dir writer who
        # deleted the keys could otherwise make every exported checkpoint look foreign
        if not anchors:
            return
        last = max(anchors, key=lambda a: a.seq)
        row = self._conn.execute("SELECT chain_hash FROM events WHERE seq = ?", (last.seq,)).fetchone()
        if row is None and self._archived(last, anchors):
            return  # this log's own retention took it out of the live log (proved, signed)
        if row is None or row[0] != last.chain_hash:
            raise AuditError(
                f"audit log {self.path} does not contain the checkpoint exported to {self.checkpoint_export} "
                f"(seq {last.seq}): it was emptied, truncated or replaced; keep it for investigation and "
                "start a new log elsewhere"
            )

    def _archived(self, last: store.Anchor, anchors: list[store.Anchor]) -> bool:
        """Whether the hand-off or the archive, signed by a key the checkpoints name or the
        config pins (a key id is a hash of the key), proves ``last`` was archived unchanged."""
        # imported here: both import (via verify) this module
        from gateway.audit.retention import proves_checkpoint
        from gateway.audit.trust import keys_in_logs

        trusted = set(self.pinned_keys) | {a.key_id for a in anchors}
        try:
            candidates = {**keys_in_logs([self.path]), **keyfiles.exported_public_keys(self.key_path)}
        except AuditError:  # an unreadable public key file: nothing proves the checkpoint
            return False
        keys = {k: v for k, v in candidates.items() if k in trusted}
        return proves_checkpoint(self._conn, last, self.archive_dir, self.path.name, keys)

    def _check_pinned(self) -> None:
        """The signing key must be pinned in the config, or handed over by a rotation in this log."""
        if not self.pinned_keys:
            _logger.warning(
                "audit verification is not anchored: pin the signing key in the config "
                '([audit] pinned_keys = ["%s"]) and keep a copy of the checkpoints elsewhere '
                "([audit] checkpoint_export)",
                self._key_id,
            )
            return
        if self._key_id in self.pinned_keys:
            return
        handed = self._conn.execute(
            "SELECT 1 FROM events WHERE type = ? AND json_extract(details, '$.new_key_id') = ? LIMIT 1",
            (ROTATION_EVENT, self._key_id),
        ).fetchone()
        if handed is None:
            raise AuditError(
                f"audit key {self.key_path} ({self._key_id}) is not pinned in audit.pinned_keys "
                f"({', '.join(self.pinned_keys)}) and no rotation in {self.path} hands over to it"
            )

    def _register_key(self, pub: Ed25519PublicKey) -> None:
        try:
            self._conn.execute(
                "INSERT OR IGNORE INTO keys (key_id, public_pem, created_ns) VALUES (?,?,?)",
                (key_id_of(pub), public_pem(pub), time.time_ns()),
            )
        except sqlite3.Error as e:
            raise AuditError(f"cannot write audit log {self.path}: {e}") from None

    def _take_lock(self) -> int:
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise AuditLogBusy(f"audit log {self.path} is in use by another process (lock {lock})") from None
        return fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
