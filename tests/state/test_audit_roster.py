"""Attacks on the set of replica chains in a real PostgreSQL, and on their labels
(``gateway.state.audit_roster``): whoever can write PostgreSQL, without the replicas' keys,
deletes a chain whole, relabels chains, empties an anchor, strips a registration. And the way
forward for chains shipped before migration 9 (a restarted shipper, ``symbi audit register-shared``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.audit import AuditLog, store
from gateway.audit.retention import RetentionPolicy, archive
from gateway.cli import main
from gateway.state.audit import AuditShipper, shared_chains
from gateway.state.audit_roster import log_roll_call, log_signer
from gateway.state.postgres import Postgres
from tests.conftest import write_config
from tests.state.engines import Postgres as PgEngine
from tests.state.test_audit_shared import _config, _replica, _verify


def _ship(audit_pg: Postgres, log: AuditLog, replica: str) -> str:
    AuditShipper(audit_pg, log.path, log_signer(log), replica=replica).ship()
    return next(c.chain for c in shared_chains(audit_pg) if c.replica == replica)


def _delete_chain(audit_pg: Postgres, chain: str, key_id: str | None) -> None:
    """Every trace of one chain: its rows, its chain row, its key (unless another chain needs it)."""
    with audit_pg.cursor() as cur:
        cur.execute("DELETE FROM symbi_audit_events WHERE chain=%s", (chain,))
        cur.execute("DELETE FROM symbi_audit_chains WHERE chain=%s", (chain,))
        cur.execute("DELETE FROM symbi_audit_keys WHERE key_id=%s", (key_id,))


def _pins(*logs: AuditLog) -> str:
    return f"pinned_keys = {json.dumps([log.key_id for log in logs])}"


@pytest.mark.parametrize("named_by", ["registration", "pin"])
def test_a_replicas_chain_deleted_whole_is_named_missing(
    tmp_path: Path,
    audit_pg: Postgres,
    postgres_engine: PgEngine,
    capsys: pytest.CaptureFixture[str],
    named_by: str,
) -> None:
    """Before: the other chain verified and the run said intact (exit 0). Found by the signed
    registration of a chain shipped after it (no pins needed), or by its pinned key."""
    a, b = _replica(tmp_path / "a", 9), _replica(tmp_path / "b", 6)
    try:
        if named_by == "registration":  # b registers first: a's registration names it
            gone = _ship(audit_pg, b, "b")
            _ship(audit_pg, a, "a")
            cfg = _config(tmp_path, postgres_engine)
        else:  # b registers last: nothing names it but its pinned key
            _ship(audit_pg, a, "a")
            gone = _ship(audit_pg, b, "b")
            cfg = _config(tmp_path, postgres_engine, _pins(a, b))
        assert _verify(cfg, capsys)[0] == 0
        _delete_chain(audit_pg, gone, b.key_id)
        code, lines = _verify(cfg, capsys)
        assert code == 1
        assert [doc["replica"] for doc in lines if "replica" in doc] == ["a"] and lines[0]["ok"]
        missing = [doc for doc in lines if not doc["ok"]]
        assert missing and all(doc["problem"]["kind"] == "missing" for doc in missing)  # type: ignore[index]
        if named_by == "registration":
            assert [doc["chain"] for doc in missing] == [gone]
        else:
            assert [doc["key_id"] for doc in missing] == [b.key_id]
    finally:
        a.close()
        b.close()


def test_a_replica_restarted_after_retention_goes_on_with_its_chain(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a start after retention moved the log's first record registered a second chain
    for the replica, and that newest chain (everything shipped since) deleted whole went
    unnoticed: the older chain still covered the replica's pin, and no registration named it."""
    a = _replica(tmp_path / "a", 12)
    try:
        first = _ship(audit_pg, a, "a")
        assert archive(a, RetentionPolicy(None, 1, "archive", tmp_path / "a" / "audit-archive")) is not None
        a.emit("tool.call", {"tool": "t__echo", "i": 12})
        a.flush()
        shipper = AuditShipper(audit_pg, a.path, log_signer(a), replica="a")  # the replica started again
        assert shipper.ship() > 0
        cfg = _config(tmp_path, postgres_engine, _pins(a))
        code, lines = _verify(cfg, capsys)
        assert code == 0 and [doc["chain"] for doc in lines] == [first]
        assert lines[0]["last_seq"] == a.last_seq
        newest = max(shared_chains(audit_pg), key=lambda c: c.anchor.seq if c.anchor else 0)
        _delete_chain(audit_pg, newest.chain, None)  # the key kept: an older chain of it would need it
        code, lines = _verify(cfg, capsys)
        assert code == 1 and [doc.get("key_id") for doc in lines if not doc["ok"]] == [a.key_id]
    finally:
        a.close()


