"""gateway/tasks.py: the approvals poll reads every revocation at once, even while the catalogue
rebuild it asked for waits (another upstream's long listing held one for 101 s, red-team finding
L). The end-to-end test (tests/verify/test_revocations.py) passes whether the poll or the
rebuild noticed the second revocation; this one pins the poll."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from gateway import events
from gateway.app import Gateway
from gateway.audit.log import AuditLog
from gateway.config.load import load_config
from gateway.events import Event
from gateway.tasks import poll_approvals, watch_keys
from gateway.verify.state import ToolStateStore
from gateway.verify.verifier import ToolVerifier
from tests.conftest import RecordingSink, Stall, write_config
from tests.test_events_unsent import tool_records

pytestmark = pytest.mark.anyio

TOOLS = ("danger", "danger2")


class RebuildThatWaits:
    """The seam faked here: the gateway's ``refresh``, which never ends (a rebuild queued
    behind another upstream's long listing); the poll, the verifier and the tool state are
    the real ones."""

    def __init__(self) -> None:
        self.events = RecordingSink()
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1
        await anyio.sleep_forever()


class CountedVerifier(ToolVerifier):
    """The real verifier, counting the poll's reads of the approvals' fingerprint (so the
    test changes them only once the poll has its first reading)."""

    reads = 0

    def fingerprint(self) -> tuple[Any, ...]:
        self.reads += 1
        return super().fingerprint()


def observed(store: ToolStateStore, name: str) -> None:
    definition: dict[str, Any] = {"name": name, "inputSchema": {"type": "object"}}
    store.observe(
        "up",
        name,
        f"up__{name}",
        definition,
        "0" * 64,
        status="pinned",
        reason=None,
        key_fingerprint=None,
        pin_if_new=True,
    )


async def test_each_revocation_is_read_while_the_rebuild_it_asked_for_waits(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"), environ={})
    verifier = CountedVerifier(config, RecordingSink())
    cli = ToolStateStore(config.tool_state_path)  # `symbi tools revoke`'s own connection
    gw = RebuildThatWaits()
    try:
        for name in TOOLS:
            observed(cli, name)
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll_approvals(verifier, 0.05), cast(Gateway, gw))
            with anyio.fail_after(30):
                while verifier.reads < 2:  # the poll holds its first reading
                    await anyio.sleep(0.02)
            for n, name in enumerate(TOOLS, start=1):
                cli.revoke("up", name)
                with anyio.fail_after(30):
                    while ("up", name) not in verifier.revocations.tools or not gw.refreshes:
                        await anyio.sleep(0.02)
                assert gw.refreshes == 1  # the first rebuild still runs: the poll did not wait
                assert len(gw.events.events) == n  # tool.approvals_changed, each on the record
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            cli.close()
        verifier.close()


async def test_a_revocation_is_acted_on_with_the_audit_log_broken(tmp_path: Path) -> None:
    """The audit log broken (``on_failure = "deny"``: a closed log here): the record of the
    change raised ``AuditError`` out of the poll, which ended (the gateway with it) before
    the rebuild it asks for. Now the rebuild is asked for all the same."""
    config = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"), environ={})
    verifier = CountedVerifier(config, RecordingSink())
    cli = ToolStateStore(config.tool_state_path)
    gw = RebuildThatWaits()
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    log.close()  # every emit raises AuditError from now on
    gw.events = log  # type: ignore[assignment]
    try:
        observed(cli, TOOLS[0])
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll_approvals(verifier, 0.05), cast(Gateway, gw))
            with anyio.fail_after(30):
                while verifier.reads < 2:
                    await anyio.sleep(0.02)
            cli.revoke("up", TOOLS[0])
            with anyio.fail_after(30):
                while not gw.refreshes:  # before: AuditError out of the poll, no rebuild
                    await anyio.sleep(0.02)
            assert ("up", TOOLS[0]) in verifier.revocations.tools
            tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            cli.close()
        verifier.close()


class RebuildThatEnds:
    """The gateway's ``refresh`` faked (counted, returns at once) and its sink a real audit log."""

    def __init__(self, log: AuditLog) -> None:
        self.events = log
        self.refreshes = 0

    async def refresh(self) -> None:
        self.refreshes += 1


