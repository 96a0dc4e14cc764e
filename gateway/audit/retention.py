"""Audit retention without losing verifiability: sealed segments and a signed hand-off.

``[audit] retention_days`` / ``max_bytes`` bound the live log. When either is exceeded, the
oldest events (never the head) leave the live database:

1. ``archive`` mode (default): they are written, in the JSONL export format (each line a
   record that verifies on its own), to a segment file in ``[audit] archive_dir``
   (``<log>.<first seq>-<last seq>.jsonl``), and a **seal** beside it
   (``<segment>.seal.json``) signs what the segment holds: its seq range, the chain hash its
   first record follows, its last chain hash, its time range and the SHA-256 of the file.
   ``delete`` mode writes no segment (the events are gone; the hand-off says how many).
2. In ONE transaction of the log's single writer: an ``audit.archived`` event (the hand-off
   document, on the chain), the signed **hand-off** row (table ``handoff``: "the live chain
   continues after seq N whose chain hash is H"), and the deletion of events up to N.

Verification then (``gateway.audit.archives``: ``verify_live``): the hand-off's signature with a trusted key, and the live
chain from seq N+1 linked to H (a missing first live record is a gap). A segment verifies on
its own (``verify_segment``): seal signature, file digest, every record's hash, link and
signature from the seal's start. ``verify_archives`` checks every segment and that they
join up with each other and with the hand-off (a missing or foreign segment is a gap).

Signing goes through ``AuditLog.maintain`` (``WriterContext.sign``): this module never holds
the key. Work per retention run: the archived events are read once (segment written by a
reader connection, outside the writer thread); the writer is held only for the short commit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import store
from gateway.audit.record import AuditRecord, canonical_json
from gateway.audit.verify import read_jsonl
from gateway.custody import write_atomic
from gateway.errors import AuditError
from gateway.events import Event

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from gateway.audit.batch import WriterContext
    from gateway.audit.log import AuditLog
    from gateway.config.model import Config

_logger = logging.getLogger("symbi.audit.retention")

SEGMENT_PREFIX = b"symbi-audit-segment-v1\x00"
HANDOFF_PREFIX = b"symbi-audit-handoff-v1\x00"
ARCHIVED_EVENT = Event.AUDIT_ARCHIVED
HANDOFF_TABLE = (
    "CREATE TABLE IF NOT EXISTS handoff (one INTEGER PRIMARY KEY CHECK (one = 1), doc TEXT NOT NULL)"
)
_TARGET = 0.8  # a size-triggered run brings the live log down to 80% of max_bytes (no run per event)
Mode = Literal["archive", "delete"]


def _signed_message(prefix: bytes, doc: Mapping[str, Any]) -> bytes:
    return prefix + canonical_json({k: v for k, v in doc.items() if k != "signature"}).encode()


def signature_ok(prefix: bytes, doc: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> bool:
    key = keys.get(str(doc.get("key_id")))
    if key is None:
        return False
    try:
        key.verify(base64.b64decode(str(doc["signature"]), validate=True), _signed_message(prefix, doc))
        return True
    except (InvalidSignature, binascii.Error, ValueError, KeyError):
        return False


@dataclass(frozen=True)
class Seal:
    """What one archived segment holds, signed."""

    log: str
    file: str
    first_seq: int
    last_seq: int
    prev_hash: str  # the chain hash the first record follows
    last_hash: str
    count: int
    first_ts_ns: int
    last_ts_ns: int
    sha256: str
    key_id: str
    signature: str = ""

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Seal:
        try:
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed segment seal: {e}") from None


@dataclass(frozen=True)
class Handoff:
    """The live chain continues after ``seq`` (chain hash ``chain_hash``), signed."""

    seq: int
    chain_hash: str
    ts_ns: int
    mode: Mode
    segment: str | None  # file name of the segment that ends at ``seq`` (None: deleted)
    segment_sha256: str | None
    from_seq: int  # first seq this run took out of the live log
    count: int
    first_ts_ns: int  # time range of the events this run took out
    last_ts_ns: int
    previous_seq: int  # the hand-off this one replaces (0: none)
    key_id: str
    signature: str = ""

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Handoff:
        try:
            return cls(**{k: doc[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed hand-off: {e}") from None


@dataclass(frozen=True)
class RetentionPolicy:
    retention_days: float | None
    max_bytes: int | None
    mode: Mode
    archive_dir: Path

    @classmethod
    def from_config(cls, config: Config) -> RetentionPolicy:
        a = config.audit
        return cls(a.retention_days, a.max_bytes, a.retention_mode, archive_dir(config))

    @property
    def enabled(self) -> bool:
        return self.retention_days is not None or self.max_bytes is not None


def archive_dir(config: Config) -> Path:
    return config.audit.archive_dir or config.data_dir / "audit-archive"


# -- reading ------------------------------------------------------------------------------------


def read_handoff(conn: sqlite3.Connection) -> Handoff | None:
    """The live log's hand-off (None: the chain starts at seq 1); ValueError when malformed."""
    try:
        row = conn.execute("SELECT doc FROM handoff WHERE one = 1").fetchone()
    except sqlite3.OperationalError:  # a log that never archived has no such table
        return None
    return Handoff.from_dict(json.loads(row[0])) if row else None