def test_swapped_replica_labels_are_found(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: two chains' labels swapped (or one chain given another's label and registration
    row) verified intact, each chain on its own."""
    a, b = _replica(tmp_path / "a", 5), _replica(tmp_path / "b", 5)
    try:
        ca, cb = _ship(audit_pg, a, "a"), _ship(audit_pg, b, "b")
        cfg = _config(tmp_path, postgres_engine, _pins(a, b))
        with audit_pg.cursor() as cur:
            cur.execute(
                "UPDATE symbi_audit_chains SET replica = CASE WHEN chain=%s THEN 'b' ELSE 'a' END", (ca,)
            )
        code, lines = _verify(cfg, capsys)
        assert code == 1
        chains = [doc for doc in lines if "replica" in doc]  # (then each pin lacks a verified chain)
        assert len(chains) == 2 and {doc["problem"]["kind"] for doc in chains} == {"registration"}  # type: ignore[index]
        with audit_pg.cursor() as cur:  # b's label back, with a's whole row of registration and label
            cur.execute("UPDATE symbi_audit_chains SET replica='b' WHERE chain=%s", (cb,))
            cur.execute(
                "UPDATE symbi_audit_chains SET replica='b', registration=(SELECT registration FROM"
                " symbi_audit_chains WHERE chain=%s) WHERE chain=%s",
                (cb, ca),
            )
        code, lines = _verify(cfg, capsys)
        by = {str(doc["chain"]): doc for doc in lines if "replica" in doc}
        assert code == 1 and by[cb]["ok"] and by[ca]["problem"]["kind"] == "registration"  # type: ignore[index]
    finally:
        a.close()
        b.close()


# the tail cut back to a record signed on its own (before the head), or every row gone (the
# chain row, registration and all, kept); the signed head anchor emptied each time
_SIGNED_BEFORE_HEAD = (
    "SELECT max(seq) FROM symbi_audit_events WHERE chain=%(c)s AND signature <> ''"
    " AND seq < (SELECT max(seq) FROM symbi_audit_events WHERE chain=%(c)s)"
)


@pytest.mark.parametrize(
    "tamper",
    [
        f"DELETE FROM symbi_audit_events WHERE chain=%(c)s AND seq > ({_SIGNED_BEFORE_HEAD})",
        "DELETE FROM symbi_audit_events WHERE chain=%(c)s",
    ],
    ids=["tail", "rows"],
)
def test_an_emptied_anchor_does_not_hide_a_cut(
    tmp_path: Path,
    audit_pg: Postgres,
    postgres_engine: PgEngine,
    capsys: pytest.CaptureFixture[str],
    tamper: str,
) -> None:
    a = _replica(tmp_path / "a", 12)
    try:
        chain = _ship(audit_pg, a, "a")
        with audit_pg.cursor() as cur:
            cur.execute(_SIGNED_BEFORE_HEAD, {"c": chain})
            row = cur.fetchone()
            assert row is not None and row[0] is not None  # a record signed on its own to cut back to
            cur.execute("UPDATE symbi_audit_chains SET anchor_seq=NULL WHERE chain=%s", (chain,))
            cur.execute(tamper, {"c": chain})
        code, lines = _verify(_config(tmp_path, postgres_engine, _pins(a)), capsys)
        assert code == 1 and lines[0]["problem"]["kind"] == "truncated"  # type: ignore[index]
    finally:
        a.close()


def _unregister(audit_pg: Postgres, chain: str, handoff_too: bool = False) -> None:
    """The chain as migration 9 (or 8) found it: no registration (no shipped hand-off)."""
    with audit_pg.cursor() as cur:
        cur.execute("UPDATE symbi_audit_chains SET registration=NULL WHERE chain=%s", (chain,))
        if handoff_too:
            cur.execute("UPDATE symbi_audit_chains SET start_handoff=NULL WHERE chain=%s", (chain,))


def test_an_unregistered_chain_fails_until_its_replica_signs_it(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chain without a registration (shipped before migration 9, or stripped by an attacker)
    is never taken as it stands; the replica's next start signs it when its start is its log's."""
    a = _replica(tmp_path / "a", 7)
    try:
        chain = _ship(audit_pg, a, "a")
        cfg = _config(tmp_path, postgres_engine, _pins(a))
        _unregister(audit_pg, chain)
        code, lines = _verify(cfg, capsys)
        assert code == 1 and lines[0]["problem"]["kind"] == "unregistered"  # type: ignore[index]
        _ship(audit_pg, a, "a")  # the replica started again: its shipper signs the chain it ships
        assert _verify(cfg, capsys)[0] == 0
    finally:
        a.close()


