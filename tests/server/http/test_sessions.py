"""Session hygiene on a real server: a per-principal quota, revoked keys free their slots,
slow headers and slow bodies are cut off (attacks from issue 11)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import ResourceUpdated

from gateway.config import load_config
from gateway.errors import TooManyListens
from gateway.server.auth import ApiKeyStore
from gateway.server.sessions import QUOTA_LINE
from tests.bus.test_http_bus import bus_config
from tests.server._http import trickle_until_closed
from tests.server.http.conftest import (
    bearer,
    everything_config,
    jwt_http_section,
    make_idp,
    make_keys,
    run_server,
)
from tests.server.http.test_auth import INIT, MCP_HEADERS


def open_session(base: str, key: str) -> httpx.Response:
    return httpx.post(base, json=INIT, headers={**MCP_HEADERS, **bearer(key)}, timeout=10)


def test_one_principal_cannot_take_every_session_slot(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, http_extra="max_sessions = 10\nmax_sessions_per_principal = 3")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        opened = [open_session(run.mcp, keys.user) for _ in range(5)]
        assert [r.status_code for r in opened] == [200, 200, 200, 429, 429]
        # another principal still gets in
        assert open_session(run.mcp, keys.other_user).status_code == 200


def test_a_burst_of_openings_gets_exactly_the_quota(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Concurrent initialize requests of one principal: up to the limit all succeed (an opening
    whose session exists is not counted twice), beyond it the rest are refused. Each refusal's
    log line counts what reached the limit: the sessions held and the openings under way (it
    gave the held ones only, "holds 0 sessions" for a refusal by openings)."""
    cfg = everything_config(tmp_path, http_extra="max_sessions = 50\nmax_sessions_per_principal = 6")
    keys = make_keys(cfg)
    caplog.set_level(logging.WARNING, logger="symbi.http.sessions")
    with run_server(cfg) as run, ThreadPoolExecutor(12) as pool:
        for burst, want in ((6, 6), (6, 0)):  # the first burst fills the quota, the second finds it full
            codes = list(pool.map(lambda _: open_session(run.mcp, keys.user).status_code, range(burst)))
            assert sorted(codes) == [200] * want + [429] * (burst - want)
        other = list(pool.map(lambda _: open_session(run.mcp, keys.other_user).status_code, range(12)))
        assert sorted(other) == [200] * 6 + [429] * 6  # 12 at once: no more than 6 get through
    refusals = [r for r in caplog.records if r.msg == QUOTA_LINE]
    assert len(refusals) == 12
    for r in refusals:
        assert isinstance(r.args, tuple)
        _who, held, opening, limit = r.args
        assert isinstance(held, int) and isinstance(opening, int) and limit == 6
        assert held + opening >= limit


def test_a_revoked_keys_sessions_free_their_slots(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, http_extra="max_sessions = 3\nmax_sessions_per_principal = 3")
    keys = make_keys(cfg)
    temp, rec = keys.store.create("mallory", ("developer",))
    with run_server(cfg) as run:
        assert [open_session(run.mcp, temp).status_code for _ in range(3)] == [200, 200, 200]
        assert open_session(run.mcp, keys.user).status_code == 503  # every slot is taken
        assert keys.store.revoke(rec.id)
        deadline = time.monotonic() + 20
        while (status := open_session(run.mcp, keys.user).status_code) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200


def _raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(10)
    return s


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


@pytest.mark.slow
def test_a_trickled_body_is_cut_off(tmp_path: Path) -> None:
    """Attack: send a body one byte at a time, slowly, to hold the connection (and a worker)."""
    cfg = everything_config(tmp_path, http_extra="body_timeout_s = 1.0")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        s = _raw(_port(run.base))
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {keys.user}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            "Content-Length: 200\r\n\r\n"
        )
        s.sendall(head.encode())
        answer = b""
        for _ in range(20):  # at most 20 bytes, 0.3 s apart: 6 s, well past the 1 s deadline
            try:
                s.sendall(b" ")
            except OSError:
                break
            time.sleep(0.3)
            s.setblocking(False)
            try:
                answer += s.recv(4096)
            except BlockingIOError:
                pass
            except OSError:
                break
            finally:
                s.setblocking(True)
            if answer:
                break
        s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]


