"""SQLite storage for the audit log (schema, reads, queries, the anchor).

Why SQLite in WAL mode rather than an append-only JSONL file:

* A commit is atomic. A JSONL append cut by ``kill -9`` or a full disk leaves a torn last
  line that every reader must special-case; a WAL transaction is either whole or absent, so
  "acknowledged" has one meaning: the transaction that holds the event committed.
* ``synchronous=FULL`` fsyncs the WAL on every commit, so an acknowledged event survives a
  crash of the process *and* of the machine; group commit (one transaction per batch of up to
  ``audit.batch_max`` events) makes that fsync cheap per event.
* The head anchor lives in the same transaction as the events it covers, so it can never
  disagree with the log after a crash.
* ``symbi audit query`` filters by time, type, principal, tool and decision with SQL and
  ``json_extract`` instead of scanning a file; readers in other processes (``tail -f``, the
  admin API) see committed data only, concurrently with the writer. A time window is a range
  of seq (``seq_from``): the writer never lets ``ts_ns`` decrease along seq.
* It ships with Python (no new dependency). ``symbi audit export --format jsonl`` gives the
  line-per-event form for SIEMs, each signed line verifiable on its own (the others with
  the signed lines after them).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.audit.record import AuditRecord
from gateway.custody import write_atomic
from gateway.errors import AuditError
from gateway.sqlitetx import open_readonly

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    ts_ns INTEGER NOT NULL,
    principal TEXT,
    agent TEXT,
    type TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    chain_hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS anchor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    chain_hash TEXT NOT NULL,
    ts_ns INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    public_pem TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
"""

# The timestamp index logs had until session 12. A log without it was written by a writer that
# never lets ts_ns decrease along seq (``batch.chain_rows`` clamps a clock that steps back to the
# head's time), so its time windows are seq ranges (``seq_from``): one B-tree per row, not two
# (about 1.5 us of the writer's CPU per event). A log with it (an older log, or one an older
# gateway opened) may hold timestamps out of order: its windows are filtered through the index,
# as before. Archived records, which may come from such logs, are queried with it too.
TS_INDEX = "CREATE INDEX IF NOT EXISTS events_ts ON events(ts_ns)"

COLUMNS = "seq, id, ts_ns, principal, agent, type, details, prev_hash, chain_hash, signature, key_id"
INSERT = f"INSERT INTO events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"


@dataclass(frozen=True)
class Anchor:
    """A signed statement "the log's head is ``seq`` with chain hash ``chain_hash``"."""

    seq: int
    chain_hash: str
    ts_ns: int
    key_id: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Anchor:
        try:
            a = cls(**{k: doc[k] for k in ("seq", "chain_hash", "ts_ns", "key_id", "signature")})
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed anchor: {e}") from None
        if (
            not isinstance(a.seq, int)
            or not isinstance(a.chain_hash, str)
            or not isinstance(a.signature, str)
        ):
            raise ValueError("malformed anchor: wrong field types")  # noqa: TRY004 - one error for "malformed"
        return a


def chain_paths(base: Path) -> list[Path]:
    """``base`` and the sibling chains other gateway processes write (``audit-2.db``, ...).

    Several gateway processes on one data dir each write their own chain (one writer per
    chain), all signed with the same key; these are the files that exist, base first.
    """
    siblings = []
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            n = chain_number(base, p.name)
            if n > 1:
                siblings.append((n, p))
    return [base, *(p for _, p in sorted(siblings))] if base.exists() or siblings else [base]


def chain_number(base: Path, name: str) -> int:
    """1 for ``base``'s own name, N for its sibling chain ``<stem>-N<suffix>``, 0 for another file."""
    if name == base.name:
        return 1
    m = re.fullmatch(re.escape(base.stem) + r"-(\d+)" + re.escape(base.suffix), name)
    return int(m.group(1)) if m else 0


def checkpoint_path(log_path: Path) -> Path:
    """The checkpoint file beside the log (``audit.db`` -> ``audit.db.anchor.json``)."""
    return log_path.with_name(log_path.name + ".anchor.json")