def test_register_shared_signs_an_old_chain_after_retention_and_refuses_a_cut_one(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chain shipped before migration 8 that starts after seq 1 (archived first) and is no
    longer the one the replica ships: `symbi audit register-shared` on the replica takes its start
    from the chain's own signed hand-off; one whose front was cut has no hand-off there."""
    a = _replica(tmp_path / "a", 12)
    try:
        assert archive(a, RetentionPolicy(None, 1, "archive", tmp_path / "a" / "audit-archive")) is not None
        chain = _ship(audit_pg, a, "a")
        _unregister(audit_pg, chain, handoff_too=True)
        pins = _pins(a)
        cfg = _config(tmp_path, postgres_engine, pins)
        assert _verify(cfg, capsys)[0] == 1
        replica_cfg = write_config(
            tmp_path,
            f'[gateway]\ndata_dir = "{tmp_path / "a"}"\n[audit]\n{pins}\n[state]\npostgres_url = "{postgres_engine.url}"\n',
            name="replica.toml",
        )
        assert main(["audit", "register-shared", "--config", str(replica_cfg)]) == 0
        code, lines = _verify(cfg, capsys)
        assert code == 0, lines
        assert str(lines[0]["replica"]).endswith(str(tmp_path / "a" / "audit.db"))  # its own signed label
        # the same chain cut at its front (no hand-off at the new start): not registered, still failing
        [row] = shared_chains(audit_pg)
        with audit_pg.cursor() as cur:
            cur.execute(
                "SELECT seq, chain_hash FROM symbi_audit_events WHERE chain=%s ORDER BY seq LIMIT 2",
                (chain,),
            )
            (s1, h1), _ = cur.fetchall()
            cur.execute("DELETE FROM symbi_audit_events WHERE chain=%s AND seq<=%s", (chain, s1))
            cur.execute(
                "UPDATE symbi_audit_chains SET start_seq=%s, start_hash=%s WHERE chain=%s",
                (s1 + 1, h1, chain),
            )
        _unregister(audit_pg, chain, handoff_too=True)
        assert main(["audit", "register-shared", "--config", str(replica_cfg)]) == 1
        assert _verify(cfg, capsys)[0] == 1
    finally:
        a.close()


def _exporting(folder: Path, n: int, witness: Path) -> AuditLog:
    """A replica's log with ``n`` events whose checkpoints are exported to ``witness/<folder>.jsonl``
    (kept outside its data dir and PostgreSQL; a new log refuses an old log's export)."""
    log = AuditLog(
        folder / "audit.db",
        folder / "audit-key.pem",
        checkpoint_every=5,
        batch_max=4,
        checkpoint_export=witness / f"{folder.name}.jsonl",
    )
    for i in range(n):
        log.emit("tool.call", {"tool": "t__echo", "i": i}, principal="p")
    log.flush()
    return log


def test_a_replaced_data_dirs_newer_chain_deleted_is_found_by_an_exported_checkpoint(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a data dir replaced under the same key registered a second chain, and that newer
    chain deleted whole verified intact (the older chain covered the pin; no registration named
    it). Nothing in PostgreSQL can name it; the replica's exported checkpoints do (``--anchor``)."""
    witness = tmp_path / "witness"
    old = _exporting(tmp_path / "a1", 9, witness)
    first = _ship(audit_pg, old, "a")
    old.close()
    (tmp_path / "a2").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a1" / "audit-key.pem", tmp_path / "a2" / "audit-key.pem")  # the same key
    new = _exporting(tmp_path / "a2", 12, witness)
    try:
        assert new.key_id == old.key_id
        AuditShipper(audit_pg, new.path, log_signer(new), replica="a").ship()
        older, newer = shared_chains(audit_pg)  # in the order they were registered
        assert older.chain == first
        cfg = _config(tmp_path, postgres_engine, _pins(new))
        anchored = ("--anchor", str(witness / "a1.jsonl"), "--anchor", str(witness / "a2.jsonl"))
        assert _verify(cfg, capsys)[0] == 0 and _verify(cfg, capsys, *anchored)[0] == 0
        _delete_chain(audit_pg, newer.chain, None)  # the key kept: the older chain needs it
        assert _verify(cfg, capsys)[0] == 0  # still undetectable from PostgreSQL and the pins alone
        code, lines = _verify(cfg, capsys, *anchored)
        assert code == 1
        [gone] = [doc for doc in lines if not doc["ok"]]
        assert gone["key_id"] == new.key_id and gone["problem"]["kind"] == "missing"  # type: ignore[index]
    finally:
        new.close()


def test_the_last_registered_chain_deleted_without_pins_is_found_by_an_exported_checkpoint(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: without pins (NOT ANCHORED), the chain registered last deleted whole (rows, chain
    row, key) left nothing that names it: the others verified intact."""
    witness = tmp_path / "witness"
    a, b = _exporting(tmp_path / "a", 9, witness), _exporting(tmp_path / "b", 7, witness)
    try:
        _ship(audit_pg, a, "a")
        last = _ship(audit_pg, b, "b")
        cfg = _config(tmp_path, postgres_engine)
        anchored = ("--anchor", str(witness / "a.jsonl"), "--anchor", str(witness / "b.jsonl"))
        assert _verify(cfg, capsys, *anchored)[0] == 0
        _delete_chain(audit_pg, last, b.key_id)
        assert _verify(cfg, capsys)[0] == 0  # still undetectable from PostgreSQL alone
        code, lines = _verify(cfg, capsys, *anchored)
        assert code == 1 and [doc["key_id"] for doc in lines if not doc["ok"]] == [b.key_id]
        assert [doc["replica"] for doc in lines if doc["ok"]] == ["a"]
    finally:
        a.close()
        b.close()


def test_a_chain_another_replica_saw_is_named_missing_by_its_roll_call(
    tmp_path: Path, audit_pg: Postgres, postgres_engine: PgEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: without pins, the chain registered last (b's) deleted whole left nothing naming
    it. Replica a's shipper, running on, saw it appear and named it in a's own signed chain."""
    a, b = _replica(tmp_path / "a", 9), _replica(tmp_path / "b", 6)
    try:
        shipper = AuditShipper(audit_pg, a.path, log_signer(a), replica="a", roll_call=log_roll_call(a))
        shipper.ship()  # alone: nothing to name
        last = _ship(audit_pg, b, "b")
        shipper.ship()  # sees b's chain: a's roll call names it
        a.flush()
        shipper.ship()
        assert [d["chains"] for _, d in _roll_calls(a)] == [[last]]
        cfg = _config(tmp_path, postgres_engine)
        assert _verify(cfg, capsys)[0] == 0
        _delete_chain(audit_pg, last, b.key_id)
        code, lines = _verify(cfg, capsys)
        assert code == 1 and [doc["chain"] for doc in lines if not doc["ok"]] == [last]
        # a restarted shipper names every other chain it finds once (b's is gone now: none)
        AuditShipper(audit_pg, a.path, log_signer(a), replica="a", roll_call=log_roll_call(a)).ship()
        a.flush()
        assert len(_roll_calls(a)) == 1
    finally:
        a.close()
        b.close()


def _roll_calls(log: AuditLog) -> list[tuple[int, dict[str, object]]]:
    conn = store.open_reader(log.path)
    try:
        calls = [r for r in store.iter_records(conn) if r.type == "audit.shared_roster"]
    finally:
        conn.close()
    return [(r.seq, r.details) for r in calls]
