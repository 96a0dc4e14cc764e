"""Verifying what retention left (``gateway.audit.retention``): the live chain from its signed
hand-off, each sealed segment on its own, and the archive joined up from seq 1 to the
hand-off; and reading the archive back (``--archived`` queries, a checkpoint it proves)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import store
from gateway.audit.record import AuditRecord
from gateway.audit.retention import (
    HANDOFF_PREFIX,
    SEGMENT_PREFIX,
    Handoff,
    Seal,
    iter_archived,
    read_handoff,
    seal_path,
    segments,
    signature_ok,
)
from gateway.audit.verify import Problem, VerifyResult, read_jsonl, verify_records


def verify_live(
    conn: sqlite3.Connection,
    records: Iterable[Sequence[Any]],
    keys: Mapping[str, Ed25519PublicKey],
    verifier: Callable[..., VerifyResult] = verify_records,
    **kwargs: Any,
) -> VerifyResult:
    """The live chain from its hand-off (or from seq 1 when it has none); ``records`` are
    ``AuditRecord``s or rows in ``store.COLUMNS`` order; ``verifier``: ``verify_records`` or
    one with its arguments (``verify_split.verify_split``)."""
    try:
        h = read_handoff(conn)
    except (ValueError, json.JSONDecodeError) as e:
        return VerifyResult(ok=False, problem=Problem(1, "changed", f"the hand-off record is malformed: {e}"))
    if h is None:
        return verifier(records, keys, **kwargs)
    if not signature_ok(HANDOFF_PREFIX, asdict(h), keys):
        return VerifyResult(
            ok=False,
            problem=Problem(
                h.seq + 1, "changed", "the hand-off record is not validly signed by a trusted key"
            ),
        )
    # anchors the hand-off covers were checked when their events were live; they belong to the archive now
    kwargs["anchors"] = [a for a in kwargs.get("anchors", ()) if a.seq > h.seq]
    return verifier(records, keys, start_seq=h.seq + 1, start_hash=h.chain_hash, **kwargs)


def verify_segment(path: Path, keys: Mapping[str, Ed25519PublicKey]) -> VerifyResult:
    """One archived segment on its own: seal, digest, and every record from the seal's start."""
    try:
        doc = json.loads(seal_path(path).read_text(encoding="utf-8"))
        seal = Seal.from_dict(doc)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        return VerifyResult(
            ok=False, problem=Problem(0, "changed", f"{path.name}: seal missing or malformed: {e}")
        )
    if not signature_ok(SEGMENT_PREFIX, doc, keys):
        return VerifyResult(
            ok=False,
            problem=Problem(
                seal.first_seq, "changed", f"{path.name}: the seal is not validly signed by a trusted key"
            ),
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        return VerifyResult(ok=False, problem=Problem(seal.first_seq, "removed", f"{path.name}: {e}"))
    records = []
    for n, line in enumerate(data.splitlines(), 1):
        try:
            records.append(AuditRecord.from_dict(json.loads(line)))
        except (ValueError, json.JSONDecodeError) as e:
            seq = records[-1].seq + 1 if records else seal.first_seq
            return VerifyResult(
                ok=False, problem=Problem(seq, "changed", f"line {n} is not a valid record: {e}")
            )
    hashes = {r.chain_hash for r in records}
    positions = {r.seq for r in records}
    # the seal (signature checked above) vouches for its last hash: the segment may end unsigned
    res = verify_records(
        records,
        keys,
        start_seq=seal.first_seq,
        start_hash=seal.prev_hash,
        hash_elsewhere=hashes.__contains__,
        seq_elsewhere=positions.__contains__,
        vouched_tail=seal.last_hash,
    )
    if res.problem is not None:
        return res
    if res.last_seq != seal.last_seq or res.head_hash != seal.last_hash or res.events != seal.count:
        res.ok, res.problem = (
            False,
            Problem(
                res.last_seq + 1,
                "truncated",
                f"{path.name}: ends at seq {res.last_seq}; its seal says {seal.last_seq}",
            ),
        )
    elif hashlib.sha256(data).hexdigest() != seal.sha256:
        # every record verifies, but the bytes are not the sealed ones (re-serialised, lines added...)
        res.ok, res.problem = (
            False,
            Problem(seal.first_seq, "changed", f"{path.name}: digest differs from its seal"),
        )
    return res


def verify_archives(
    folder: Path, log_name: str, handoff: Handoff | None, keys: Mapping[str, Ed25519PublicKey]
) -> VerifyResult:
    """Every segment of ``log_name``, and that they join up from seq 1 to the hand-off."""
    total = VerifyResult(ok=True)
    expected, prev = 1, None
    for seal, path in segments(folder, log_name):
        res = verify_segment(path, keys)
        if res.problem is not None:
            return res
        assert seal is not None  # verify_segment read it
        if seal.first_seq != expected or (prev is not None and seal.prev_hash != prev):
            return _gap(
                expected, f"{path.name} starts at seq {seal.first_seq}; seq {expected} was expected next"
            )
        total.events += res.events
        total.signatures_checked += res.signatures_checked
        expected, prev = seal.last_seq + 1, seal.last_hash
    total.last_seq, total.head_hash = expected - 1, prev or total.head_hash
    if (
        handoff is not None
        and handoff.mode == "archive"
        and (handoff.seq != expected - 1 or (prev is not None and handoff.chain_hash != prev))
    ):
        return _gap(
            expected,
            f"the archive ends at seq {expected - 1}; the live chain's hand-off is at seq {handoff.seq}",
        )
    return total


def _gap(seq: int, message: str) -> VerifyResult:
    return VerifyResult(ok=False, problem=Problem(seq, "removed", message))


def archived_connection(folder: Path, log_name: str) -> sqlite3.Connection:
    """An in-memory database of every archived record of ``log_name`` (query/export ``--archived``
    run the same SQL over it as over the live log)."""
    conn = sqlite3.connect(":memory:")
    conn.executescript(store.SCHEMA)
    conn.execute(store.TS_INDEX)  # archived records may come from a log whose clock stepped back
    rows = (store.record_to_row(r) for r in iter_archived(folder, log_name))
    conn.executemany(store.INSERT, rows)
    return conn


def proves_checkpoint(
    conn: sqlite3.Connection,
    anchor: store.Anchor,
    folder: Path,
    log_name: str,
    keys: Mapping[str, Ed25519PublicKey],
) -> bool:
    """Whether an exported checkpoint no longer in the live log was archived by this log's own
    retention: the live chain's signed hand-off is at its seq with its hash, or the archive
    (every segment verified and joined up to that hand-off) holds its seq with its hash."""
    try:
        h = read_handoff(conn)
    except (ValueError, json.JSONDecodeError):
        return False
    if h is None or anchor.seq > h.seq or not signature_ok(HANDOFF_PREFIX, asdict(h), keys):
        return False
    # the hand-off belongs to this chain: its first live record follows it
    first = conn.execute("SELECT prev_hash FROM events WHERE seq = ?", (h.seq + 1,)).fetchone()
    if first is None or first[0] != h.chain_hash:
        return False
    if h.seq == anchor.seq:
        return h.chain_hash == anchor.chain_hash
    if verify_archives(folder, log_name, h, keys).problem is not None:
        return False
    for seal, path in segments(folder, log_name):
        if seal is not None and seal.first_seq <= anchor.seq <= seal.last_seq:
            return any(r.seq == anchor.seq and r.chain_hash == anchor.chain_hash for r in read_jsonl(path))
    return False
