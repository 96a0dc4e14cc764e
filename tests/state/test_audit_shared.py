"""Each replica's audit chain copied to a real PostgreSQL, and ``symbi audit verify --shared``.

Two real ``AuditLog`` writers stand for two replicas (their own data dirs and signing keys);
each ships its committed records with ``AuditShipper``. The verifier must pass both chains,
and find a changed, a removed and a cut-off row in PostgreSQL, naming the chain and the seq.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.audit.retention import RetentionPolicy, archive
from gateway.cli import main
from gateway.errors import StateUnavailable
from gateway.state.audit import AuditShipper, shared_chains
from gateway.state.audit_roster import log_signer
from gateway.state.postgres import Postgres
from tests.conftest import write_config
from tests.state.engines import Postgres as PgEngine


def _replica(folder: Path, n: int) -> AuditLog:
    log = AuditLog(folder / "audit.db", folder / "audit-key.pem", checkpoint_every=5, batch_max=4)
    for i in range(n):
        log.emit("tool.call", {"tool": "t__echo", "i": i}, principal=f"p{i % 3}")
    log.flush()
    return log


def _verify(
    config: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, list[dict[str, object]]]:
    capsys.readouterr()
    code = main(
        ["audit", "verify", "--config", str(config), "--shared", "--json", *extra]
    )  # the CLI, in-process
    out = capsys.readouterr().out
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _config(tmp_path: Path, engine: PgEngine, audit: str = "") -> Path:
    return write_config(
        tmp_path,
        f"""
        [gateway]
        data_dir = "{tmp_path / "cli-data"}"
        [audit]
        {audit}
        [state]
        postgres_url = "{engine.url}"
        """,
        name="cli.toml",
    )


def test_every_replica_chain_verifies_on_its_own_and_together(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _replica(tmp_path / "a", 12), _replica(tmp_path / "b", 7)
    try:
        sa, sb = (
            AuditShipper(audit_pg, a.path, log_signer(a), replica="a"),
            AuditShipper(audit_pg, b.path, log_signer(b), replica="b"),
        )
        assert sa.ship() == a.last_seq and sb.ship() == b.last_seq
        assert sa.ship() == 0  # nothing new
        a.emit("tool.call", {"tool": "t__echo", "i": 99})
        a.flush()
        assert (
            AuditShipper(audit_pg, a.path, log_signer(a), replica="a").ship() == 1
        )  # a restarted replica resumes
        code, lines = _verify(_config(tmp_path, postgres_engine), capsys)
        assert code == 0
        by = {str(doc["replica"]): doc for doc in lines}
        assert set(by) == {"a", "b"} and all(doc["ok"] for doc in lines)
        assert by["a"]["last_seq"] == a.last_seq and by["b"]["last_seq"] == b.last_seq
        assert by["a"]["anchors_checked"] == 1  # the shipped signed head
        # anchored: the pinned key ids of both replicas
        pins = json.dumps([a.key_id, b.key_id])
        code, lines = _verify(_config(tmp_path, postgres_engine, f"pinned_keys = {pins}"), capsys)
        assert code == 0 and all(doc["anchored"] and doc["ok"] for doc in lines)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("tamper", "kind", "seq"),
    [
        (
            'UPDATE symbi_audit_events SET details = \'{{"tool":"t__rm"}}\' WHERE chain=%s AND seq=3',
            "changed",
            3,
        ),
        ("DELETE FROM symbi_audit_events WHERE chain=%s AND seq=4", "removed", 4),
        ("DELETE FROM symbi_audit_events WHERE chain=%s AND seq>7", "truncated", 8),
    ],
)
def test_a_tampered_row_in_postgres_is_found(
    tmp_path: Path,
    audit_pg: Postgres,
    postgres_engine: PgEngine,
    tamper: str,
    kind: str,
    seq: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = _replica(tmp_path / "a", 12), _replica(tmp_path / "b", 7)
    try:
        AuditShipper(audit_pg, a.path, log_signer(a), replica="a").ship()
        AuditShipper(audit_pg, b.path, log_signer(b), replica="b").ship()
        chain = next(c.chain for c in shared_chains(audit_pg) if c.replica == "a")
        with audit_pg.cursor() as cur:
            cur.execute(tamper.replace("{{", "{").replace("}}", "}"), (chain,))
        code, lines = _verify(_config(tmp_path, postgres_engine), capsys)
        assert code == 1
        by = {str(doc["replica"]): doc for doc in lines}
        assert by["b"]["ok"]  # the other replica's chain is intact
        problem = by["a"]["problem"]
        assert isinstance(problem, dict) and problem["kind"] == kind
        # a cut-off tail is found at the first record no signature vouches for any more (the writer
        # signs a head when idle or flushed and every checkpoint_every events) or at the anchor
        assert problem["seq"] == seq if kind != "truncated" else 1 <= int(str(problem["seq"])) <= seq
    finally:
        a.close()
        b.close()


def test_shipping_with_postgres_down_is_state_unavailable_and_resumes(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _replica(tmp_path / "a", 3)
    try:
        shipper = AuditShipper(audit_pg, a.path, log_signer(a), replica="a")
        shipper.ship()
        a.emit("tool.call", {"tool": "t__echo", "i": 3})
        a.flush()
        postgres_engine.stop()
        try:
            with pytest.raises(StateUnavailable):
                shipper.ship()
        finally:
            postgres_engine.start()
        assert shipper.ship() == 1  # the record the outage held back
        code, lines = _verify(_config(tmp_path, postgres_engine), capsys)
        assert code == 0 and lines[0]["last_seq"] == a.last_seq
    finally:
        a.close()


def test_no_shipped_chain_is_a_failure_and_no_postgres_url_a_config_error(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _verify(_config(tmp_path, postgres_engine), capsys)[0] == 1
    plain = write_config(tmp_path, f'[gateway]\ndata_dir = "{tmp_path / "d"}"\n', name="plain.toml")
    assert _verify(plain, capsys)[0] == 2


def test_a_ship_racing_a_commit_copies_the_anchor_and_records_of_one_snapshot(
    tmp_path: Path,
    audit_pg: Postgres,
    postgres_engine: PgEngine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A commit lands between the shipper's reading of the anchor and of the records: it moves the
    anchor to a new head whose signature the writer stores one commit later. Shipped from two
    states, PostgreSQL would hold that unsigned head under the older anchor: a cut-off chain."""
    from gateway.audit import store

    log = AuditLog(tmp_path / "a" / "audit.db", tmp_path / "a" / "audit-key.pem", seal_idle_s=30.0)
    try:
        log.append("tool.call", {"i": 1})
        real = store.read_anchor

        def read_anchor_then_commit(conn: sqlite3.Connection) -> store.Anchor | None:
            anchor = real(conn)
            if anchor is not None and anchor.seq == 1:
                assert log.append("tool.call", {"i": 2}) == 2
            return anchor

        monkeypatch.setattr(store, "read_anchor", read_anchor_then_commit)
        assert (
            AuditShipper(audit_pg, log.path, log_signer(log), replica="a").ship() == 1
        )  # the snapshot of its anchor
        monkeypatch.undo()
        code, lines = _verify(_config(tmp_path, postgres_engine), capsys)
        assert code == 0, lines
    finally:
        log.close()


