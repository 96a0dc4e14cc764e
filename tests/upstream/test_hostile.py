"""A hostile upstream: an oversized message and a hung server (issue 11 item 9).

Oversized messages end the connection (bounded memory and CPU), a server that stops
answering is detected by a ping after a timed-out call, and both are restarted.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import stdio_client

from gateway.upstream.stdio import MessageTooLarge, split_lines
from tests.conftest import ROOT, free_port, wait_listening, write_config
from tests.server._clients import gateway_params, stdio_session
from tests.upstream.test_restart import pids_running


def test_lines_are_split_incrementally_and_bounded() -> None:
    buf = bytearray()
    lines, scan = split_lines(buf, b'{"a":1}\n{"b"', 0, 100)
    assert lines == [b'{"a":1}'] and bytes(buf) == b'{"b"' and scan == 4
    lines, scan = split_lines(buf, b':2}\n\n{"c":3}\n', scan, 100)
    assert lines == [b'{"b":2}', b"", b'{"c":3}'] and bytes(buf) == b"" and scan == 0
    with pytest.raises(MessageTooLarge):
        split_lines(bytearray(), b"y" * 101, 0, 100)  # unfinished and already too long
    with pytest.raises(MessageTooLarge):
        split_lines(bytearray(), b"y" * 150 + b"\n", 0, 100)  # complete but too long


def config(tmp_path: Path, script: Path, extra: str = "", tables: str = "") -> Path:
    """``extra``: more of [mcp]; ``tables``: more tables, after the server's."""
    return write_config(
        tmp_path,
        f"""
        [mcp]
        max_message_bytes = 1048576
        restart_backoff_initial_s = 0.2
        restart_backoff_max_s = 1.0
        {extra}
        [servers.mut]
        command = "{sys.executable}"
        args = ["{script}"]
        verification = "warn"
        {tables}
        """,
    )


async def _until_up(s: object) -> None:
    with anyio.fail_after(30):
        while (await s.call_tool("mut__echo", {"message": "back"})).is_error:  # type: ignore[attr-defined]
            await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_an_oversized_message_is_refused_and_the_upstream_restarted(tmp_path: Path) -> None:
    script = tmp_path / "hostile_copy.py"  # a unique path: we look for this test's process only
    shutil.copy(ROOT / "tests/peers/mutable_server.py", script)
    async with stdio_session(config(tmp_path, script)) as s:
        [before] = pids_running(script)
        r = await s.call_tool("mut__huge", {"megabytes": 20})  # 20x the limit, in one line
        assert r.is_error
        # the connection is closed at once: "upstream_unavailable", not the call timeout's
        # "upstream_error" after a failed ping (the call used to hang until mcp.call_timeout_s)
        assert r.meta["symbi/error"]["code"] == "upstream_unavailable"  # type: ignore[index]
        await _until_up(s)
        assert pids_running(script) != [before]  # a new server process
        ok = await s.call_tool("mut__huge", {"megabytes": 0})
        assert not ok.is_error


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_wedged_upstream_is_detected_and_restarted(tmp_path: Path) -> None:
    """The wedge's call and the calls until the restart are consecutive failures: they open the
    breaker (5 by default), and its reset (10 s by default, half the test's time) is not what is
    tested here: 1 s. Without the ping after a timed-out call, every call still times out."""
    script = tmp_path / "wedge_copy.py"
    shutil.copy(ROOT / "tests/peers/mutable_server.py", script)
    extra = "call_timeout_s = 2.0\nconnection_timeout_s = 10.0"
    async with stdio_session(config(tmp_path, script, extra, "[runtime.breaker]\nreset_s = 1.0\n")) as s:
        [before] = pids_running(script)
        r = await s.call_tool("mut__wedge", {})
        assert r.is_error and r.meta["symbi/error"]["code"] == "upstream_error"  # type: ignore[index]
        await _until_up(s)  # without the liveness probe every later call would time out too
        assert before not in pids_running(script)


@pytest.mark.anyio
async def test_stdout_noise_is_one_log_line_naming_the_upstream(tmp_path: Path) -> None:
    """Attack (on the operator's log): an upstream that prints a banner and debug lines to
    stdout, as many real servers do. Each line was logged by the SDK's line parser as an error
    with a whole traceback, naming no upstream; now one warning line each, naming it, and the
    upstream still serves."""
    script = tmp_path / "noisy.py"
    script.write_text(
        "import os, sys\n"
        "for i in range(3):\n"
        "    print(f'noisy banner line {i}', flush=True)\n"
        f"os.execv(sys.executable, [sys.executable, {str(ROOT / 'tests/peers/mutable_server.py')!r}])\n"
    )
    log = tmp_path / "gateway.log"
    with log.open("w") as errlog:
        async with stdio_client(gateway_params(config(tmp_path, script)), errlog=errlog) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                ok = await s.call_tool("mut__echo", {"message": "still served"})
    assert not ok.is_error
    text = log.read_text()
    noted = [line for line in text.splitlines() if "noisy banner line" in line]
    assert len(noted) == 3 and all("WARNING" in line and "mut" in line for line in noted)
    assert "Traceback" not in text