@pytest.mark.slow
def test_trickled_headers_are_cut_off(tmp_path: Path) -> None:
    """Attack (slowloris): send the request headers one byte at a time."""
    cfg = everything_config(tmp_path, http_extra="header_timeout_s = 1.0")
    with run_server(cfg) as run:
        s = _raw(_port(run.base))
        closed = False
        for ch in b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 40:
            try:
                s.sendall(bytes([ch]))
            except OSError:
                closed = True
                break
            time.sleep(0.3)
            s.setblocking(False)
            try:
                if s.recv(4096) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            finally:
                s.setblocking(True)
        s.close()
        assert closed


@pytest.mark.slow
def test_trickled_headers_after_a_kept_alive_request_are_cut_off(tmp_path: Path) -> None:
    """Attack (slowloris on a kept-alive connection): one honest request, then the next
    request's headers one byte at a time."""
    cfg = everything_config(tmp_path, http_extra="header_timeout_s = 1.0")
    with run_server(cfg) as run:
        s = _raw(_port(run.base))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        closed = trickle_until_closed(s)
        s.close()
        assert closed  # within the ~18 s of trickling; uvicorn's keep-alive timer stops at the first byte


def test_session_ownership_is_per_source_and_issuer() -> None:
    """Attack: a JWT carrying a ``key_id`` claim was bound as that API key (``apikey:<id>``),
    and JWTs with the same subject from two issuers shared their sessions."""
    from gateway.context import Principal
    from gateway.server.middleware import access_token as _access_token

    key = Principal(id="alice", claims={"key_id": "k1"}, source="key")
    forged = Principal(
        id="alice", claims={"sub": "alice", "key_id": "k1"}, source="jwt", issuer="https://a.example"
    )
    other = Principal(id="alice", claims={"sub": "alice"}, source="jwt", issuer="https://b.example")
    owners = {_access_token(p).client_id for p in (key, forged, other)}
    assert len(owners) == 3 and _access_token(key).client_id == "apikey:k1"


def test_the_revoked_key_sweep_reads_each_key_once_per_sweep(tmp_path: Path) -> None:
    """Three sessions of one key and one of another: each sweep asks the key store about each
    key once, in one go (not once per session: 1,000 idle sessions were 1,000 thread hops a
    second). The gateway's own sweep runs too; this one only reads (every key is live)."""
    import anyio

    from gateway.server.sessions import sweep_revoked

    cfg = everything_config(tmp_path, http_extra="max_sessions_per_principal = 3")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        assert [open_session(run.mcp, keys.user).status_code for _ in range(3)] == [200] * 3
        assert open_session(run.mcp, keys.other_user).status_code == 200
        asked: list[str] = []

        def is_live(kid: str) -> bool:
            asked.append(kid)
            return True

        async def sweep_a_while() -> None:
            with anyio.move_on_after(1.0):
                await sweep_revoked(run.state.manager, is_live, 0.05)

        anyio.run(sweep_a_while)
    kids = sorted(set(asked))
    assert len(kids) == 2  # bob's key and carol's
    sweeps = len(asked) // 2
    assert sweeps >= 2 and asked == kids * sweeps


def test_the_protocol_marks_a_body_received_only_once_it_is_whole() -> None:
    """``BODY_RECEIVED`` (BodyDeadline then reads without a timer) is in a request's scope only
    when its whole body has arrived: not while the body is still coming, so a trickled body
    still meets the deadline (the 408 tests above)."""

    from gateway.server.sessions import BODY_RECEIVED

    seen: list[tuple[bool, bool]] = []

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        at_start = bool(scope.get(BODY_RECEIVED))
        message = await receive()  # type: ignore[operator]
        while message.get("more_body"):
            message = await receive()  # type: ignore[operator]
        seen.append((at_start, bool(scope.get(BODY_RECEIVED))))
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    with _served(app) as (port, _), _raw(port) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\nab")
        time.sleep(0.3)  # the app has started with half the body
        s.sendall(b"cd")
        assert s.recv(4096).startswith(b"HTTP/1.1 204")
    assert seen == [(False, True)]


