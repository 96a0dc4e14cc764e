"""bench/http_load.py's wrk driver: the load from wrk (C, Debian's ``wrk``) instead of Python clients.

Issue 16 asks for the HTTP target to be loaded by wrk, autocannon or several client processes,
because a Python client spends as much CPU per call as the gateway under test, and this machine
has two cores for both. Python opens the MCP sessions (``initialize`` +
``notifications/initialized``: bench/_load_client.py's ``Session``); wrk then runs one thread per
session, each holding one connection and one call in flight, every call a ``tools/call`` with
its own id and message. A Lua script (written per run, below) checks every reply: it must be
HTTP 200 and carry the call's own id and ``Echo: <its message>``, else it counts as ``misrouted``
(another call's id or message of this run) or ``errors``. With one connection per thread, a
thread's replies come back in the order of its requests, so "the call's own" is exact.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._load_client import Session

# one Lua state per wrk thread: ``n`` (set by setup) picks the thread's session
_LUA = r"""
local sessions = %(sessions)s
local run, tool, first_id = "%(run)s", "%(tool)s", %(first_id)d
local threads, created = {}, 0

function setup(thread)
  created = created + 1
  thread:set("n", created)
  table.insert(threads, thread)
end

function init(args)
  local s = sessions[((n - 1) %% #sessions) + 1]
  headers = {["Content-Type"] = "application/json", ["Accept"] = "application/json, text/event-stream",
             ["Mcp-Session-Id"] = s[1], ["Mcp-Protocol-Version"] = s[2]}
  if s[3] ~= "" then headers["Authorization"] = "Bearer " .. s[3] end
  i, ok, misrouted, errors, expect = first_id, 0, 0, 0, ""
end

function request()
  if headers == nil then  -- wrk's own check of the script, in its main state: any request will do
    return wrk.format("POST", nil, nil, "{}")
  end
  i = i + 1
  expect = string.format("%%s-t%%d-%%d", run, n, i)
  local body = string.format(
    '{"jsonrpc":"2.0","id":%%d,"method":"tools/call","params":{"name":"%%s","arguments":{"message":"%%s"}}}',
    i, tool, expect)
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, body)
  local id = tonumber(string.match(body, '"id"%%s*:%%s*(%%d+)'))
  local text = string.match(body, '"text"%%s*:%%s*"Echo: ([^"]*)"')
  if status == 200 and id == i and text == expect and not string.find(body, '"isError"%%s*:%%s*true') then
    ok = ok + 1
  elseif (id ~= nil and id ~= i) or (text ~= nil and text ~= expect and string.find(text, run, 1, true)) then
    misrouted = misrouted + 1
  else
    errors = errors + 1
  end
end

function done(summary, latency, requests)
  local t = {ok = 0, misrouted = 0, errors = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"ok":%%d,"misrouted":%%d,"errors":%%d,' ..
    '"socket_errors":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"mean_us":%%f}\n',
    summary.requests, summary.duration, t.ok, t.misrouted, t.errors,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean))
end
"""

_SAFE = re.compile(r"[A-Za-z0-9._~+/=:-]*")


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is missing: `apt-get install wrk` (make bench-peers), or --driver clients")
    return found


def _lua_string(value: str) -> str:
    if not _SAFE.fullmatch(value):  # session ids and keys are tokens; refuse anything to escape
        raise ValueError(f"not a plain token, refused in the wrk script: {value!r}")
    return f'"{value}"'


async def _open(url: str, keys: Sequence[str | None], run: str) -> list[tuple[str, str, str]]:
    """Open one session per key; (session id, protocol version, key) each. The HTTP clients are
    closed, the sessions stay (wrk uses them, ``close_sessions`` ends them)."""
    sessions = [Session(url, key, run) for key in keys]
    try:
        await asyncio.gather(*(s.open() for s in sessions))
        return [
            (s.http.headers["mcp-session-id"], s.http.headers["mcp-protocol-version"], key or "")
            for s, key in zip(sessions, keys, strict=True)
        ]
    finally:
        await asyncio.gather(*(s.http.aclose() for s in sessions), return_exceptions=True)


async def _close(url: str, opened: list[tuple[str, str, str]]) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=30) as http:
        for sid, version, key in opened:
            headers = {"mcp-session-id": sid, "mcp-protocol-version": version}
            if key:
                headers["authorization"] = f"Bearer {key}"
            await http.delete(url, headers=headers)


def _script(path: Path, opened: list[tuple[str, str, str]], run: str, tool: str, first_id: int = 0) -> Path:
    """The Lua script of one wrk run; its request ids start after ``first_id``: a session never
    reuses an id (MCP forbids it), and the warm-up run's last calls may still be in flight
    when the measured run starts on the same sessions."""
    rows = ", ".join("{" + ", ".join(_lua_string(v) for v in s) + "}" for s in opened)
    path.write_text(_LUA % {"sessions": "{" + rows + "}", "run": run, "tool": tool, "first_id": first_id})
    return path


def _wrk(url: str, script: Path, threads: int, seconds: float) -> tuple[dict[str, Any], float]:
    """One wrk run; its WRKJSON line and its CPU seconds (user + system)."""
    cmd = [wrk_path(), f"-t{threads}", f"-c{threads}", f"-d{max(1, round(seconds))}s", "--timeout", "30s"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped meanwhile
    p = subprocess.run([*cmd, "-s", str(script), url], capture_output=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in p.stdout.decode().splitlines() if ln.startswith("WRKJSON ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return json.loads(lines[0][len("WRKJSON ") :]), cpu


def drive_wrk(
    url: str,
    tool: str,
    keys: Sequence[str | None],
    seconds: float,
    run: str,
    tmp: Path,
    on_go: Callable[[], None],
    on_done: Callable[[], None],
) -> dict[str, Any]:
    """``len(keys)`` sessions loaded by wrk for ``seconds`` after a one-second warm-up; a row
    shaped like bench/http_load.py's ``drive`` (client CPU is wrk's)."""
    opened = asyncio.run(_open(url, keys, run))
    try:
        _wrk(url, _script(tmp / f"{run}-warm.lua", opened, f"{run}-warm", tool), len(opened), 1)
        script = _script(tmp / f"{run}.lua", opened, run, tool, first_id=1_000_000_000)
        on_go()
        row, cpu = _wrk(url, script, len(opened), seconds)
        on_done()
    finally:
        asyncio.run(_close(url, opened))
    calls = row["requests"]
    return {
        "calls": calls,
        "calls_per_s": round(calls / (row["duration_us"] / 1e6), 1),
        "client_cpu_ms_per_call": round(1000.0 * cpu / calls, 3) if calls else float("nan"),
        "p50_ms": row["p50_us"] / 1000.0,
        "p90_ms": row["p90_us"] / 1000.0,
        "p99_ms": row["p99_us"] / 1000.0,
        "mean_ms": round(row["mean_us"] / 1000.0, 3),
        "ok": row["ok"],
        "misrouted": row["misrouted"],
        "errors": row["errors"] + row["socket_errors"],
        "reconnects": 0,
    }
