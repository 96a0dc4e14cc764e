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
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from gateway.events import Event
from gateway.logs import Outage
from gateway.state.audit_roster import (
    Missing,
    Registration,
    Sign,
    missing_chains,
    register,
    registration_problem,
    roll_call,
    unheld_checkpoints,
)
from gateway.state.postgres import Postgres

_logger = logging.getLogger("symbi.state.audit")

BATCH = 2000  # records per transaction
ROLL_CALL_CHAINS = 200  # chain ids per roll call: its details stay under record.DETAILS_CHARS (never cut)


@dataclass(frozen=True)
class SharedChain:
    chain: str
    replica: str
    start_seq: int
    start_hash: str
    anchor: store.Anchor | None
    start_handoff: str | None = None  # the signed hand-off (JSON) a chain after seq 1 starts from
    registration: str | None = None  # the replica's signed registration (JSON, gateway.state.audit_roster)


class AuditShipper:
    """Copies one replica's chain (its ``AuditLog`` file) to PostgreSQL, from where it left off."""

    def __init__(
        self,
        pg: Postgres,
        log_path: Path,
        sign: Sign,
        *,
        replica: str | None = None,
        roll_call: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._pg = pg
        self.log_path = log_path
        self._sign = sign  # the replica's key: it signs the chain's registration
        self.replica = replica or replica_label(log_path)
        self._roll_call = roll_call  # records the other chains it saw in its own log
        self._named: set[str] = set()  # the chains its roll calls named since it started
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
        self._call_roll()
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
        """Go on with the chain PostgreSQL already holds this log's first record in (a restart,
        also after retention moved that record: one chain per log, so its pin or a later
        registration names it), else register a new one named after that record."""
        keys = conn.execute("SELECT key_id, public_pem FROM keys").fetchall()
        held = self._chain_holding(first)
        chain = held[0] if held is not None else first.chain_hash
        reg = None
        if held is None or (held[1] is None and held[2:] == (first.seq, first.prev_hash)):
            # new, or registered before migration 9 and starting where this log does: signed now
            reg = register(self._sign, chain, self.replica, first.seq, first.prev_hash, _chain_ids(self._pg))
        handoff = read_handoff(conn) if first.seq > 1 else None  # what vouches for the start
        start = json.dumps(asdict(handoff), sort_keys=True) if handoff is not None else None
        with self._pg.cursor(transaction=True) as cur:
            if reg is not None:
                cur.execute(
                    "INSERT INTO symbi_audit_chains (chain, replica, start_seq, start_hash, created,"
                    " start_handoff, registration) VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (chain) DO"
                    " UPDATE SET registration=excluded.registration, replica=excluded.replica"
                    " WHERE symbi_audit_chains.registration IS NULL AND symbi_audit_chains.start_seq=%s"
                    " AND symbi_audit_chains.start_hash=%s",
                    (chain, self.replica, first.seq, first.prev_hash, time.time(), start, reg.to_json())
                    + (first.seq, first.prev_hash),
                )
            cur.executemany(
                "INSERT INTO symbi_audit_keys (key_id, public_pem) VALUES (%s,%s) ON CONFLICT (key_id) DO NOTHING",
                [(str(k), str(pem)) for k, pem in keys],
            )
            cur.execute("SELECT coalesce(max(seq), 0) FROM symbi_audit_events WHERE chain=%s", (chain,))
            row = cur.fetchone()
        self._chain, self._shipped = chain, int(row[0]) if row else 0

    def _call_roll(self) -> None:
        """Name, in this replica's own chain, the chains PostgreSQL holds that it has not named
        since it started: a chain deleted after it was seen is then found by the verifier."""
        if self._roll_call is None:
            return
        new = set(_chain_ids(self._pg)) - self._named - {self._chain}
        named = sorted(new)
        for i in range(0, len(named), ROLL_CALL_CHAINS):
            self._roll_call(named[i : i + ROLL_CALL_CHAINS])
        self._named |= new

    def _chain_holding(self, first: AuditRecord) -> tuple[str, str | None, int, str] | None:
        """(chain, registration, start seq, start hash) of the newest chain holding ``first``."""
        with self._pg.cursor() as cur:
            cur.execute(
                "SELECT c.chain, c.registration, c.start_seq, c.start_hash FROM symbi_audit_chains c"
                " JOIN symbi_audit_events e ON e.chain = c.chain AND e.seq = %s WHERE e.chain_hash = %s"
                " ORDER BY c.created DESC LIMIT 1",
                (first.seq, first.chain_hash),
            )
            row = cur.fetchone()
        return (str(row[0]), row[1], int(row[2]), str(row[3])) if row else None

    async def run(self, interval_s: float) -> None:
        """Background task: ship every ``interval_s``; PostgreSQL down = retry (the local log
        keeps every event meanwhile); one last pass at shutdown."""
        outage = Outage(_logger, "audit shipping to PostgreSQL resumed")
        try:
            while True:
                try:
                    await anyio.to_thread.run_sync(self.ship)
                except (StateUnavailable, AuditError) as e:
                    outage.failed("audit shipping to PostgreSQL paused: %s", e.message)
                else:
                    outage.worked()
                await anyio.sleep(interval_s)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                try:
                    await anyio.to_thread.run_sync(self.ship)
                except (StateUnavailable, AuditError) as e:
                    _logger.warning(
                        "audit: last records not shipped at shutdown (shipped at next start): %s", e
                    )


def replica_label(log_path: Path) -> str:
    """A replica's label: the host and the log it ships (what its registration signs)."""
    return f"{socket.gethostname()}:{log_path}"


def _chain_ids(pg: Postgres) -> list[str]:
    with pg.cursor() as cur:
        cur.execute("SELECT chain FROM symbi_audit_chains")
        return [str(r[0]) for r in cur.fetchall()]


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
            " anchor_signature, start_handoff, registration FROM symbi_audit_chains ORDER BY created, chain"
        )
        rows = cur.fetchall()
    out = []
    for chain, replica, start_seq, start_hash, a_seq, a_hash, a_ts, a_kid, a_sig, handoff, reg in rows:
        anchor = store.Anchor(int(a_seq), a_hash, int(a_ts), a_kid, a_sig) if a_seq is not None else None
        out.append(SharedChain(chain, replica, int(start_seq), start_hash, anchor, handoff, reg))
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


