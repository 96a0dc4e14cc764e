"""Verify an audit log (SQLite) or a JSONL export: every link, hash, signature and anchor.

The functions RETURN a ``VerifyResult``; ``result.check()`` raises ``AuditIntegrityError``
(an ``AuditError``) naming the first bad sequence number and what is wrong:

* ``changed``   a record's content no longer hashes to its chain hash, or its signature fails
* ``removed``   a sequence number is missing, or a record follows a hash no record has
* ``inserted``  a record is signed by a key the verifier does not trust (or not the current key)
* ``reordered`` a genuine record sits in the wrong place
* ``truncated`` the log ends before a signed anchor's head (or its anchor is gone)
* ``anchor``    an anchor's signature is invalid or its head hash is not in the log

Trust starts from the public keys the verifier passes in; an ``audit.key_rotated`` event,
signed by the current key and carrying a proof signed by the new key, hands trust on.

The writer commits every group commit under a signed anchor of its head (as Certificate
Transparency signs tree heads) and signs a head record itself when idle, flushed or closed and
once per ``checkpoint_every`` events; the other records carry an empty signature and are
vouched for by the next signature or anchor: every unsigned record must be followed, within
its key's run, by a signed record, an anchor at or after it, or (``vouched_tail``) a head hash
another checked signature covers; a log that ends on unsigned records is ``truncated``.

``all_signatures=False`` (fast mode) still recomputes every content hash and link and checks
every key id, but verifies Ed25519 signatures only where trust is decided: rotation events,
the last record of each key's run, the head and every anchored record. By SHA-256's second-
preimage resistance a valid signature on chain hash N vouches for records 1..N; what fast
mode does not notice is a damaged signature on an otherwise intact record (that line of an
export would then not verify on its own). Any problem found in fast mode is re-checked in
full so the FIRST bad sequence number is reported.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from hashlib import sha256
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from orjson import JSONDecodeError, loads

from gateway.audit import store
from gateway.audit.record import (
    CHAIN_PREFIX,
    GENESIS_HASH,
    ROTATION_EVENT,
    AuditRecord,
    anchor_message,
    chain_hash,
    is_json_object,
    key_id_of,
    rotation_message,
    spliced_bytes,
    verify_hash_signature,
)
from gateway.errors import AuditIntegrityError


@dataclass(frozen=True)
class Problem:
    """The first thing wrong with a log."""

    seq: int
    kind: str  # changed | removed | inserted | reordered | truncated | anchor (--shared: also
    # registration | unregistered | missing, gateway.state.audit_roster)
    message: str


@dataclass
class VerifyResult:
    ok: bool
    events: int = 0
    last_seq: int = 0
    head_hash: str = GENESIS_HASH
    signatures_checked: int = 0
    key_ids: list[str] = field(default_factory=list)
    anchors_checked: int = 0
    problem: Problem | None = None
    anchored: bool = False  # trust came from a pinned key or the verifier's own key copy
    worker_pids: tuple[int, ...] = ()  # the processes that verified ranges of the log (jobs > 1)

    def check(self) -> VerifyResult:
        """Return self when intact; raise ``AuditIntegrityError`` otherwise."""
        if self.problem is not None:
            raise AuditIntegrityError(self.problem)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "signatures_checked": self.signatures_checked,
            "key_ids": self.key_ids,
            "anchors_checked": self.anchors_checked,
            "anchored": self.anchored,
            "problem": None if self.problem is None else vars(self.problem),
            "worker_pids": list(self.worker_pids),
        }


class _Bad(Exception):
    def __init__(self, seq: int, kind: str, message: str) -> None:
        self.problem = Problem(seq, kind, message)


def verify_records(
    records: Iterable[Sequence[Any]],
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    anchors: Sequence[store.Anchor] = (),
    require_anchor: bool = False,
    all_signatures: bool = True,
    hash_elsewhere: Callable[[str], bool] = lambda h: False,
    seq_elsewhere: Callable[[int], bool] = lambda s: False,
    start_seq: int = 1,
    start_hash: str = GENESIS_HASH,
    vouched_tail: str | None = None,
) -> VerifyResult:
    """Verify records (``AuditRecord``s, or rows in ``store.COLUMNS`` order) in stored order.
    The two callbacks tell a reordering from a removal.

    ``start_seq`` / ``start_hash``: where the records must begin (a chain after a retention
    hand-off, or an archived segment, starts after seq 1). ``vouched_tail``: a chain hash an
    already-checked signature covers (an archive seal's last hash): unsigned records ending
    there are vouched for (the caller still checks the records end at that hash).
    """
    elsewhere = (hash_elsewhere, seq_elsewhere)
    walk = _Walk(
        dict(public_keys), {a.seq for a in anchors}, all_signatures, (start_seq, start_hash), elsewhere
    )
    return _finish(walk, lambda res: walk.records(records, res), anchors, require_anchor, vouched_tail)


def _finish(
    walk: _Walk,
    body: Callable[[VerifyResult], None],
    anchors: Sequence[store.Anchor],
    require_anchor: bool,
    vouched_tail: str | None,
) -> VerifyResult:
    """Walk the records (``body``), then the tail, the anchors and the head: the result."""
    res = VerifyResult(ok=False)
    try:
        body(res)
        walk.end(res, vouched_tail)
        res.last_seq, res.head_hash = walk.expected - 1, walk.prev
        if require_anchor and walk.last is not None and not anchors:
            raise _Bad(walk.expected, "truncated", "the log's signed head anchor is missing")
        for a in anchors:
            _check_anchor(a, walk.trusted, res.last_seq, walk.hash_at)
            res.anchors_checked += 1
    except _Bad as bad:
        res.problem = bad.problem
    except (ValueError, TypeError) as e:  # unparseable details, bad hex...
        res.problem = Problem(walk.expected, "changed", f"record cannot be parsed: {e}")
    res.events = walk.events
    if res.problem is not None:
        res.last_seq, res.head_hash = walk.expected - 1, walk.prev
        return res
    res.key_ids = sorted(walk.trusted)
    res.ok = True
    return res


# distinct principals, agents, types and key ids whose JSON text the walk keeps
_ESCAPES_KEPT = 4096


def _escaped(cache: dict[str, str], value: str) -> str:
    """A miss in the walk's cache: ``value`` as a JSON string (TypeError when not a str)."""
    if len(cache) >= _ESCAPES_KEPT:
        cache.clear()
    text = cache[value] = encode_basestring(value)
    return text


class _Walk:
    """The chain walked so far, kept for the end checks and for a problem's report."""

    def __init__(
        self,
        trusted: dict[str, Ed25519PublicKey],
        anchor_seqs: set[int],
        full: bool,
        start: tuple[int, str],
        elsewhere: tuple[Callable[[str], bool], Callable[[int], bool]],
    ) -> None:
        self.trusted, self.anchor_seqs, self.all_signatures = trusted, anchor_seqs, full
        self.expected, self.prev = start
        self.hash_elsewhere, self.seq_elsewhere = elsewhere  # tell a reordering from a removal
        self.hash_at: dict[int, str] = {}  # chain hash at each anchored seq
        self.last: Sequence[Any] | None = None  # the last record that passed
        self.unsigned_from: int | None = None  # first of the unsigned records no signature vouches for yet
        self.events = 0

    def records(self, records: Iterable[Sequence[Any]], res: VerifyResult) -> None:
        """Every record's position, content hash, key and signature, in one loop over plain
        tuples: what repeats (key id, principal, agent, type) is escaped once, the hash state
        after the domain prefix is copied, and an ``AuditRecord`` is built only to report."""
        trusted, full = self.trusted, self.all_signatures
        anchor_seqs, hash_at = self.anchor_seqs, self.hash_at
        expected, prev = self.expected, self.prev
        current: str | None = None  # the key that must sign the next record
        unsigned_from = last = last_key = None
        prefixed, esc, cache = sha256(CHAIN_PREFIX), encode_basestring, dict[str, str]()
        prev_raw, prev_j, n = b"", "", 0  # the first record's are made from ``prev`` when it is hashed
        try:
            for row in records:
                seq, id_, ts_ns, principal, agent, type_, details, prev_hash, chain, signature, key_id = row
                if key_id != last_key and last is not None:  # end of a key's run: its last record signed
                    self._run_end(last, unsigned_from, res)
                if seq != expected or prev_hash != prev:
                    _check_position(
                        AuditRecord._make(row), expected, prev, self.hash_elsewhere, self.seq_elsewhere
                    )
                try:  # is_json_object's orjson parse, inline (a call less per record)
                    whole = type(loads(details)) is dict
                except JSONDecodeError:  # NaN, a lone surrogate escape...: json.loads decides
                    whole = is_json_object(details)
                if not whole:
                    raise ValueError("details is not a JSON object")
                h = prefixed.copy()
                h.update(prev_raw or bytes.fromhex(prev))
                aj = "null" if agent is None else cache.get(agent) or _escaped(cache, agent)
                pj = "null" if principal is None else cache.get(principal) or _escaped(cache, principal)
                kj = cache.get(key_id) or _escaped(cache, key_id)
                tj = cache.get(type_) or _escaped(cache, type_)
                h.update(spliced_bytes(aj, details, esc(id_), kj, prev_j or esc(prev), pj, seq, ts_ns, tj))
                raw = h.digest()
                if raw.hex() != chain:
                    raise _Bad(seq, "changed", "content does not match its chain hash")
                if key_id != current and (current is not None or key_id not in trusted):
                    raise _Bad(seq, "inserted", f"signed by key {key_id}, not the trusted current key")
                anchored = seq in anchor_seqs  # the anchor's signature vouches (checked at the end)
                rotation = type_ == ROTATION_EVENT  # a rotation is always signed
                if (signature or rotation) and (full or anchored or rotation):
                    _check_signature(AuditRecord._make(row), trusted, res)
                if signature or rotation or anchored:
                    unsigned_from = None
                elif unsigned_from is None:
                    unsigned_from = seq
                current = _learn_rotation(AuditRecord._make(row), trusted) if rotation else key_id
                if anchored:
                    hash_at[seq] = chain
                n += 1
                expected, prev, prev_raw, prev_j = seq + 1, chain, raw, f'"{chain}"'
                last, last_key = row, key_id
        finally:  # where the walk stopped: the end checks and a problem's report start there
            self.expected, self.prev, self.unsigned_from, self.last = expected, prev, unsigned_from, last
            self.events += n

    def _run_end(self, last: Sequence[Any], unsigned_from: int | None, res: VerifyResult) -> None:
        """A key's run ended at ``last``: its unsigned records were vouched for, and in fast
        mode its last record's signature (where trust passes on) is checked."""
        _check_vouched(unsigned_from, last[0])
        if not self.all_signatures:
            _check_signature(AuditRecord._make(last), self.trusted, res)

    def end(self, res: VerifyResult, vouched_tail: str | None) -> None:
        """The records ended: the tail is signed, anchored or vouched for by the caller."""
        last = self.last
        if last is None or last[0] in self.anchor_seqs or last[8] == vouched_tail:
            return
        _check_vouched(self.unsigned_from, last[0], end=True)
        if not self.all_signatures and last[5] != ROTATION_EVENT:
            _check_signature(AuditRecord._make(last), self.trusted, res)


def _check_position(
    rec: AuditRecord,
    expected: int,
    prev: str,
    hash_elsewhere: Callable[[str], bool],
    seq_elsewhere: Callable[[int], bool],
) -> None:
    if rec.seq != expected:
        if seq_elsewhere(expected) or rec.seq < expected:
            raise _Bad(expected, "reordered", f"found seq {rec.seq} where seq {expected} belongs")
        raise _Bad(expected, "removed", f"seq {expected}..{rec.seq - 1} missing")
    if rec.prev_hash != prev:
        if hash_elsewhere(rec.prev_hash):
            raise _Bad(rec.seq, "reordered", "record belongs after another record of the log")
        if chain_hash(rec.prev_hash, rec.canonical()) != rec.chain_hash:
            raise _Bad(rec.seq, "changed", "content does not match its chain hash")
        raise _Bad(rec.seq, "removed", "the record it follows is missing")


def _check_vouched(unsigned_from: int | None, last_seq: int, *, end: bool = False) -> None:
    """Unsigned records must be followed by a signature of their key before the run ends."""
    if unsigned_from is None:
        return
    where = "the log ends" if end else "its key's run ends"
    raise _Bad(
        unsigned_from,
        "truncated",
        f"records {unsigned_from}..{last_seq} are unsigned and {where} before a signature vouches for them",
    )


def _check_signature(rec: AuditRecord, trusted: Mapping[str, Ed25519PublicKey], res: VerifyResult) -> None:
    key = trusted.get(rec.key_id)
    if key is None:
        raise _Bad(rec.seq, "inserted", f"signed by untrusted key {rec.key_id}")
    res.signatures_checked += 1
    if not verify_hash_signature(key, rec.chain_hash, rec.signature):
        raise _Bad(rec.seq, "changed", "signature does not verify")


def _learn_rotation(rec: AuditRecord, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Trust the key an (already signature-checked) rotation event hands over to."""
    d = rec.details
    try:
        new_key = load_pem_public_key(str(d["new_public_key"]).encode("ascii"))
        if not isinstance(new_key, Ed25519PublicKey) or key_id_of(new_key) != d["new_key_id"]:
            raise ValueError("new key does not match new_key_id")
        if d["old_key_id"] != rec.key_id:
            raise ValueError("old_key_id is not the key that signed the rotation")
        new_key.verify(
            base64.b64decode(d["proof"], validate=True), rotation_message(rec.key_id, d["new_key_id"])
        )
    except (KeyError, ValueError, TypeError, InvalidSignature, binascii.Error) as e:
        raise _Bad(rec.seq, "changed", f"key rotation event is invalid: {e}") from None
    trusted[d["new_key_id"]] = new_key
    return str(d["new_key_id"])


def _check_anchor(
    a: store.Anchor, trusted: Mapping[str, Ed25519PublicKey], last_seq: int, hash_at: Mapping[int, str]
) -> None:
    key = trusted.get(a.key_id)
    try:
        if key is None:
            raise InvalidSignature
        key.verify(base64.b64decode(a.signature, validate=True), anchor_message(a.seq, a.chain_hash))
    except (InvalidSignature, binascii.Error, ValueError):
        raise _Bad(
            min(a.seq, last_seq + 1), "anchor", f"anchor for seq {a.seq} is not validly signed"
        ) from None
    if a.seq > last_seq:
        raise _Bad(
            last_seq + 1, "truncated", f"log ends at seq {last_seq}; a signed anchor records seq {a.seq}"
        )
    if a.seq > 0 and hash_at.get(a.seq) != a.chain_hash:
        raise _Bad(a.seq, "anchor", "the anchored head hash differs from the log's chain hash there")


def verify_log(
    path: Path,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    checkpoint: Path | None = None,
    extra_anchors: Sequence[store.Anchor] = (),
    all_signatures: bool = True,
    jobs: int | None = None,
) -> VerifyResult:
    """Verify the SQLite log at ``path`` with its in-database anchor and checkpoint file.

    ``checkpoint`` defaults to ``<log>.anchor.json`` when present; ``extra_anchors`` are ones
    kept elsewhere (e.g. shipped off the host), which is what defeats a full rollback.
    ``jobs``: processes to verify in (``gateway.audit.verify_split``); 1 is the serial walk,
    N > 1 splits the log over N processes whatever its size, None (the default) uses this
    machine's cores once the log has ``verify_split.PARALLEL_MIN_EVENTS`` events.

    Raises:
        AuditError: the log cannot be read (a missing log is not "intact").
        ConfigError: ``jobs`` is not a whole number of at least 1.
    """
    from gateway.audit import verify_split as split  # (both build on this module)

    n = split.job_count(jobs)
    conn = store.open_reader(path)
    try:
        # one snapshot for the anchor and the records: the writer stores a head's signature with
        # the next commit, which also moves the anchor past it (a later snapshot's records with
        # this one's anchor could end on an unsigned head no anchor covers)
        conn.execute("BEGIN")
        anchors = _anchors(conn, checkpoint or store.checkpoint_path(path), extra_anchors)
        first = verify_records
        if n > 1:
            first = partial(split.verify_split, conn=conn, path=path, jobs=n, forced=jobs is not None)
        res = _walk(conn, public_keys, anchors, all_signatures, first)
        if res.problem is None or all_signatures:
            return res
        again = _walk(conn, public_keys, anchors, True, verify_records)  # fast mode's problem, named in full
        again.worker_pids = res.worker_pids
        return again
    finally:
        conn.close()


def _walk(
    conn: sqlite3.Connection,
    public_keys: Mapping[str, Ed25519PublicKey],
    anchors: list[store.Anchor],
    full: bool,
    verifier: Callable[..., VerifyResult],
) -> VerifyResult:
    """One walk of the snapshot ``conn`` holds: from the retention hand-off when old events were
    archived, else from seq 1."""
    from gateway.audit.archives import verify_live

    def hash_elsewhere(h: str) -> bool:
        return conn.execute("SELECT 1 FROM events WHERE chain_hash = ? LIMIT 1", (h,)).fetchone() is not None

    return verify_live(
        conn,
        _rows(conn),
        public_keys,
        anchors=anchors,
        require_anchor=True,
        all_signatures=full,
        hash_elsewhere=hash_elsewhere,
        verifier=verifier,
    )


def _rows(conn: sqlite3.Connection) -> Iterable[tuple[Any, ...]]:
    """Every row of the log as a plain tuple (``store.COLUMNS``), in seq order: all of them, so a
    row added at seq 0 or below (outside the chain, where ``audit query`` still shows it) fails."""
    return conn.execute(f"SELECT {store.COLUMNS} FROM events ORDER BY seq")


def _anchors(conn: Any, checkpoint: Path, extra: Sequence[store.Anchor]) -> list[store.Anchor]:
    out = list(extra)
    db_anchor = store.read_anchor(conn)
    if db_anchor is not None:
        out.append(db_anchor)
    try:
        cp = store.read_checkpoint_file(checkpoint)
    except (ValueError, json.JSONDecodeError):
        cp = store.Anchor(seq=0, chain_hash="", ts_ns=0, key_id="", signature="")  # fails its signature
    if cp is not None:
        out.append(cp)
    return out


def read_jsonl(path: Path) -> list[AuditRecord]:
    """Records of a JSONL export; raises AuditIntegrityError naming the bad line's seq."""
    records: list[AuditRecord] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(AuditRecord.from_dict(json.loads(line)))
            except (ValueError, json.JSONDecodeError) as e:
                seq = records[-1].seq + 1 if records else 1
                raise AuditIntegrityError(
                    Problem(seq, "changed", f"line {n} is not a valid record: {e}")
                ) from None
    return records


def verify_jsonl(
    path: Path,
    public_keys: Mapping[str, Ed25519PublicKey],
    *,
    anchors: Sequence[store.Anchor] = (),
    all_signatures: bool = True,
) -> VerifyResult:
    """Verify a JSONL export as one chain starting at seq 1 (read into memory)."""
    try:
        records = read_jsonl(path)
    except AuditIntegrityError as e:
        return VerifyResult(ok=False, problem=e.problem)
    hashes = {r.chain_hash for r in records}
    seqs = [r.seq for r in records]
    positions = {s: i for i, s in enumerate(seqs)}

    def seq_elsewhere(s: int) -> bool:
        return s in positions

    return verify_records(
        records,
        public_keys,
        anchors=anchors,
        all_signatures=all_signatures,
        hash_elsewhere=hashes.__contains__,
        seq_elsewhere=seq_elsewhere,
    )