def segments(folder: Path, log_name: str) -> list[tuple[Seal | None, Path]]:
    """The segment files of ``log_name`` in ``folder``, oldest first, with their seals."""
    if not folder.is_dir():
        return []
    out: list[tuple[int, Seal | None, Path]] = []
    for p in folder.glob(f"{log_name}.*.jsonl"):
        try:
            first = int(p.name[len(log_name) + 1 :].split("-", 1)[0])
        except ValueError:
            continue
        seal = None
        try:
            seal = Seal.from_dict(json.loads(seal_path(p).read_text(encoding="utf-8")))
        except (OSError, ValueError, json.JSONDecodeError):
            pass
        out.append((first, seal, p))
    return [(s, p) for _, s, p in sorted(out, key=lambda t: t[0])]


def iter_archived(folder: Path, log_name: str) -> Iterator[AuditRecord]:
    """Every archived record of ``log_name``, oldest first (query/export ``--archived``)."""
    for _, path in segments(folder, log_name):
        yield from read_jsonl(path)


def seal_path(segment: Path) -> Path:
    return segment.with_name(segment.name + ".seal.json")


# -- archiving ----------------------------------------------------------------------------------


def plan_cut(conn: sqlite3.Connection, policy: RetentionPolicy, *, after: int, head: int, now_ns: int) -> int:
    """The last seq to take out of the live log (``after`` when nothing is due); never the head."""
    cut = after
    if policy.retention_days is not None:
        horizon = now_ns - int(policy.retention_days * 86_400 * 1e9)
        cut = max(cut, _last_before(conn, horizon))
    if policy.max_bytes is not None:
        pages, free, size = (
            conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count", "page_size")
        )
        used = (pages - free) * size
        if used > policy.max_bytes:
            cut = max(cut, _cut_for_bytes(conn, after, used - int(policy.max_bytes * _TARGET)))
    return min(cut, head - 1)


def _last_before(conn: sqlite3.Connection, horizon: int) -> int:
    """The last seq of a record older than ``horizon`` (0 if none): the rows before the first
    seq at or after it in a log ordered by time (``store.seq_from``), else through the index."""
    if store.has_ts_index(conn):
        row = conn.execute("SELECT max(seq) FROM events WHERE ts_ns < ?", (horizon,)).fetchone()
    else:
        row = conn.execute(
            "SELECT max(seq) FROM events WHERE seq < ?", (store.seq_from(conn, horizon),)
        ).fetchone()
    return int(row[0] or 0)


def _cut_for_bytes(conn: sqlite3.Connection, after: int, to_free: int) -> int:
    # stored size of a row: its columns plus a per-row overhead (index entry, record header)
    cur = conn.execute(
        "SELECT seq, length(details) + length(id) + length(type) + length(prev_hash) + length(chain_hash) "
        "+ length(signature) + length(key_id) + coalesce(length(principal), 0) + coalesce(length(agent), 0) + 48 "
        "FROM events WHERE seq > ? ORDER BY seq",
        (after,),
    )
    freed, last = 0, after
    for seq, size in cur:
        freed += int(size)
        last = int(seq)
        if freed >= to_free:
            break
    return last


def archive(log: AuditLog, policy: RetentionPolicy, *, now_ns: int | None = None) -> Handoff | None:
    """Take what ``policy`` says is due out of ``log``'s live chain; None when nothing is due.

    Raises:
        AuditError: the segment cannot be written or the hand-off cannot be committed (the
            live log is then unchanged; a segment file already written is simply rewritten
            by the next run).
    """
    now_ns = now_ns if now_ns is not None else time.time_ns()
    conn = store.open_reader(log.path)
    try:
        try:
            previous = read_handoff(conn)
        except (ValueError, json.JSONDecodeError) as e:
            raise AuditError(f"audit log {log.path}: its hand-off record is malformed: {e}") from None
        after = previous.seq if previous else 0
        head = store.head(conn)
        cut = plan_cut(conn, policy, after=after, head=head.seq if head else 0, now_ns=now_ns)
        if cut <= after:
            return None
        records = list(store.iter_records(conn, after_seq=after))
        records = [r for r in records if r.seq <= cut]
    finally:
        conn.close()
    if not records or records[0].seq != after + 1 or records[-1].seq != cut:
        raise AuditError(
            f"audit log {log.path}: events {after + 1}..{cut} are not all present; not archiving"
        )
    segment = _write_segment(log, policy, records) if policy.mode == "archive" else None
    handoff: Handoff = log.maintain(lambda ctx: _commit_handoff(ctx, policy.mode, previous, records, segment))
    return handoff