@dataclass
class SharedVerdict:
    """Every chain's result, and the chains the roster names that PostgreSQL no longer holds."""

    chains: list[tuple[SharedChain, VerifyResult]]
    missing: list[Missing]

    @property
    def ok(self) -> bool:
        return bool(self.chains) and not self.missing and all(res.ok for _, res in self.chains)


def verify_every_chain(
    pg: Postgres,
    keys: Mapping[str, Ed25519PublicKey],
    roots: Iterable[str],
    *,
    all_signatures: bool = True,
    checkpoints: Mapping[str, store.Anchor] | None = None,
) -> SharedVerdict:
    """Each chain on its own, then the roster (``gateway.state.audit_roster``): the chains the
    verified registrations name, a chain for every root (pinned) key id, and a verified chain
    holding each exported ``checkpoints`` (source -> the newest of one log)."""
    candidates = shared_keys(pg)  # rotated-to keys a chain's own rotation vouches for
    chains = shared_chains(pg)
    results, regs, covered = [], [], set()
    for chain in chains:
        res, reg = verify_shared_chain(pg, chain, keys, candidates, all_signatures=all_signatures)
        results.append((chain, res))
        if reg is not None:
            regs.append(reg)
            covered |= {reg.key_id, *record_keys(pg, chain.chain)}

    calls = [call for c, res in results if res.ok for call in roll_calls(pg, c, res.last_seq)]

    verified = {c.chain: res.last_seq for c, res in results if res.ok}

    def held(a: store.Anchor) -> bool:
        # one query per checkpoint (on the primary key), not one per chain
        within = [c for c, last in verified.items() if 0 < a.seq <= last]
        return bool(within) and bool(_chains_holding(pg, within, a.seq, a.chain_hash))

    missing = missing_chains((c.chain for c in chains), regs, roots, covered, calls)
    return SharedVerdict(results, missing + unheld_checkpoints(checkpoints or {}, held))


