"""Full verification of a large SQLite log over several processes (``verify_log(jobs=N)``).

What each record needs on its own (its position and link inside a range of seqs, the details'
object check, the content hash against its chain hash, the Ed25519 signature against the one
candidate key of its key id, ``candidate_keys``) runs in N processes over N ranges of seqs
(``seq_ranges``): this process takes the first range, a pool of N-1 workers the others, forked
(``start_method``: from a ``forkserver`` while threads run, as in ``symbi serve``, where a plain
fork could copy a lock another thread holds). Each range returns its first ``prev_hash``, its
last chain hash, its count and the few rows the trust walk needs (``_walk_range``: each key's
run start and end inside the range, every signed, rotation or anchored record and the record
after one, the range's first and last); one sequential pass then stitches the ranges' links and
runs the same trust, rotation, vouching, tail and anchor checks as the serial walk
(``_trust_walk``, ``verify._finish``). The records a range leaves out are unsigned, unanchored
records of the same key as the one before them, after a record no signature vouches for: to the
serial walk they change nothing.

The parent's snapshot fixes the head (``max(seq)``) at the start: rows appended meanwhile are
not read. A worker reads its range in its own snapshot: only the writer's late head signature
can differ, and a signature that verifies only adds. Anything a range or the walk finds wrong,
a worker that fails, or a key id two candidate keys claim, sends the whole log to the serial
walk over the parent's snapshot, which names the FIRST bad seq and its kind: the parallel pass
only ever says "intact", so both paths report the same problem.

JSONL exports stay on the serial walk: their records are already parsed in memory, and
sending them to workers costs about what verifying them does.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from hashlib import sha256
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from orjson import JSONDecodeError, loads

from gateway.audit import store
from gateway.audit.record import (
    CHAIN_PREFIX,
    GENESIS_HASH,
    ROTATION_EVENT,
    AuditRecord,
    is_json_object,
    key_id_of,
    spliced_bytes,
    verify_hash_signature,
)
from gateway.audit.verify import (
    VerifyResult,
    _Bad,
    _check_signature,
    _escaped,
    _finish,
    _learn_rotation,
    _Walk,
    verify_records,
)
from gateway.errors import AuditError, ConfigError

# below this many events (``jobs=None``) one process. Measured (session 15, 2 cores, load 10):
# a forked pool adds ~35 ms of CPU (fork, pool threads, the kept rows pickled back), what ~3,000
# events of the walk take; a forkserver's first use ~0.55 s (a fresh interpreter importing
# gateway.audit), ~50,000 events' worth: beside threads splitting waits for a larger log
PARALLEL_MIN_EVENTS = 10_000
FORKSERVER_MIN_EVENTS = 200_000


def start_method() -> str:
    """``fork`` (~10 ms a worker, the parent's imports shared) while this process runs one
    thread; beside threads (``symbi serve``) a fork may copy a lock another thread holds, so
    workers fork from a ``forkserver`` (~0.5 s of CPU once: a fresh interpreter's imports)."""
    return "fork" if threading.active_count() == 1 else "forkserver"


Row = tuple[Any, ...]


def job_count(jobs: int | None) -> int:
    """The processes ``verify_log`` may use: ``jobs``, or this machine's cores when None.

    Raises:
        ConfigError: ``jobs`` is not a whole number of at least 1.
    """
    if jobs is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if type(jobs) is not int or jobs < 1:
        raise ConfigError(f"verification jobs must be a whole number of at least 1, not {jobs!r}")
    return jobs


def seq_ranges(first: int, head: int, n: int) -> list[tuple[int, int]]:
    """``first..head`` cut into ``n`` ranges of consecutive seqs (inclusive bounds), the
    first ones one longer when it does not divide evenly."""
    size, extra = divmod(head - first + 1, n)
    out, lo = [], first
    for i in range(n):
        hi = lo + size + (i < extra) - 1
        out.append((lo, hi))
        lo = hi + 1
    return out


@dataclass(frozen=True)
class Range:
    """What one range of seqs says: its link ends, count, signatures and the rows kept."""

    first_prev: str
    last_chain: str
    count: int
    kept: list[Row]
    signatures: int


def verify_range(
    path: str,
    bounds: tuple[int, int],
    first: bool,
    keys: Mapping[str, bytes],
    anchor_seqs: frozenset[int],
    full: bool,
) -> tuple[int, Range | None]:
    """One range in this process (a worker's entry point): this process's id, and the range's
    facts or None when anything is wrong.

    The first range also reads every row below it (a row at seq 0 or below must fail)."""
    lo, hi = bounds
    try:
        conn = store.open_reader(Path(path))
    except AuditError:
        return os.getpid(), None
    try:
        where = "seq <= ?" if first else "seq >= ? AND seq <= ?"
        params = (hi,) if first else (lo, hi)
        rows = conn.execute(f"SELECT {store.COLUMNS} FROM events WHERE {where} ORDER BY seq", params)
        pubs = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in keys.items()}
        return os.getpid(), _walk_range(rows, lo, pubs, anchor_seqs, full)
    except (sqlite3.Error, ValueError, TypeError):
        return os.getpid(), None
    finally:
        conn.close()


def _walk_range(
    rows: Iterable[Row],
    lo: int,
    keys: Mapping[str, Ed25519PublicKey],
    anchor_seqs: frozenset[int],
    full: bool,
) -> Range | None:
    """The serial walk's per-record checks that need nothing before the range (same loop as
    ``_Walk.records``), keeping the rows the trust walk reads; None at the first problem."""
    prefixed, esc, cache = sha256(CHAIN_PREFIX), encode_basestring, dict[str, str]()
    expected, prev, prev_raw, prev_j, first_prev = lo, "", b"", "", ""
    kept: list[Row] = []
    last: Row | None = None
    last_key, keep_next, sigs = None, True, 0
    for row in rows:
        seq, id_, ts_ns, principal, agent, type_, details, prev_hash, chain, signature, key_id = row
        if seq != expected:
            return None
        if last is None:  # the range's link in: stitched to the range before by the caller
            first_prev, prev_raw, prev_j = prev_hash, bytes.fromhex(prev_hash), esc(prev_hash)
        elif prev_hash != prev:
            return None
        try:
            whole = type(loads(details)) is dict
        except JSONDecodeError:
            whole = is_json_object(details)
        if not whole:
            return None
        h = prefixed.copy()
        h.update(prev_raw)
        aj = "null" if agent is None else cache.get(agent) or _escaped(cache, agent)
        pj = "null" if principal is None else cache.get(principal) or _escaped(cache, principal)
        kj = cache.get(key_id) or _escaped(cache, key_id)
        tj = cache.get(type_) or _escaped(cache, type_)
        h.update(spliced_bytes(aj, details, esc(id_), kj, prev_j, pj, seq, ts_ns, tj))
        raw = h.digest()
        if raw.hex() != chain:
            return None
        rotation = type_ == ROTATION_EVENT  # its signature and hand-over: the trust walk's
        if full and signature and not rotation:
            key = keys.get(key_id)
            if key is None or not verify_hash_signature(key, chain, signature):
                return None
            sigs += 1
        if key_id != last_key:  # a key's run starts here and the one before ends
            if last is not None and kept[-1] is not last:
                kept.append(last)
            keep_next = True
        vouching = bool(signature) or rotation or seq in anchor_seqs
        if keep_next or vouching:
            kept.append(row)
        keep_next = vouching  # the next record starts an unsigned stretch, or follows a rotation
        expected, prev, prev_raw, prev_j = seq + 1, chain, raw, f'"{chain}"'
        last, last_key = row, key_id
    if last is None:
        return None
    if kept[-1] is not last:
        kept.append(last)
    return Range(first_prev, prev, expected - lo, kept, sigs)


def _trust_walk(walk: _Walk, kept: Iterable[Row], res: VerifyResult) -> None:
    """``_Walk.records``' sequential checks over the kept rows: the current key, rotations,
    each key run's vouching (and its last signature in fast mode), anchored hashes."""
    trusted, anchor_seqs, full = walk.trusted, walk.anchor_seqs, walk.all_signatures
    current: str | None = None
    unsigned_from = last = last_key = None
    for row in kept:
        seq, type_, chain, signature, key_id = row[0], row[5], row[8], row[9], row[10]
        if key_id != last_key and last is not None:
            walk._run_end(last, unsigned_from, res)
        if key_id != current and (current is not None or key_id not in trusted):
            raise _Bad(seq, "inserted", f"signed by key {key_id}, not the trusted current key")
        anchored = seq in anchor_seqs
        rotation = type_ == ROTATION_EVENT
        if rotation or (signature and anchored and not full):  # the ranges checked the others
            _check_signature(AuditRecord._make(row), trusted, res)
        if signature or rotation or anchored:
            unsigned_from = None
        elif unsigned_from is None:
            unsigned_from = seq
        current = _learn_rotation(AuditRecord._make(row), trusted) if rotation else key_id
        if anchored:
            walk.hash_at[seq] = chain
        last, last_key = row, key_id
    if last is not None:
        walk.expected, walk.prev, walk.unsigned_from, walk.last = last[0] + 1, last[8], unsigned_from, last


def candidate_keys(
    conn: sqlite3.Connection, public_keys: Mapping[str, Ed25519PublicKey]
) -> dict[str, bytes] | None:
    """Raw public key per key id a signature may be checked against: the given keys and the
    log's ``keys`` table (the writer adds a rotation's new key with its event), by the id each
    key hashes to. Candidates only: the trust walk decides when each is trusted, and a key
    missing here fails its range (the serial walk then decides). None when one key id has two
    keys (a mapping whose id is not its key's: the serial walk decides which one counts)."""
    out = {k: v.public_bytes_raw() for k, v in public_keys.items()}
    for (pem,) in conn.execute("SELECT public_pem FROM keys"):
        try:
            key = load_pem_public_key(str(pem).encode("ascii"))
        except (ValueError, TypeError):
            continue
        if not isinstance(key, Ed25519PublicKey):
            continue
        raw = key.public_bytes_raw()
        if out.setdefault(key_id_of(key), raw) != raw:
            return None
    return out


def _ranges(
    path: Path, bounds: list[tuple[int, int]], keys: dict[str, bytes], anchor_seqs: frozenset[int], full: bool
) -> list[tuple[int, Range | None]]:
    """Range 0 here, the others in a pool at once: each one's process id and facts (None: a
    problem); one None when the pool broke."""
    ctx = multiprocessing.get_context(start_method())
    if ctx.get_start_method() == "forkserver":  # the server imports these once, not each worker
        ctx.set_forkserver_preload(["__main__", __name__])
    rest = bounds[1:]
    try:
        with ProcessPoolExecutor(len(rest), mp_context=ctx) as pool:
            futures = [pool.submit(verify_range, str(path), b, False, keys, anchor_seqs, full) for b in rest]
            mine = verify_range(str(path), bounds[0], True, keys, anchor_seqs, full)
            return [mine] + [f.result() for f in futures]
    except (BrokenProcessPool, OSError):
        return [(os.getpid(), None)]


def _stitched(parts: Sequence[Range | None], start_hash: str) -> list[Range] | None:
    """The ranges when each is intact and each starts where the one before ends."""
    prev, out = start_hash, []
    for part in parts:
        if part is None or part.first_prev != prev:
            return None
        out.append(part)
        prev = part.last_chain
    return out


def verify_split(
    records: Iterable[Row],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    conn: sqlite3.Connection,
    path: Path,
    jobs: int,
    forced: bool,
    **kwargs: Any,
) -> VerifyResult:
    """``verify_records`` (same keyword arguments) over the log at ``path`` in ``jobs``
    processes when it has at least ``PARALLEL_MIN_EVENTS`` events (any size when ``forced``);
    ``records`` (rows of ``conn``'s snapshot) go through the serial walk when the log is
    smaller, or when the parallel pass finds anything wrong (it names the first problem)."""
    start_seq, start_hash = kwargs.get("start_seq", 1), kwargs.get("start_hash", GENESIS_HASH)
    (head,) = conn.execute("SELECT max(seq) FROM events").fetchone()  # (count(*) reads every row)
    seqs = (head or 0) - start_seq + 1
    least = PARALLEL_MIN_EVENTS if start_method() == "fork" else FORKSERVER_MIN_EVENTS
    n = min(jobs if forced or seqs >= least else 1, seqs)  # every range at least one seq
    keys = candidate_keys(conn, public_keys) if n > 1 else None
    if keys is None:
        return verify_records(records, public_keys, **kwargs)
    anchors = kwargs.get("anchors", ())
    full = kwargs.get("all_signatures", True)
    parts = _ranges(path, seq_ranges(start_seq, head, n), keys, frozenset(a.seq for a in anchors), full)
    pids = tuple(pid for pid, _ in parts)
    ranges = _stitched([part for _, part in parts], start_hash)
    res = None if ranges is None else _joined(ranges, public_keys, kwargs)
    if res is None or res.problem is not None:
        res = verify_records(records, public_keys, **kwargs)
    res.worker_pids = pids
    return res


def _joined(
    ranges: list[Range], public_keys: Mapping[str, Ed25519PublicKey], kwargs: dict[str, Any]
) -> VerifyResult:
    """The trust walk and the end checks over the stitched ranges."""
    anchors = kwargs.get("anchors", ())
    start = (kwargs.get("start_seq", 1), kwargs.get("start_hash", GENESIS_HASH))
    walk = _Walk(
        dict(public_keys),
        {a.seq for a in anchors},
        kwargs.get("all_signatures", True),
        start,
        (_never, _never),
    )
    walk.events = sum(r.count for r in ranges)

    def body(res: VerifyResult) -> None:
        res.signatures_checked += sum(r.signatures for r in ranges)
        _trust_walk(walk, (row for r in ranges for row in r.kept), res)

    return _finish(walk, body, anchors, kwargs.get("require_anchor", False), kwargs.get("vouched_tail"))


def _never(_: object) -> bool:
    return False
