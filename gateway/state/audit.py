"""The audit chains of every replica, shipped to PostgreSQL and verified there.

Each replica writes its own chain to its data dir's SQLite (one writer per hash chain; an
event is acknowledged once that commit is durable: ``gateway/audit/store.py``). With
``[state] postgres_url`` a background task copies every committed record, unchanged and
still signed, into ``symbi_audit_events`` under its chain's id (the chain hash of its first
record), with the chain's signed head anchor and its public keys. ``symbi audit verify
--shared`` then checks each chain on its own (links, hashes, signatures, the anchor: a
changed, removed or inserted row in PostgreSQL is found) and reports all of them together.

The copy never stands in for the local log: a replica killed before its last records were
shipped ships them when it starts again on the same data dir.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.audit import store
from gateway.audit.record import GENESIS_HASH, AuditRecord, key_id_of
from gateway.audit.retention import HANDOFF_PREFIX, Handoff, read_handoff, signature_ok
from gateway.audit.verify import Problem, VerifyResult, verify_records
from gateway.errors import AuditError, StateUnavailable
from gateway.state.postgres import Postgres

_logger = logging.getLogger("symbi.state.audit")

BATCH = 2000  # records per transaction


@dataclass(frozen=True)
class SharedChain:
    chain: str
    replica: str
    start_seq: int
    start_hash: str
    anchor: store.Anchor | None
    start_handoff: str | None = None  # the signed hand-off (JSON) a chain after seq 1 starts from


class AuditShipper:
    """Copies one replica's chain (its ``AuditLog`` file) to PostgreSQL, from where it left off."""

    def __init__(self, pg: Postgres, log_path: Path, *, replica: str | None = None) -> None:
        self._pg = pg
        self.log_path = log_path
        self.replica = replica or f"{socket.gethostname()}:{log_path}"
        self._chain: str | None = None
        self._shipped = 0  # the last seq known to be in PostgreSQL

    def ship(self) -> int:
        """Copy the committed records PostgreSQL lacks; returns how many (blocking: a thread)."""
        try:
            conn = store.open_reader(self.log_path)
        except AuditError:
            return 0  # no event committed yet
        try:
            return self._ship(conn)
        except sqlite3.Error as e:
            raise AuditError(f"cannot read audit log {self.log_path}: {e}") from None
        finally:
            conn.close()

    def _ship(self, conn: sqlite3.Connection) -> int:
        # the anchor and the records from one snapshot: the head the anchor names is in it (the
        # writer stores a head's signature one commit later; until then the anchor vouches for it)
        conn.execute("BEGIN")
        anchor = store.read_anchor(conn)
        if self._chain is None:
            first = next(store.iter_records(conn, chunk=1), None)
            if first is None:
                return 0
            self._register(conn, first)
        assert self._chain is not None
        sent = 0
        while True:
            batch = list(_take(store.iter_records(conn, after_seq=self._shipped, chunk=BATCH), BATCH))
            if not batch:
                break
            with self._pg.cursor(transaction=True) as cur:
                cur.executemany(
                    f"INSERT INTO symbi_audit_events (chain, {store.COLUMNS}) VALUES"
                    " (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (chain, seq) DO NOTHING",
                    [(self._chain, *store.record_to_row(r)) for r in batch],
                )
            self._shipped = batch[-1].seq
            sent += len(batch)
        if anchor is not None and anchor.seq <= self._shipped:
            with self._pg.cursor() as cur:
                cur.execute(
                    "UPDATE symbi_audit_chains SET anchor_seq=%s, anchor_hash=%s, anchor_ts_ns=%s,"
                    " anchor_key_id=%s, anchor_signature=%s WHERE chain=%s AND coalesce(anchor_seq, 0) <= %s",
                    (
                        anchor.seq,
                        anchor.chain_hash,
                        anchor.ts_ns,
                        anchor.key_id,
                        anchor.signature,
                        self._chain,
                        anchor.seq,
                    ),
                )
        return sent

    def _register(self, conn: sqlite3.Connection, first: AuditRecord) -> None:
        chain = first.chain_hash
        keys = conn.execute("SELECT key_id, public_pem FROM keys").fetchall()
        handoff = read_handoff(conn) if first.seq > 1 else None  # what vouches for the start
        start = json.dumps(asdict(handoff), sort_keys=True) if handoff is not None else None
        with self._pg.cursor(transaction=True) as cur:
            cur.execute(
                "INSERT INTO symbi_audit_chains (chain, replica, start_seq, start_hash, created, start_handoff)"
                " VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (chain) DO NOTHING",
                (chain, self.replica, first.seq, first.prev_hash, time.time(), start),
            )
            cur.executemany(
                "INSERT INTO symbi_audit_keys (key_id, public_pem) VALUES (%s,%s) ON CONFLICT (key_id) DO NOTHING",
                [(str(k), str(pem)) for k, pem in keys],
            )
            cur.execute("SELECT coalesce(max(seq), 0) FROM symbi_audit_events WHERE chain=%s", (chain,))
            row = cur.fetchone()
        self._chain, self._shipped = chain, int(row[0]) if row else 0

    async def run(self, interval_s: float) -> None:
        """Background task: ship every ``interval_s``; PostgreSQL down = retry (the local log
        keeps every event meanwhile); one last pass at shutdown."""
        down = False
        try:
            while True:
                try:
                    await anyio.to_thread.run_sync(self.ship)
                except (StateUnavailable, AuditError) as e:
                    if not down:
                        _logger.warning("audit shipping to PostgreSQL paused: %s", e.message)
                    down = True
                else:
                    if down:
                        _logger.info("audit shipping to PostgreSQL resumed")
                    down = False
                await anyio.sleep(interval_s)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await anyio.to_thread.run_sync(self.ship)
                except (StateUnavailable, AuditError) as e:
                    _logger.warning(
                        "audit: last records not shipped at shutdown (shipped at next start): %s", e
                    )


