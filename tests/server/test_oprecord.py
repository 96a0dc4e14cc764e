"""Attack: the first operator action after the disk fills. The check before it
(``AuditLog.ensure_writable``) passes, since the writer has not failed yet; the action was
carried out, answered 200, and its record, queued without a wait, was then lost. Now the record
is committed before the answer: a commit that fails, or does not come in time (a stalled disk),
is answered 503 ``action_unrecorded`` (done), and where its record is: held and written once
the log commits again (``held``), queued in a stalled writer and written when the disk moves
(``pending``), or, with the log broken for good, logged at stop, a restart needed
(``restart_needed``: ``test_oprecord_broken``). A real gateway over HTTP with server-everything; the disk fills as in
``break_audit_log`` (a trigger refusing every insert), or stalls (``Stall``: a hung fsync)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.audit import store
from gateway.config import load_config
from gateway.errors import ActionUnrecorded, AuditError
from gateway.events import Event
from gateway.server import oprecord
from tests.conftest import Stall, break_audit_log
from tests.server.http.conftest import Keys, Running, bearer, everything_config, make_keys, run_server


def _records(db: Path, kind: Event) -> list[dict[str, Any]]:
    conn = store.open_reader(db)
    try:
        return [r.as_dict() for r in store.query(conn, types=(str(kind),))]
    finally:
        conn.close()


def _mend(db: Path) -> None:
    """The disk has room again: the trigger refusing inserts dropped."""
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("DROP TRIGGER no_insert")
    conn.commit()
    conn.close()


def _wait_for(db: Path, kind: Event, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while not (found := _records(db, kind)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def _let_go(run: Running, kind: Event, timeout: float = 60.0) -> None:
    """Wait until no record of ``kind`` is held. Its row is visible in the db before its commit
    settles on the gateway's loop (the writer commits, then wakes the loop), which lets it go:
    asserted at once after the row, a loaded loop failed the test. Read on the loop (its own)."""
    loop = run.server.servers[0].get_loop()
    gw = run.state.gateway
    assert gw is not None

    async def kinds() -> list[Event]:
        return [k for k, _ in gw.verifier.unsent.held()]

    deadline = time.monotonic() + timeout
    while kind in (held := asyncio.run_coroutine_threadsafe(kinds(), loop).result(timeout=30)):
        assert time.monotonic() < deadline, held
        time.sleep(0.05)


def _on_loop(run: Running, step: Callable[[], object]) -> None:
    """``step`` done on the gateway's event loop and waited for: ``Unsent`` is the loop's alone
    (the sender and the request path use it there), so a test holds a record there too."""
    loop = run.server.servers[0].get_loop()

    async def call() -> None:
        step()

    asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=30)


@contextlib.contextmanager
def _gateway(tmp_path: Path, top_extra: str = "") -> Iterator[tuple[Running, Keys, Path]]:
    """A real HTTP gateway over server-everything: (the running server, its keys, its audit db)."""
    cfg = everything_config(tmp_path, top_extra=top_extra)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        yield run, keys, load_config(cfg, {}).audit_path


def test_an_approval_whose_record_fails_after_the_check_is_answered_done_and_its_record_held(
    tmp_path: Path,
) -> None:
    with _gateway(tmp_path) as (run, keys, db):
        admin = bearer(keys.admin)
        api = run.base + "/api/tools/everything__echo"
        current = httpx.get(api + "/diff", headers=admin).json()["current_hash"]
        break_audit_log(db)  # the disk is full; nothing has written since: the check passes

        before_ns = time.time_ns()
        r = httpx.post(api + "/approve", json={"hash": current}, headers=admin)
        answered_ns = time.time_ns()
        assert r.status_code == 503, r.text  # 200 before, its record lost
        assert (r.json()["code"], r.json()["done"]) == (ActionUnrecorded.code, True)
        assert httpx.get(api + "/diff", headers=admin).json()["approved_hash"] == current  # it was done
        gw = run.state.gateway
        assert gw is not None
        held = [d for kind, d in gw.verifier.unsent.held() if kind == Event.TOOL_APPROVED]
        assert len(held) == 1 and "held_since_ns" in held[0], gw.verifier.unsent.held()
        assert _records(db, Event.TOOL_APPROVED) == []

        _mend(db)
        # only waited-for records failed (this one, the refresh's held ones): the log is not
        # broken, and the held record is sent again by the approvals poll's sender
        [rec] = _wait_for(db, Event.TOOL_APPROVED)
        assert rec["details"]["definition_hash"] == current and "held_since_ns" in rec["details"]
        # of the operator who acted, stamped when it was done (not when its commit failed)
        assert rec["principal"] == "alice", rec  # make_keys: the admin key is alice's
        assert before_ns <= rec["details"]["held_since_ns"] <= answered_ns, rec
        _let_go(run, Event.TOOL_APPROVED)


def test_an_agent_suspension_whose_record_stalls_is_answered_done_and_written_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled disk does not hang the admin request: after the bound, 503 (done), and the
    record, queued once, is written when the disk moves again."""
    monkeypatch.setattr(oprecord, "RECORD_WAIT_S", 1.0)
    with _gateway(tmp_path) as (run, keys, db):
        admin = bearer(keys.admin)
        from tests.server.http.test_refusal_flood import KeySession

        assert KeySession(run.mcp, keys.user).call("everything__echo", {"message": "hi"}) is None
        [agent] = httpx.get(run.base + "/api/agents", headers=admin, timeout=30).json()["agents"]
        gw = run.state.gateway
        assert gw is not None and gw.audit is not None
        with Stall(gw.audit):
            url = run.base + f"/api/agents/{agent['id']}/suspend"
            r = httpx.post(url, json={"reason": "x"}, headers=admin, timeout=30)
            assert r.status_code == 503, r.text  # 200 before, and hung on the disk with a wait
            assert (r.json()["code"], r.json()["done"]) == (ActionUnrecorded.code, True)
            assert (r.json()["held"], r.json()["pending"]) == (False, True)  # queued, not held
            # (httpx's 5 s default is a guess at a loaded machine's speed: these wait on nothing)
            [after] = httpx.get(run.base + "/api/agents", headers=admin, timeout=30).json()["agents"]
            held = httpx.get(run.base + "/api/principals", headers=admin, timeout=30).json()["suspended"]
            assert after["suspend_pending"] and len(held) == 1, (after, held)  # it was done
            assert _records(db, Event.AGENT_SUSPEND_REQUESTED) == []
        [rec] = _wait_for(db, Event.AGENT_SUSPEND_REQUESTED)  # queued once: written once
        assert rec["agent"] == agent["id"] and rec["principal"] == rec["details"]["by"], rec
        _let_go(run, Event.AGENT_SUSPEND_REQUESTED)