# -- a response's head and body in one write (HeldHead) ----------------------------------------


class _Writes:
    """The connection's transport with its writes recorded: the seam where the protocol hands
    bytes to the kernel (uvloop's transport itself cannot be watched)."""

    def __init__(self, transport: Any, log: list[bytes]) -> None:
        self._transport = transport
        self._log = log

    def write(self, data: bytes) -> None:
        self._log.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@contextlib.contextmanager
def _served(app: Any) -> Iterator[tuple[int, list[bytes]]]:
    """``app`` on real uvicorn with the gateway's protocol (uvloop, as ``symbi serve`` runs it);
    the port and every write the protocol made."""
    import threading

    import uvicorn

    from gateway.server.sessions import http_protocol
    from tests.conftest import free_port

    writes: list[bytes] = []
    base = http_protocol(10.0)

    class Watched(base):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(_Writes(transport, writes))

    port = free_port()
    config = uvicorn.Config(app, port=port, log_level="critical", http=Watched, lifespan="off", loop="uvloop")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        yield port, writes
    finally:
        server.should_exit = True
        thread.join(10)


def _read_until(s: socket.socket, end: bytes) -> bytes:
    got = b""
    while not got.endswith(end):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


REQUEST = b"GET /%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_a_response_head_and_body_leave_in_one_write() -> None:
    """Two pipelined requests: each response is one write (head and body together, in order)
    and the client reads exactly what uvicorn wrote before (status line, headers, body)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": body})

    with _served(app) as (port, writes), _raw(port) as s:
        s.sendall(REQUEST % 1 + REQUEST % 2)
        got = _read_until(s, b"/2")
    head = b"HTTP/1.1 200 OK\r\ndate: "
    assert len(writes) == 2 and all(w.startswith(head) for w in writes)
    assert writes[0].endswith(b"content-length: 2\r\n\r\n/1") and writes[1].endswith(b"\r\n\r\n/2")
    assert got == b"".join(writes)


def test_a_held_head_leaves_while_the_body_waits() -> None:
    """An event stream's head reaches the client at once although its first event comes much
    later (held only until the loop's step ends), then the event on its own."""
    import asyncio

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        head = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await asyncio.sleep(3)
        await send({"type": "http.response.body", "body": b"data: x\r\n\r\n"})

    with _served(app) as (port, writes), _raw(port) as s:
        s.sendall(REQUEST % 1)
        s.settimeout(1.5)  # well before the event
        head = _read_until(s, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
        s.settimeout(10)
        assert _read_until(s, b"0\r\n\r\n") == b"b\r\ndata: x\r\n\r\n\r\n0\r\n\r\n"
    assert len(writes) == 2


def test_a_held_head_is_sent_before_its_connection_closes() -> None:
    """An app that fails after starting its response: uvicorn closes the connection, and the
    head it held still goes out before the end of the stream."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("after the head")

    with _served(app) as (port, _), _raw(port) as s:
        s.sendall(REQUEST % 1)
        got = _read_until(s, b"never")  # to the end of the stream
    assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"content-length: 5\r\n\r\n")


def test_expect_100_continue_still_gets_its_interim_answer() -> None:
    """``Expect: 100-continue``: the interim answer is the cycle's first write (held only to the
    step's end), the client sends its body after it, the final answer follows."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": message["body"]})

    with _served(app) as (port, _), _raw(port) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert _read_until(s, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abcd")
        got = _read_until(s, b"abcd")
    assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"\r\n\r\nabcd")


def test_headers_past_their_size_are_refused_431(tmp_path: Path) -> None:
    """httptools sets no limit on a request's headers: http.max_header_bytes does (431, closed)."""
    cfg = everything_config(tmp_path, http_extra="max_header_bytes = 32768")
    with run_server(cfg) as run:
        for size, refused in ((20_000, False), (100_000, True)):
            s = _raw(_port(run.base))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * size + b"\r\n\r\n")
            answer = s.recv(4096)
            s.close()
            assert answer.startswith(b"HTTP/1.1 431") is refused, answer[:80]
            assert refused or answer.startswith(b"HTTP/1.1 200")


def test_unfinished_huge_headers_cannot_take_the_gateways_memory(tmp_path: Path) -> None:
    """Attack (unauthenticated, on memory): 200 connections each send 3 MB of a header they
    never finish, inside the header deadline. The parser kept every byte: 300 such connections
    took a gateway from 148 to 919 MB. Each is refused once past http.max_header_bytes."""
    from tests.server._http import serve_process

    cfg = everything_config(tmp_path)
    with serve_process(cfg) as (base, proc):
        grown, answers = _hold_200(base, proc.pid, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ", 48)
    assert grown < 100 * 1024, f"{grown} kB more"  # 200 x 3 MB held would be 600 MB
    assert sum(a.startswith(b"HTTP/1.1 431") or a == b"" for a in answers) >= 190


def _hold_200(base: str, pid: int, head: bytes, chunks: int) -> tuple[int, list[bytes]]:
    """200 connections each send ``head`` then ``chunks`` x 64 KiB (stopping where the server
    refuses and closes): the gateway's RSS growth in kB meanwhile, and each one's answer (b""
    for a connection reset before it was read; a server that never answers times out)."""
    before = _rss_kb(pid)
    socks = []
    for _ in range(200):
        s = _raw(_port(base))
        s.sendall(head)
        with contextlib.suppress(OSError):  # refused and closed on the way: what should happen
            for _ in range(chunks):
                s.sendall(b"a" * 65536)
        socks.append(s)
    grown = _rss_kb(pid) - before
    answers = []
    for s in socks:
        try:
            answers.append(s.recv(64))
        except (ConnectionResetError, BrokenPipeError):  # refused before it read the answer
            answers.append(b"")
        s.close()
    return grown, answers


def _rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def test_unauthenticated_bodies_are_not_read(tmp_path: Path) -> None:
    """Attack (unauthenticated, on memory): 200 connections POST nearly 4 MB each to /mcp with
    no credentials. The body was read whole (buffered for the body deadline) before the
    credentials were looked at: +300 MB, answered 408 only at the deadline. Now 401 off the
    headers, and a body outside /mcp and /api (the dashboard's forms) is refused past 64 KiB."""
    from gateway.server.sessions import SMALL_BODY_BYTES
    from tests.server._http import serve_process

    cfg = everything_config(tmp_path)
    with serve_process(cfg) as (base, proc):
        head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4000000\r\n\r\n"
        grown, answers = _hold_200(base, proc.pid, head, 60)
        big = httpx.post(f"{base}/login", content=b"k=" + b"a" * SMALL_BODY_BYTES, timeout=30)
    assert grown < 100 * 1024, f"{grown} kB more"
    assert sum(a.startswith(b"HTTP/1.1 401") for a in answers) >= 190, answers[:3]
    assert big.status_code == 413


# -- 2026-era listen streams: one request each, authenticated once, held open ----------------


@contextlib.asynccontextmanager
async def _modern(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as hc,
        Client(streamable_http_client(url, http_client=hc), mode="2026-07-28") as c,
    ):
        yield c


async def _events_until_end(sub: Any, timeout: float) -> tuple[list[Any], bool]:
    """What ``sub`` delivers within ``timeout``, and whether it ended by then."""
    got: list[Any] = []
    with anyio.move_on_after(timeout):
        async for event in sub:
            got.append(event)
        return got, True
    return got, False


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_revoked_keys_listen_stream_ends_and_hears_nothing_more(tmp_path: Path) -> None:
    """Attack: a key's 2026 listen stream on its inbox outlived the key's revocation and kept
    hearing of every message sent to it (only handshake-era sessions were swept)."""
    cfg = bus_config(tmp_path)
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    sender = store.create("tester", ("tester",))[0]
    key, rec = store.create("tester", ("tester",))
    with run_server(cfg) as run:
        async with (
            _modern(run.mcp, bearer(sender)) as a,
            _modern(run.mcp, bearer(key)) as b,
            b.listen(resource_subscriptions=["bus://inbox"]) as sub,
        ):
            inbox = await b.read_resource("bus://inbox")
            b_id = json.loads(inbox.contents[0].text)["agent"]  # type: ignore[union-attr]
            assert store.revoke(rec.id)
            await anyio.sleep(2.5)  # the sweep runs every second
            sent = await a.call_tool("bus__send", {"to": b_id, "body": "after the revocation"})
            assert not sent.is_error, sent
            got, ended = await _events_until_end(sub, 5)
            assert ResourceUpdated(uri="bus://inbox") not in got
            assert ended


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_jwts_listen_stream_ends_when_the_token_expires(tmp_path: Path) -> None:
    idp = make_idp(tmp_path)
    cfg = everything_config(tmp_path, http_extra=jwt_http_section(idp.jwks_path))
    with run_server(cfg) as run:
        token = idp.token(exp=int(time.time()) + 3)
        async with (
            _modern(run.mcp, {"Authorization": f"Bearer {token}"}) as c,
            c.listen(tools_list_changed=True) as sub,
        ):
            _, ended = await _events_until_end(sub, 10)
            assert ended


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_one_key_cannot_take_every_connection_slot_with_listen_streams(tmp_path: Path) -> None:
    """Attack: one API key opened ``mcp.max_concurrent_connections`` listen streams (each an
    open POST, no per-caller bound): every other caller's request was refused with 503."""
    cfg = everything_config(
        tmp_path,
        top_extra="[mcp]\nmax_concurrent_connections = 20",
        http_extra="max_listens_per_principal = 4",
    )
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        async with contextlib.AsyncExitStack() as stack:
            c = await stack.enter_async_context(_modern(run.mcp, bearer(keys.user)))
            refused = None
            for _ in range(20):
                try:
                    await stack.enter_async_context(c.listen(tools_list_changed=True))
                except MCPError as e:
                    refused = e
                    break
            assert refused is not None and refused.data["code"] == TooManyListens.code
            other = await anyio.to_thread.run_sync(lambda: open_session(run.mcp, keys.other_user))
            assert other.status_code == 200


def _stream_ends(base: str, headers: dict[str, str], within: float) -> bool:
    """Whether the session's GET stream (opened: 200) is ended by the server: True, or False
    when nothing more came for ``within`` seconds and it was still open."""
    timeout = httpx.Timeout(10, read=within)
    with httpx.stream("GET", base, headers=headers, timeout=timeout) as r:
        assert r.status_code == 200
        try:
            for _ in r.iter_bytes():
                pass
        except httpx.ReadTimeout:
            return False
        return True


def test_a_get_stream_ends_when_its_token_expires_and_opens_again_with_a_fresh_one(
    tmp_path: Path,
) -> None:
    """Attack: a handshake-era session's GET stream opened with a JWT kept receiving the
    session's notifications long after the token expired (only API keys were swept)."""
    idp = make_idp(tmp_path)
    cfg = everything_config(tmp_path, http_extra=jwt_http_section(idp.jwks_path))
    with run_server(cfg) as run:
        short = {"Authorization": f"Bearer {idp.token(exp=int(time.time()) + 4)}"}
        r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **short}, timeout=10)
        sid = r.headers["mcp-session-id"]
        session = {"mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        httpx.post(run.mcp, json=note, headers={**MCP_HEADERS, **short, **session}, timeout=10)
        stream = {"Accept": "text/event-stream", **session}
        assert _stream_ends(run.mcp, {**short, **stream}, within=12)
        # the session stays: a fresh token opens its stream again (and it stays open)
        fresh = {"Authorization": f"Bearer {idp.token()}"}
        assert not _stream_ends(run.mcp, {**fresh, **stream}, within=3)


def test_stream_expiry_keeps_only_open_sessions_streams() -> None:
    from gateway.context import Principal
    from gateway.server.sessions import StreamExpiry

    token = Principal(id="dana", source="jwt", issuer="https://idp", claims={"exp": 100})
    key = Principal(id="bob", source="key", claims={"key_id": "0123456789ab"})
    streams = StreamExpiry()
    streams.opened("a", token)
    streams.opened("b", token)
    streams.opened("c", token)
    streams.opened("c", key)  # opened again with an API key: no expiry (the revocation sweep's)
    assert streams.due(99.0, {"a", "b"}) == [] and len(streams) == 2
    assert streams.due(101.0, {"a"}) == ["a"]  # b's session is gone: forgotten, not closed
    assert len(streams) == 0
