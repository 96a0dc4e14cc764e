"""Bad input from a client over stdio: each gets a JSON-RPC error and the session goes on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import IO, Any

import pytest

from tests.conftest import ROOT, SYMBI, initialize_request, symbi_env, write_config
from tests.server.test_stdio_e2e import MUTABLE, mutable_config

RAW = ROOT / "tests/peers/raw_server.py"


class Raw:
    def __init__(self, config: Path, stderr: IO[bytes] | int = subprocess.DEVNULL) -> None:
        self.p = subprocess.Popen(
            [str(SYMBI), "mcp", "--config", str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=symbi_env(),
        )

    def send(self, obj: Any) -> None:
        raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        assert self.p.stdin is not None
        self.p.stdin.write(raw + b"\n")
        self.p.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        return json.loads(self.p.stdout.readline())  # type: ignore[no-any-return]

    def initialize(self) -> None:
        """The 2025-11-25 handshake, answered by the gateway."""
        self.send(initialize_request("2025-11-25"))
        assert self.recv()["result"]["serverInfo"]["name"] == "symbi"
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


def test_malformed_unknown_and_oversized_messages_get_errors(tmp_path: Path) -> None:
    import sys

    cfg = write_config(
        tmp_path,
        f"""
        [mcp]
        max_message_bytes = 65536
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        """,
    )
    r = Raw(cfg)
    try:
        r.send(b"{this is not json")
        assert r.recv()["error"]["code"] == -32700

        r.send({"jsonrpc": "2.0", "id": 7, "no_method": True})
        assert r.recv()["error"]["code"] == -32600

        r.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "1"},
                },
            }
        )
        assert r.recv()["result"]["serverInfo"]["name"] == "symbi"
        r.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

        r.send({"jsonrpc": "2.0", "id": 2, "method": "no/such/method"})
        assert r.recv() == {
            "jsonrpc": "2.0",
            "id": 2,
            "error": {"code": -32601, "message": "Method not found", "data": "no/such/method"},
        }

        big = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "mut__echo", "arguments": {"message": "x" * 100_000}},
        }
        r.send(big)
        err = r.recv()
        assert err["id"] == 3 and err["error"]["code"] == -32600

        r.send(
            {
                "jsonrpc": "2.0",
                "id": 4,
                "method": "tools/call",
                "params": {"name": "mut__echo", "arguments": {"message": "ok"}},
            }
        )
        ok = r.recv()
        assert ok["id"] == 4 and ok["result"]["content"][0]["text"] == "Echo: ok"

        # valid JSON 900 deep (the parser takes 1,024): refused by name before any step walks
        # it (it was a RecursionError in the policy step: an internal error, a huge traceback)
        deep = "[" * 900 + "]" * 900
        line = '{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "mut__echo", '
        r.send(f'{line}"arguments": {{"message": "hi", "x": {deep}}}}}}}'.encode())
        refused = r.recv()
        assert refused["id"] == 5 and refused["result"]["isError"]
        error = refused["result"]["_meta"]["symbi/error"]
        assert error["code"] == "arguments_invalid" and "arguments.x[0][0]" in error["reasons"][0]
    finally:
        r.close()


def test_arguments_with_too_many_members_are_refused_by_default(tmp_path: Path) -> None:
    """150,000 short keys in one call held the event loop ~2 s (each key matched against the
    default policy's redaction rules, then handed to the policy): every other caller waited.
    Past ``mcp.max_argument_members`` (10,000 by default) the call is refused before any of
    that, naming the key; at the limit it passes, and the session goes on. So is one key
    longer than ``MAX_KEY_CHARS``."""
    r = Raw(mutable_config(tmp_path))
    try:
        r.initialize()

        def call(rid: int, keys: int) -> dict[str, Any]:
            args: dict[str, Any] = {"message": "hi", **{f"k{i}": i for i in range(keys)}}
            r.send(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "method": "tools/call",
                    "params": {"name": "mut__echo", "arguments": args},
                }
            )
            return r.recv()

        refused = call(1, 10_000)  # 10,001 members
        assert refused["id"] == 1 and refused["result"]["isError"]
        error = refused["result"]["_meta"]["symbi/error"]
        assert error["code"] == "arguments_invalid" and "mcp.max_argument_members" in error["reasons"][0]
        passed = call(2, 9_999)  # 10,000 members: the limit itself
        assert passed["id"] == 2 and passed["result"]["content"][0]["text"] == "Echo: hi"

        # one key of 3 MB: its words for the redaction rules took ~0.6 s of the loop
        huge = {"message": "hi", "k" * 3_000_000: 1}
        r.send(
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "mut__echo", "arguments": huge},
            }
        )
        refused = r.recv()
        assert refused["id"] == 3 and refused["result"]["_meta"]["symbi/error"]["code"] == "arguments_invalid"
    finally:
        r.close()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_arguments_holding_a_number_json_cannot_carry_are_refused(tmp_path: Path, number: str) -> None:
    """The SDK's parser (pydantic) reads ``NaN``, ``Infinity`` and ``1e400`` (an infinity),
    none of them JSON: the policy was asked about the float (regorus holds ``NaN <= 1000``
    true) and the upstream was sent ``null`` in its place, so the call went on decided on
    one value and made with another. Refused before any step, naming the argument."""
    r = Raw(mutable_config(tmp_path))
    try:
        r.initialize()
        head = '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "mut__echo", '
        r.send(f'{head}"arguments": {{"message": "hi", "limits": [{number}]}}}}}}'.encode())
        refused = r.recv()
        assert refused["id"] == 2 and refused["result"]["isError"]
        error = refused["result"]["_meta"]["symbi/error"]
        assert error["code"] == "arguments_invalid" and "arguments.limits[0]" in error["reasons"][0]
        r.send(
            {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "mut__echo", "arguments": {"message": "ok", "limits": [1e300, -0.0]}},
            }
        )
        assert r.recv()["result"]["content"][0]["text"] == "Echo: ok"  # finite numbers pass
    finally:
        r.close()


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "sdk"])
def test_an_integer_past_64_bits_reaches_the_upstream_exactly(tmp_path: Path, lane: bool) -> None:
    """orjson (the fast lane's parser) reads an integer past 64 bits as a float: the upstream
    was sent 1.2345678901234568e+29 for 123456789012345678901234567890 through the lane, the
    exact integer through the SDK. The same call is made alike on both paths."""
    import sys

    cfg = write_config(
        tmp_path,
        f"""
        [mcp]
        stdio_fast_lane = {"true" if lane else "false"}
        [servers.mut]
        command = "{sys.executable}"
        args = ["{RAW}"]
        verification = "warn"
        """,
    )
    r = Raw(cfg)
    try:
        r.initialize()
        for rid, number in enumerate(
            ["123456789012345678901234567890", "-9223372036854775809", "18446744073709551615"], start=2
        ):
            head = f'{{"jsonrpc": "2.0", "id": {rid}, "method": "tools/call", "params": {{"name": "mut__t", '
            r.send(f'{head}"arguments": {{"mode": "ok", "message": {number}}}}}}}'.encode())
            got = r.recv()
            assert got["id"] == rid and got["result"]["content"][0]["text"] == number
    finally:
        r.close()


@pytest.mark.parametrize("lane", [True, False], ids=["lane", "sdk"])
def test_requests_in_flight_are_bounded_by_max_concurrent_connections(tmp_path: Path, lane: bool) -> None:
    """A client that writes requests and never reads its replies: each request held a task
    and its reply (200,000 pings grew the gateway past 2 GB in a minute, and on). Beyond
    ``mcp.max_concurrent_connections`` requests in flight (both paths counted) a request is
    refused with its id; the refusal waits for the client to read, so such a client stops
    being read (its pipe fills) instead. Answered requests free their places."""
    import sys
    import time

    cfg = write_config(
        tmp_path,
        f"""
        [mcp]
        max_concurrent_connections = 3
        stdio_fast_lane = {"true" if lane else "false"}
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        """,
    )
    r = Raw(cfg)
    try:
        r.initialize()
        for rid in (1, 2, 3):
            params = {"name": "mut__slow", "arguments": {"seconds": 30}}
            r.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})
        r.send({"jsonrpc": "2.0", "id": 4, "method": "ping"})
        refused = r.recv()
        assert refused["id"] == 4 and refused["error"]["code"] == -32000
        assert refused["error"]["data"] == {"code": "too_many_connections"}
        r.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}})
        for rid in range(5, 200):  # the cancelled call settles soon after: a place is free again
            r.send({"jsonrpc": "2.0", "id": rid, "method": "ping"})
            got = r.recv()
            assert got["id"] == rid
            if "result" in got:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the cancelled call never freed its place")
    finally:
        r.close()


def test_requests_from_a_file_and_replies_to_a_file(tmp_path: Path) -> None:
    """``symbi mcp < requests.jsonl > replies.jsonl``: the event loop cannot watch a regular file
    (nor /dev/null); the gateway reads and writes them anyway and exits at the end of its input.
    (Requests still in flight at the end of the input are dropped with the session, as the SDK's
    server does when its input closes: only the handshake, answered in line, is checked.)"""
    cfg = write_config(tmp_path, "")
    requests = tmp_path / "requests.jsonl"
    init = {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "script", "version": "1"},
    }
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
    ]
    requests.write_text("".join(json.dumps(m) + "\n" for m in lines) + "{not json\n")
    replies = tmp_path / "replies.jsonl"
    with requests.open("rb") as fin, replies.open("wb") as fout:
        done = subprocess.run(
            [str(SYMBI), "mcp", "--config", str(cfg)],
            stdin=fin,
            stdout=fout,
            stderr=subprocess.DEVNULL,
            env=symbi_env(),
            timeout=60,
            check=False,
        )
    assert done.returncode == 0
    got = {m.get("id"): m for m in map(json.loads, replies.read_text().splitlines())}
    assert got[1]["result"]["serverInfo"]["name"]
    assert got[None]["error"]["code"] == -32700


def test_an_empty_stdin_ends_the_session(tmp_path: Path) -> None:
    """stdin from /dev/null (a launcher that gives none): the gateway ends, it does not hang."""
    done = subprocess.run(
        [str(SYMBI), "mcp", "--config", str(write_config(tmp_path, ""))],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=symbi_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