def open_writer(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the log for the single writer: WAL, synchronous=FULL."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AuditError(f"audit log {path}: cannot switch to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
    except sqlite3.Error as e:
        raise AuditError(f"cannot open audit log {path}: {e}") from None
    return conn


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection (verify, query, tail) that never creates a log."""
    if not path.exists():
        raise AuditError(f"audit log {path} does not exist")
    try:
        conn = open_readonly(path, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("SELECT 1 FROM events LIMIT 1")
    except sqlite3.Error as e:
        raise AuditError(f"cannot read audit log {path}: {e}") from None
    return conn


def row_to_record(row: tuple[Any, ...]) -> AuditRecord:
    """The record of a row in ``COLUMNS`` order (a C call: verification builds one per row)."""
    return AuditRecord._make(row)


def record_to_row(r: AuditRecord) -> tuple[Any, ...]:
    """The row of ``r`` in ``COLUMNS`` order (the inverse of ``row_to_record``)."""
    return tuple(r)


def head(conn: sqlite3.Connection) -> AuditRecord | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    return row_to_record(row) if row else None


def iter_records(conn: sqlite3.Connection, *, after_seq: int = 0, chunk: int = 4096) -> Iterator[AuditRecord]:
    """Every record in sequence order, read in chunks (constant memory)."""
    cur = conn.execute(f"SELECT {COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (after_seq,))
    make = AuditRecord._make
    while True:
        rows = cur.fetchmany(chunk)
        if not rows:
            return
        yield from map(make, rows)


def read_anchor(conn: sqlite3.Connection) -> Anchor | None:
    row = conn.execute(
        "SELECT seq, chain_hash, ts_ns, key_id, signature FROM anchor WHERE one = 1"
    ).fetchone()
    return Anchor(*row) if row else None


def write_anchor(conn: sqlite3.Connection, anchor: Anchor) -> None:
    conn.execute(
        "INSERT INTO anchor (one, seq, chain_hash, ts_ns, key_id, signature) VALUES (1,?,?,?,?,?) "
        "ON CONFLICT(one) DO UPDATE SET seq=excluded.seq, chain_hash=excluded.chain_hash, "
        "ts_ns=excluded.ts_ns, key_id=excluded.key_id, signature=excluded.signature",
        (anchor.seq, anchor.chain_hash, anchor.ts_ns, anchor.key_id, anchor.signature),
    )


def write_checkpoint_file(path: Path, anchor: Anchor) -> None:
    """Replace the checkpoint file atomically (temp file, fsync, rename). The temporary name is
    fresh and created exclusively: a fixed one (``.NAME.tmp``) let whoever can write the folder
    plant a symlink there, and the checkpoint was written through it into a file of their choosing."""
    write_atomic(path, json.dumps(anchor.as_dict()).encode(), 0o600)


def export_checkpoint(path: Path, log_path: Path, anchor: Anchor) -> None:
    """Append a signed checkpoint to the second copy kept outside the data dir (JSON lines).

    Each line names the chain it covers (``log``: the log's file name), so one export file
    serves every chain of a data dir. ``symbi audit verify`` reads it back (``read_exported``).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = json.dumps({"log": log_path.name, **anchor.as_dict()}, sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _exported(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The checkpoints of an export file (JSON lines), in the order appended, or the one of a
    pretty-printed single checkpoint file (True). Raises ValueError if malformed."""
    text = path.read_text(encoding="utf-8")
    out: list[dict[str, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            if n == 1:  # a pretty-printed single checkpoint
                return [json.loads(text)], True
            raise ValueError(f"{path}:{n}: not a JSON checkpoint") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{path}:{n}: not a JSON checkpoint")  # noqa: TRY004 - one error for "malformed"
        out.append(doc)
    return out, False


def read_exported(path: Path, log_name: str | None = None) -> list[Anchor]:
    """Anchors of an export file (JSON lines) or of a single checkpoint file, for ``log_name``
    (lines without a ``log`` field count for every chain). Raises ValueError if malformed."""
    docs, single = _exported(path)
    if single:
        return [Anchor.from_dict(docs[0])]
    return [Anchor.from_dict(d) for d in docs if log_name is None or d.get("log") in (None, log_name)]


def last_exported(path: Path) -> dict[str, Anchor]:
    """The last checkpoint of each log (``log`` field; "" without one) an export file holds: the
    last appended, not the highest seq (a log replaced under the same name starts again at 1).
    Raises ValueError if malformed."""
    docs, single = _exported(path)
    if single:
        return {"": Anchor.from_dict(docs[0])}
    return {str(d.get("log") or ""): Anchor.from_dict(d) for d in docs}


def exported_log_names(path: Path) -> set[str]:
    """The chains (``log`` fields) an export file holds checkpoints of (``read_exported`` is the
    one to say a file is malformed: a line that is not JSON names none here)."""
    names: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("log"), str):
            names.add(doc["log"])
    return names


def read_checkpoint_file(path: Path) -> Anchor | None:
    """The anchor in a checkpoint file, None if there is none; raises ValueError if malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return Anchor.from_dict(json.loads(text))


def has_ts_index(conn: sqlite3.Connection) -> bool:
    """Whether the log has the timestamp index (then its timestamps may be out of seq order)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'events_ts'").fetchone()
    return row is not None


def seq_from(conn: sqlite3.Connection, ts_ns: int) -> int:
    """The least seq ``s`` such that every record from ``s`` on has ``ts_ns`` at or after
    ``ts_ns`` and none before it does (the head's seq + 1 when none does), for a log whose
    timestamps never decrease along seq (no ``events_ts`` index). A binary search over seq:
    about 2 log2(n) reads of one row, each through the rowid B-tree; gaps in seq (retention)
    are skipped by reading the next record at or after each probe."""
    # min and max each in a subquery of its own: SQLite reads them off the B-tree's ends only then
    # (one SELECT of both scans every row)
    lo, hi = conn.execute(
        "SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events) + 1"
    ).fetchone()
    if lo is None:
        return 1
    while lo < hi:  # invariant: the answer is in [lo, hi]; hi = head + 1 stands for "none"
        mid = (lo + hi) // 2
        row = conn.execute("SELECT ts_ns FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)).fetchone()
        if row[0] >= ts_ns:
            hi = mid
        else:
            lo = mid + 1
    return int(lo)


def _time_window(
    conn: sqlite3.Connection, since_ns: int | None, until_ns: int | None, where: list[str], params: list[Any]
) -> None:
    """The SQL of a time window: ``ts_ns`` compared row by row, and, in a log ordered by time
    (``has_ts_index`` false), the seq range it is (the rowid B-tree finds it, no scan)."""
    ordered = not has_ts_index(conn)
    if since_ns is not None:
        where.append("ts_ns >= ?")
        params.append(since_ns)
        if ordered:
            where.append("seq >= ?")
            params.append(seq_from(conn, since_ns))
    if until_ns is not None:
        where.append("ts_ns < ?")
        params.append(until_ns)
        if ordered:
            where.append("seq < ?")
            params.append(seq_from(conn, until_ns))


def query(
    conn: sqlite3.Connection,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    principal: str | None = None,
    tool: str | None = None,
    types: tuple[str, ...] = (),
    decision: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[AuditRecord]:
    """Records matching every given filter, in sequence order.

    ``types`` entries ending in ``*`` match a prefix (``policy.*``); ``tool`` matches
    ``details.tool``; ``decision`` is ``allow`` or ``deny`` (``details.decision.allow``, or outcome ``denied``).
    """
    where: list[str] = []
    params: list[Any] = []
    if since_ns is not None or until_ns is not None:
        _time_window(conn, since_ns, until_ns, where, params)
    if principal is not None:
        where.append("principal = ?")
        params.append(principal)
    if tool is not None:
        where.append("json_extract(details, '$.tool') = ?")
        params.append(tool)
    if types:
        ors = []
        for t in types:
            if t.endswith("*"):
                ors.append("substr(type, 1, ?) = ?")
                params.extend([len(t) - 1, t[:-1]])
            else:
                ors.append("type = ?")
                params.append(t)
        where.append("(" + " OR ".join(ors) + ")")
    if decision is not None:
        if decision not in ("allow", "deny"):
            raise ValueError("decision must be 'allow' or 'deny'")
        # a call refused by any step counts as denied, whatever the policy said before it
        denied = "(json_extract(details, '$.decision.allow') IS 0 OR json_extract(details, '$.outcome') IS 'denied')"
        where.append(
            denied
            if decision == "deny"
            else f"(json_extract(details, '$.decision.allow') IS 1 AND NOT {denied})"
        )
    sql = f"SELECT {COLUMNS} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    rows = [row_to_record(r) for r in conn.execute(sql, params)]
    return rows[::-1] if newest_first else rows