def _take(it: Iterator[AuditRecord], n: int) -> Iterator[AuditRecord]:
    for i, rec in enumerate(it):
        if i >= n:
            return
        yield rec


# -- verification (``symbi audit verify --shared``) --------------------------------------------


def shared_chains(pg: Postgres) -> list[SharedChain]:
    with pg.cursor() as cur:
        cur.execute(
            "SELECT chain, replica, start_seq, start_hash, anchor_seq, anchor_hash, anchor_ts_ns, anchor_key_id,"
            " anchor_signature, start_handoff FROM symbi_audit_chains ORDER BY created, chain"
        )
        rows = cur.fetchall()
    out = []
    for chain, replica, start_seq, start_hash, a_seq, a_hash, a_ts, a_kid, a_sig, handoff in rows:
        anchor = store.Anchor(int(a_seq), a_hash, int(a_ts), a_kid, a_sig) if a_seq is not None else None
        out.append(SharedChain(chain, replica, int(start_seq), start_hash, anchor, handoff))
    return out


def shared_keys(pg: Postgres) -> dict[str, Ed25519PublicKey]:
    """The public keys the replicas shipped (candidates only, never trusted as such)."""
    with pg.cursor() as cur:
        cur.execute("SELECT public_pem FROM symbi_audit_keys")
        rows = cur.fetchall()
    out: dict[str, Ed25519PublicKey] = {}
    for (pem,) in rows:
        try:
            key = load_pem_public_key(str(pem).encode("ascii"))
        except ValueError:
            continue  # a damaged key row: the chains it signed fail their own verification
        if isinstance(key, Ed25519PublicKey):
            out[key_id_of(key)] = key
    return out


def _records(pg: Postgres, chain: str) -> Iterator[AuditRecord]:
    with pg.cursor() as cur:
        cur.execute(f"SELECT {store.COLUMNS} FROM symbi_audit_events WHERE chain=%s ORDER BY seq", (chain,))
        while rows := cur.fetchmany(4096):
            for row in rows:
                yield store.row_to_record(tuple(row))


def verify_shared_chain(
    pg: Postgres, chain: SharedChain, keys: Mapping[str, Ed25519PublicKey], *, all_signatures: bool = True
) -> VerifyResult:
    """One replica's chain as PostgreSQL holds it: every link, hash and signature, from where
    it was registered to (at least) its last shipped signed anchor. It starts at seq 1, or where
    the replica's signed retention hand-off says its live chain went on (nothing else says no
    record before the start is missing: whoever can write PostgreSQL can move the start)."""
    why = _unvouched_start(chain, keys)
    if why is not None:
        return VerifyResult(ok=False, problem=Problem(1, "truncated", why))
    return verify_records(
        _records(pg, chain.chain),
        keys,
        anchors=[chain.anchor] if chain.anchor is not None else [],
        require_anchor=chain.anchor is not None,
        all_signatures=all_signatures,
        start_seq=chain.start_seq,
        start_hash=chain.start_hash,
    )


def _unvouched_start(chain: SharedChain, keys: Mapping[str, Ed25519PublicKey]) -> str | None:
    """Why the chain's start is not vouched for (None when it is seq 1 or a signed hand-off)."""
    if chain.start_seq == 1 and chain.start_hash == GENESIS_HASH:
        return None
    where = f"the chain starts at seq {chain.start_seq} in PostgreSQL"
    if chain.start_handoff is None:
        return f"{where} and no signed hand-off says the records before it were archived"
    try:
        doc = json.loads(chain.start_handoff)
        h = Handoff.from_dict(doc)
    except (ValueError, TypeError):
        return f"{where} and its hand-off is malformed"
    if not signature_ok(HANDOFF_PREFIX, asdict(h), keys):
        return f"{where} and its hand-off is not validly signed by a trusted key"
    if (h.seq + 1, h.chain_hash) != (chain.start_seq, chain.start_hash):
        return f"{where}, but its signed hand-off says the live chain went on after seq {h.seq}"
    return None