def verify_shared_chain(
    pg: Postgres,
    chain: SharedChain,
    keys: Mapping[str, Ed25519PublicKey],
    candidates: Mapping[str, Ed25519PublicKey] | None = None,
    *,
    all_signatures: bool = True,
) -> tuple[VerifyResult, Registration | None]:
    """One replica's chain as PostgreSQL holds it, and its registration once all is well: every
    link, hash and signature, from where it was registered to its last shipped signed anchor.
    It starts at seq 1, or where the replica's signed retention hand-off says its live chain
    went on (nothing else says no record before the start is missing: whoever can write
    PostgreSQL can move the start), with the record it is named after; and the replica's
    signed registration says the same chain, label and start."""
    if chain.registration is None:  # first: an old chain's verdict names what to run
        problem, _ = registration_problem(None, chain.chain, chain.replica, (chain.start_seq, 0, ""), keys)
        return VerifyResult(ok=False, problem=problem), None
    res = verify_rows(pg, chain, keys, all_signatures=all_signatures)
    if not res.ok:
        return res, None
    trusted = {**{k: v for k, v in (candidates or {}).items() if k in res.key_ids}, **keys}
    start = (chain.start_seq, chain.start_seq, chain.start_hash)
    problem, reg = registration_problem(chain.registration, chain.chain, chain.replica, start, trusted)
    if problem is not None:
        res.ok, res.problem = False, problem
    return res, reg


def verify_rows(
    pg: Postgres, chain: SharedChain, keys: Mapping[str, Ed25519PublicKey], *, all_signatures: bool = True
) -> VerifyResult:
    """The chain's rows: a vouched start, the record it is named after, every link, hash and
    signature up to its signed head anchor (its registration aside)."""
    why = _unvouched_start(chain, keys)
    if why is None and _hash_at(pg, chain.chain, chain.start_seq) != chain.chain:
        why = f"the chain's first record (seq {chain.start_seq}), the one it is named after, is gone"
    if why is not None:
        return VerifyResult(ok=False, problem=Problem(chain.start_seq, "truncated", why))
    return verify_records(
        _records(pg, chain.chain),
        keys,
        anchors=[chain.anchor] if chain.anchor is not None else [],
        require_anchor=True,  # records and no signed head: the anchor row was emptied
        all_signatures=all_signatures,
        start_seq=chain.start_seq,
        start_hash=chain.start_hash,
    )


def roll_calls(pg: Postgres, chain: SharedChain, last_seq: int) -> list[tuple[str, list[str]]]:
    """The chains a verified chain's roll calls (``audit.shared_roster`` events, up to
    ``last_seq``) name, with what names them."""
    with pg.cursor() as cur:
        cur.execute(
            "SELECT seq, details FROM symbi_audit_events WHERE chain=%s AND type=%s AND seq<=%s ORDER BY seq",
            (chain.chain, Event.AUDIT_SHARED_ROSTER.value, last_seq),
        )
        rows = cur.fetchall()
    out = []
    for seq, details in rows:
        try:
            named = roll_call(json.loads(details))
        except ValueError:
            named = None
        if named:
            out.append((f"the roll call at seq {seq} of chain {chain.chain[:16]} ({chain.replica})", named))
    return out


def _chains_holding(pg: Postgres, chains: list[str], seq: int, chain_hash: str) -> list[str]:
    """Which of ``chains`` hold record ``seq`` with ``chain_hash``."""
    with pg.cursor() as cur:
        cur.execute(
            "SELECT chain FROM symbi_audit_events WHERE chain = ANY(%s) AND seq=%s AND chain_hash=%s",
            (chains, seq, chain_hash),
        )
        return [str(r[0]) for r in cur.fetchall()]


def _hash_at(pg: Postgres, chain: str, seq: int) -> str | None:
    with pg.cursor() as cur:
        cur.execute("SELECT chain_hash FROM symbi_audit_events WHERE chain=%s AND seq=%s", (chain, seq))
        row = cur.fetchone()
    return str(row[0]) if row else None


def record_keys(pg: Postgres, chain: str) -> list[str]:
    """The key ids a verified chain's records carry (each checked against its signature)."""
    with pg.cursor() as cur:
        cur.execute("SELECT DISTINCT key_id FROM symbi_audit_events WHERE chain=%s", (chain,))
        return [str(r[0]) for r in cur.fetchall()]


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