def _cut_front(audit_pg: Postgres, chain: str, seq: int) -> None:
    """The rows up to ``seq`` deleted and the chain's start moved after them (PostgreSQL write)."""
    with audit_pg.cursor() as cur:
        cur.execute("SELECT chain_hash FROM symbi_audit_events WHERE chain=%s AND seq=%s", (chain, seq))
        row = cur.fetchone()
        assert row is not None
        cur.execute("DELETE FROM symbi_audit_events WHERE chain=%s AND seq<=%s", (chain, seq))
        cur.execute(
            "UPDATE symbi_audit_chains SET start_seq=%s, start_hash=%s WHERE chain=%s",
            (seq + 1, row[0], chain),
        )


def test_a_chains_front_cut_off_in_postgres_is_found(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its oldest rows deleted and its start moved after them: the shorter chain verified intact
    (every link from the new start, the signed anchor at its head), even with the key pinned."""
    a = _replica(tmp_path / "a", 12)
    try:
        AuditShipper(audit_pg, a.path, log_signer(a), replica="a").ship()
        [chain] = shared_chains(audit_pg)
        _cut_front(audit_pg, chain.chain, 6)
        pins = json.dumps([a.key_id])
        code, lines = _verify(_config(tmp_path, postgres_engine, f"pinned_keys = {pins}"), capsys)
        assert code == 1
        problem = lines[0]["problem"]
        assert isinstance(problem, dict) and problem["kind"] == "truncated"
    finally:
        a.close()


def test_a_chain_shipped_after_retention_starts_at_its_signed_hand_off(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replica whose oldest events were archived before it first shipped: its chain starts
    where the signed hand-off says and verifies; a start moved further is found all the same."""
    a = _replica(tmp_path / "a", 12)
    try:
        policy = RetentionPolicy(None, 1, "archive", tmp_path / "archive")
        assert archive(a, policy) is not None
        AuditShipper(audit_pg, a.path, log_signer(a), replica="a").ship()
        [chain] = shared_chains(audit_pg)
        assert chain.start_seq > 1 and chain.start_handoff is not None
        pins = json.dumps([a.key_id])
        cfg = _config(tmp_path, postgres_engine, f"pinned_keys = {pins}")
        code, lines = _verify(cfg, capsys)
        assert code == 0, lines
        _cut_front(audit_pg, chain.chain, chain.start_seq)
        code, lines = _verify(cfg, capsys)
        assert code == 1
        problem = lines[0]["problem"]
        assert isinstance(problem, dict) and problem["kind"] == "truncated"
    finally:
        a.close()