def test_a_principal_suspension_whose_record_fails_is_answered_done_and_its_record_held(
    tmp_path: Path,
) -> None:
    """Its record fails with the runtime's own (un-waited) records of the suspension: the log
    refuses from then on (fail closed), the operator's record is held, not lost, and the next
    action is refused before anything is done."""
    with _gateway(tmp_path) as (run, keys, db):
        admin = bearer(keys.admin)
        api = run.base + "/api/principals"
        break_audit_log(db)

        r = httpx.post(api + "/suspend", json={"principal": "key:bob", "reason": "x"}, headers=admin)
        assert r.status_code == 503, r.text  # 200 before, its record lost
        assert (r.json()["code"], r.json()["done"]) == (ActionUnrecorded.code, True)
        assert [h["principal"] for h in httpx.get(api, headers=admin).json()["suspended"]] == ["key:bob"]
        gw = run.state.gateway
        assert gw is not None
        held = [d for k, d in gw.verifier.unsent.held() if k == Event.PRINCIPAL_SUSPEND_REQUESTED]
        assert len(held) == 1 and held[0]["principal"] == "key:bob" and "held_since_ns" in held[0]

        r = httpx.post(api + "/suspend", json={"principal": "key:carol", "reason": "x"}, headers=admin)
        assert r.status_code == 503 and r.json()["code"] == AuditError.code, r.text  # nothing done
        assert len(httpx.get(api, headers=admin).json()["suspended"]) == 1


def test_a_record_held_before_an_operators_action_is_committed_ahead_of_its_record(
    tmp_path: Path,
) -> None:
    """The operator's record was submitted at once, ahead of the records held before it (a
    rebuild's the log refused a moment ago): the chain no longer followed the order things were
    done in, and the held one waited for the sender's next pass. Now the held ones go first."""
    # the held records' sender waits its interval first: it sends nothing during this test
    with _gateway(tmp_path, top_extra="[mcp]\nrecheck_interval_s = 600.0\n") as (run, keys, db):
        gw = run.state.gateway
        assert gw is not None
        unsent = gw.verifier.unsent
        _on_loop(
            run, lambda: unsent.keep(Event.TOOL_KEYS_CHANGED, {"upstreams": ["everything"]}, refused=True)
        )

        api = run.base + "/api/principals/suspend"
        r = httpx.post(api, json={"principal": "key:bob", "reason": "x"}, headers=bearer(keys.admin))
        assert r.status_code == 200, r.text
        [action] = _records(db, Event.PRINCIPAL_SUSPEND_REQUESTED)
        [older] = _records(db, Event.TOOL_KEYS_CHANGED)  # none before: still held
        assert older["seq"] < action["seq"], (older, action)
        assert "held_since_ns" in older["details"] and "held_since_ns" not in action["details"]
        assert gw.verifier.unsent.held() == []