async def test_a_revocation_is_read_while_the_log_is_stalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled writer (commits hang, the log is not broken) with a held record: the poll
    waited up to COMMIT_WAIT_S (30 s) for its commit each pass, and a `symbi tools revoke`
    made meanwhile was read only at the next pass: a revoked tool stayed callable."""
    monkeypatch.setattr(events, "COMMIT_WAIT_S", 3600.0)  # a wait on the log never ends here
    config = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"), environ={})
    verifier = CountedVerifier(config, RecordingSink())
    cli = ToolStateStore(config.tool_state_path)
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    gw = RebuildThatEnds(log)
    stall = Stall(log)
    try:
        observed(cli, TOOLS[0])
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll_approvals(verifier, 0.05), cast(Gateway, gw))
            with anyio.fail_after(30):
                while verifier.reads < 2:
                    await anyio.sleep(0.02)
            verifier.unsent.keep(
                Event.TOOL_VERIFICATION, {"tool": "up__x", "status": "revoked"}, refused=True
            )
            await anyio.sleep(0.2)  # a few passes with the record held
            cli.revoke("up", TOOLS[0])
            with anyio.fail_after(30):  # a guard: waiting on the log would take an hour
                while ("up", TOOLS[0]) not in verifier.revocations.tools or not gw.refreshes:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    finally:
        stall.end()
        log.close()
        cli.close()
        verifier.close()


async def test_a_key_change_asks_for_the_rebuild_while_the_log_is_stalled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys watch waited for its record's commit before the rebuild: with a stalled writer
    a revoked key's tools kept their old verdicts up to COMMIT_WAIT_S."""
    config = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"), environ={})
    verifier = ToolVerifier(config, RecordingSink())
    moved = [["up"]]

    async def changed() -> list[str]:  # the seam faked: the upstream's key was revoked once
        return moved.pop() if moved else []

    monkeypatch.setattr(verifier.keys, "changed", changed)
    monkeypatch.setattr(events, "COMMIT_WAIT_S", 3600.0)  # a wait on the log never ends here
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    gw = RebuildThatEnds(log)
    stall = Stall(log)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_keys(verifier, 0.05), cast(Gateway, gw))
            with anyio.fail_after(30):  # a guard: waiting on the log would take an hour
                while not gw.refreshes:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        assert [kind for kind, _ in verifier.unsent.held()] == [Event.TOOL_KEYS_CHANGED]  # in flight
        stall.end()
        with anyio.fail_after(10):
            while verifier.unsent.held():  # committed once the writer moves
                await anyio.sleep(0.02)
    finally:
        stall.end()
        log.close()
        verifier.close()


async def test_a_held_record_is_sent_by_the_poll_with_no_change_to_carry_it(tmp_path: Path) -> None:
    """The poll's sender task: a record held (refused once) reaches the log within a few
    intervals though no approval changed, once, stamped with when it was acted on. Without
    the task it waited for the next rebuild or key change, however long."""
    config = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"), environ={})
    verifier = ToolVerifier(config, RecordingSink())
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    gw = RebuildThatEnds(log)
    try:
        verifier.unsent.keep(Event.TOOL_VERIFICATION, {"tool": "up__x", "status": "revoked"}, refused=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll_approvals(verifier, 0.05), cast(Gateway, gw))
            with anyio.fail_after(10):
                while len(verifier.unsent):
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        sent = [r for r in tool_records(tmp_path / "audit.db") if r.type == Event.TOOL_VERIFICATION]
        assert len(sent) == 1 and "held_since_ns" in sent[0].details
    finally:
        log.close()
        verifier.close()
