"""The error handler against a real upstream that is killed and restarted: the breaker opens,
answers at once while open, half-opens after reset_s and closes on a good probe; retries are
only for read-only / idempotent tools."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from gateway.errors import UpstreamUnavailable
from gateway.events import LoggingSink
from gateway.runtime.breaker import Breakers, retryable
from tests.conftest import ROOT, SYMBI, symbi_env, upstream_writable, write_config
from tests.server._clients import stdio_session
from tests.upstream.test_restart import pids_running

pytestmark = pytest.mark.anyio


def _code(result: object) -> str | None:
    meta = getattr(result, "meta", None) or {}
    return meta.get("symbi/error", {}).get("code") if getattr(result, "is_error", False) else None


def test_breaker_state_machine() -> None:
    b = Breakers(threshold=2, reset_s=0.05, events=LoggingSink())
    assert b.before("u") is False
    b.failure("u")
    assert b.get("u").state == "closed"
    b.failure("u")
    assert b.get("u").state == "open"
    with pytest.raises(UpstreamUnavailable):
        b.before("u")
    import time

    time.sleep(0.06)
    assert b.before("u") is True and b.get("u").state == "half-open"  # the one probe
    with pytest.raises(UpstreamUnavailable):
        b.before("u")  # a second caller while the probe is out
    b.failure("u")
    assert b.get("u").state == "open"  # a failed probe opens again
    time.sleep(0.06)
    assert b.before("u") is True
    b.success("u")
    assert b.get("u").state == "closed" and b.before("u") is False


def test_only_read_only_or_idempotent_tools_are_retried() -> None:
    assert retryable({"readOnlyHint": True}) and retryable({"idempotentHint": True})
    assert not retryable({}) and not retryable({"readOnlyHint": False, "destructiveHint": True})


@pytest.mark.slow
async def test_breaker_opens_half_opens_and_closes_against_a_killed_and_restarted_upstream(
    tmp_path: Path,
) -> None:
    script = tmp_path / "breaker_upstream.py"  # a unique path: we kill only this test's process
    shutil.copy(ROOT / "tests/peers/mutable_server.py", script)
    record = (
        upstream_writable(tmp_path) / "record.jsonl"
    )  # the upstream runs as the unprivileged upstream user
    cfg = write_config(
        tmp_path,
        f"""
        [mcp]
        restart_backoff_initial_s = 0.2
        restart_backoff_max_s = 0.5

        [runtime.breaker]
        failures = 2
        reset_s = 8  # past the restart and re-listing (1.2 s at load 2), so the open breaker is seen

        [servers.mut]
        command = "{sys.executable}"
        args = ["{script}"]
        env = {{ RECORD_FILE = "{record}" }}
        verification = "warn"
        """,
    )
    async with stdio_session(cfg) as s:
        assert _code(await s.call_tool("mut__echo", {"message": "before"})) is None
        [pid] = pids_running(script)
        codes: list[str | None] = []

        async def slow() -> None:
            codes.append(_code(await s.call_tool("mut__slow", {"seconds": 20})))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            tg.start_soon(slow)
            with anyio.fail_after(30):  # both calls reached the upstream (it records each)
                while _received(record).count("slow") < 2:
                    await anyio.sleep(0.05)
            os.kill(pid, signal.SIGKILL)  # both calls in flight fail: two consecutive failures
        assert codes == ["upstream_unavailable", "upstream_unavailable"]

        # the supervisor restarts it; while the breaker is open, calls fail at once, unsent
        with anyio.fail_after(20):
            while not [p for p in pids_running(script) if p != pid]:
                await anyio.sleep(0.1)
            while True:
                r = await s.call_tool("mut__echo", {"message": "while-open"})
                if _code(r) == "upstream_unavailable":
                    break
                assert _code(r) == "unknown_tool"  # not re-listed yet
                await anyio.sleep(0.1)
        # after reset_s one probe goes through and closes the breaker
        with anyio.fail_after(60):
            while _code(await s.call_tool("mut__echo", {"message": "probe"})) is not None:
                await anyio.sleep(0.5)
        assert _code(await s.call_tool("mut__echo", {"message": "closed"})) is None
    received = [json.loads(x)["arguments"].get("message") for x in record.read_text().splitlines()]
    assert "while-open" not in received and received[-2:] == ["probe", "closed"]
    assert _breaker_moves(cfg) == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


async def test_a_probe_cancelled_by_its_caller_does_not_lock_the_upstream_out(tmp_path: Path) -> None:
    """Attack through ``symbi mcp`` with the SDK client and a real upstream: the breaker opens on
    a timed-out call; after ``reset_s`` a caller makes the one probe and cancels it
    (``notifications/cancelled``). Before the fix that probe stayed "out" for good: every later
    call to the upstream was refused (``upstream_unavailable``) until the gateway restarted."""
    script = tmp_path / "probe_upstream.py"
    shutil.copy(ROOT / "tests/peers/mutable_server.py", script)
    record = upstream_writable(tmp_path) / "record.jsonl"
    cfg = write_config(
        tmp_path,
        f"""
        [runtime.breaker]
        failures = 1
        reset_s = 0.5

        [servers.mut]
        command = "{sys.executable}"
        args = ["{script}"]
        env = {{ RECORD_FILE = "{record}" }}
        verification = "warn"
        timeout_s = 2  # the first call's verdict; the probe is cancelled well before it
        """,
    )
    async with stdio_session(cfg) as s:
        assert _code(await s.call_tool("mut__slow", {"seconds": 5})) == "upstream_error"  # timed out: open
        assert _code(await s.call_tool("mut__echo", {"message": "while-open"})) == "upstream_unavailable"
        await anyio.sleep(0.6)  # reset_s: the next call is the probe
        async with anyio.create_task_group() as tg:
            tg.start_soon(s.call_tool, "mut__slow", {"seconds": 30})
            with anyio.fail_after(10):  # the probe is at the upstream
                while _received(record).count("slow") < 2:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()  # its caller gives up: the SDK sends notifications/cancelled
        with anyio.fail_after(10):  # the cancellation reached the upstream: the probe is over
            while "slow_cancelled" not in _received(record):
                await anyio.sleep(0.05)
        assert _code(await s.call_tool("mut__echo", {"message": "after"})) is None
        assert _code(await s.call_tool("mut__echo", {"message": "closed"})) is None
    received = [json.loads(x)["arguments"].get("message") for x in record.read_text().splitlines()]
    assert "while-open" not in received and received[-2:] == ["after", "closed"]


def _received(record: Path) -> list[str]:
    """The tools the upstream was called with, in order."""
    if not record.exists():
        return []
    return [json.loads(x)["tool"] for x in record.read_text().splitlines() if x.strip()]


def _breaker_moves(cfg: Path) -> list[tuple[str, str]]:
    q = subprocess.run(
        [str(SYMBI), "audit", "query", "--config", str(cfg), "--type", "upstream.breaker", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )
    return [(e["details"]["from"], e["details"]["to"]) for e in map(json.loads, q.stdout.splitlines())]


def _step_and_call(annotations: dict[str, object]) -> tuple[object, object]:
    from gateway.config.model import Config
    from gateway.config.sections import RuntimeSection
    from gateway.context import CallContext, Principal, ToolInfo
    from gateway.runtime.core import AgentRuntime
    from gateway.steps.schedule import ScheduleStep

    cfg = Config(runtime=RuntimeSection.model_validate({"retry": {"attempts": 3, "backoff_s": 0.01}}))
    step = ScheduleStep(AgentRuntime(cfg, LoggingSink()))
    tool = ToolInfo(name="up__t", original_name="t", upstream="up", definition={}, annotations=annotations)
    return step, CallContext(principal=Principal(id="p"), kind="tools/call", target="up__t", tool=tool)


@pytest.mark.parametrize(
    ("annotations", "attempts"),
    [({"readOnlyHint": True}, 3), ({"idempotentHint": True}, 3), ({}, 1), ({"destructiveHint": True}, 1)],
)
def test_retry_with_backoff_only_when_a_repeat_is_harmless(
    annotations: dict[str, object], attempts: int
) -> None:
    step, call = _step_and_call(annotations)
    tries: list[float] = []

    async def flaky(c: object) -> str:  # the dispatch endpoint (the seam under the step)
        tries.append(anyio.current_time())
        raise UpstreamUnavailable("connection closed")

    async def main() -> None:
        with pytest.raises(UpstreamUnavailable):
            await step(call, flaky)  # type: ignore[operator]

    anyio.run(main)
    assert len(tries) == attempts