@pytest.fixture
def http_upstream() -> Iterator[str]:
    """The mutable test server over streamable HTTP (JSON replies) on a loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/peers/mutable_server.py"), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(proc, port, "the HTTP test server")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.anyio
async def test_an_oversized_http_response_is_refused(tmp_path: Path, http_upstream: str) -> None:
    """Attack: an HTTP upstream answers with a JSON body far over mcp.max_message_bytes (the
    SDK reads a JSON response whole); the call fails, the upstream stays usable."""
    cfg = write_config(
        tmp_path,
        f"""
        [mcp]
        max_message_bytes = 1048576
        [servers.mut]
        url = "{http_upstream}"
        verification = "warn"
        """,
    )
    async with stdio_session(cfg) as s:
        r = await s.call_tool("mut__huge", {"megabytes": 5})
        assert r.is_error
        assert r.meta["symbi/error"]["code"] == "upstream_error"  # type: ignore[index]
        ok = await s.call_tool("mut__echo", {"message": "still here"})
        assert not ok.is_error


@pytest.mark.anyio
async def test_an_upstreams_long_refusal_is_quoted_in_part_at_every_restart(tmp_path: Path) -> None:
    """Attack (on the audit log and the log): an upstream refuses ``initialize`` with a 1 MB
    message quoting its own credential, again at every restart; each upstream.down record and
    log line held all of it. Now an excerpt, secrets replaced (``redact.excerpt``)."""
    import json
    import sqlite3

    from gateway.policy.redact import EXCERPT_CHARS

    token = "sk-ant-api03-" + "Q" * 40
    cfg = config(
        tmp_path,
        ROOT / "tests/peers/raw_server.py",
        extra="connection_timeout_s = 2.0",  # the session's start waits no longer for it
        tables=f'env = {{ RAW_INIT_ERROR_BYTES = "1000000", UPSTREAM_KEY = "{token}" }}',
    )
    async with stdio_session(cfg) as s:
        with anyio.fail_after(30):  # a hang guard: the down records of a few restarts
            while len(_downs(tmp_path)) < 2:
                await s.send_ping()
                await anyio.sleep(0.3)
    downs = _downs(tmp_path)
    assert all(len(d["error"]) < EXCERPT_CHARS + 200 and "more characters" in d["error"] for d in downs), (
        downs
    )
    assert token not in json.dumps(downs) and "[REDACTED]" in downs[0]["error"]
    with sqlite3.connect(tmp_path / "data" / "audit.db") as db:
        assert max(len(d) for (d,) in db.execute("SELECT details FROM events")) < 10 * EXCERPT_CHARS


def _downs(tmp_path: Path) -> list[dict[str, str]]:
    import json
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "audit.db") as db:
        return [
            json.loads(d) for (d,) in db.execute("SELECT details FROM events WHERE type = 'upstream.down'")
        ]


@pytest.mark.anyio
async def test_a_result_with_a_huge_key_is_refused_by_name(tmp_path: Path) -> None:
    """Attack (on every other caller): an upstream answers with one huge key in its
    structuredContent (1 MB here; the redaction rules find a key's words character by
    character: a 3 MB key held the event loop ~0.6 s). Keys over ``MAX_KEY_CHARS`` are
    refused as the upstream's fault; a key at the limit passes."""
    from gateway.jsonlimits import MAX_KEY_CHARS

    cfg = config(tmp_path, ROOT / "tests/peers/raw_server.py")
    async with stdio_session(cfg) as s:
        r = await s.call_tool("mut__t", {"mode": "long_key", "message": 1_000_000})
        assert r.is_error and r.meta["symbi/error"]["code"] == "upstream_error", r  # type: ignore[index]
        ok = await s.call_tool("mut__t", {"mode": "long_key", "message": MAX_KEY_CHARS})
        assert not ok.is_error and ok.structured_content == {"k" * MAX_KEY_CHARS: 1}


@pytest.mark.anyio
@pytest.mark.parametrize("depth", [150, 900])
async def test_a_deeply_nested_result_is_refused_by_name(tmp_path: Path, depth: int) -> None:
    """Attack (on the gateway's steps and its log): an upstream answers with valid JSON nested
    900 deep (inside the parser's limit of 1,024); the steps that walk a result recurse, so
    each such answer was an internal error and thousands of traceback lines in the log. Now
    refused as the upstream's fault, naming the path, and the next call is served."""
    cfg = config(tmp_path, ROOT / "tests/peers/raw_server.py")
    async with stdio_session(cfg) as s:
        r = await s.call_tool("mut__t", {"mode": "deep", "message": depth})
        assert r.is_error and r.meta["symbi/error"]["code"] == "upstream_error", r  # type: ignore[index]
        ok = await s.call_tool("mut__t", {"mode": "ok", "message": "after"})
        assert not ok.is_error