def _write_segment(log: AuditLog, policy: RetentionPolicy, records: list[AuditRecord]) -> tuple[str, str]:
    folder = policy.archive_dir
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for seal, orphan in segments(folder, log.path.name):
        # a run that wrote its segment but crashed before its hand-off committed left this
        # behind: those events are still live, and this run archives them again
        if seal is not None and seal.first_seq >= records[0].seq:
            orphan.unlink(missing_ok=True)
            seal_path(orphan).unlink(missing_ok=True)
    name = f"{log.path.name}.{records[0].seq:012d}-{records[-1].seq:012d}.jsonl"
    path = folder / name
    digest = hashlib.sha256()
    # a fresh name created exclusively: a fixed one (``.NAME.tmp``) let whoever can write the
    # folder plant a symlink there, and the segment was written through it
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for r in records:
                line = (json.dumps(r.as_dict(), ensure_ascii=False) + "\n").encode()
                digest.update(line)
                f.write(line)
            f.flush()
            os.fsync(f.fileno())
        seal = Seal(
            log=log.path.name,
            file=name,
            first_seq=records[0].seq,
            last_seq=records[-1].seq,
            prev_hash=records[0].prev_hash,
            last_hash=records[-1].chain_hash,
            count=len(records),
            first_ts_ns=records[0].ts_ns,
            last_ts_ns=records[-1].ts_ns,
            sha256=digest.hexdigest(),
            key_id=log.key_id,
        )
        doc = asdict(seal)
        doc["signature"] = log.maintain(lambda ctx: ctx.sign(_signed_message(SEGMENT_PREFIX, doc)))
        write_atomic(seal_path(path), json.dumps(doc, sort_keys=True).encode())
        os.replace(tmp, path)  # the segment appears with its seal already beside it
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return name, seal.sha256


def _commit_handoff(
    ctx: WriterContext,
    mode: Mode,
    previous: Handoff | None,
    records: list[AuditRecord],
    segment: tuple[str, str] | None,
) -> Handoff:
    """On the writer thread: the hand-off row, the ``audit.archived`` event and the deletion, at once."""
    last = records[-1]
    row = ctx.conn.execute("SELECT chain_hash FROM events WHERE seq = ?", (last.seq,)).fetchone()
    current = read_handoff(ctx.conn)
    if (
        row is None
        or row[0] != last.chain_hash
        or (current.seq if current else 0) != (previous.seq if previous else 0)
    ):
        raise AuditError("the live log changed while archiving (another retention run?); not archived")
    doc = asdict(
        Handoff(
            seq=last.seq,
            chain_hash=last.chain_hash,
            ts_ns=time.time_ns(),
            mode=mode,
            segment=segment[0] if segment else None,
            segment_sha256=segment[1] if segment else None,
            from_seq=records[0].seq,
            count=len(records),
            first_ts_ns=records[0].ts_ns,
            last_ts_ns=last.ts_ns,
            previous_seq=previous.seq if previous else 0,
            key_id=ctx.key_id,
        )
    )
    doc["signature"] = ctx.sign(_signed_message(HANDOFF_PREFIX, doc))
    ctx.commit(
        ARCHIVED_EVENT,
        doc,
        [
            (HANDOFF_TABLE, ()),
            (
                "INSERT INTO handoff (one, doc) VALUES (1, ?) ON CONFLICT(one) DO UPDATE SET doc = excluded.doc",
                (json.dumps(doc, sort_keys=True),),
            ),
            ("DELETE FROM events WHERE seq <= ?", (last.seq,)),
        ],
    )
    return Handoff.from_dict(doc)


def periodic(
    log: AuditLog, policy: RetentionPolicy, interval_s: float
) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """A gateway background task: apply ``policy`` at start and every ``interval_s`` seconds."""

    async def run(gw: Any) -> None:
        while True:
            try:
                h = await anyio.to_thread.run_sync(archive, log, policy)
            except AuditError as e:  # the live log is unchanged: retry next time, loudly
                _logger.error("audit retention failed: %s", e.message)
            else:
                if h is not None:
                    _logger.info(
                        "audit retention: seq %d..%d out of the live log (%s)",
                        h.from_seq,
                        h.seq,
                        h.segment or "deleted",
                    )
            await anyio.sleep(interval_s)

    return run


def archive_dir_for(log_path: Path, config: Config | None) -> Path:
    """Where ``log_path``'s segments are: the config's ``archive_dir`` (segment names carry the
    log's file name, so sibling chains share it), else beside the log."""
    if config is not None:
        return archive_dir(config)
    return Path(log_path).parent / "audit-archive"
