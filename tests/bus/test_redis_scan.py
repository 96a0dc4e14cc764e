"""``symbi bus`` on a real Redis: an inbox read a page a reply, only Redis's errors taken for
an unreachable bus, and a reader that closes the output early (``symbi bus tail | head``)."""

from __future__ import annotations

import base64
import socket
import subprocess
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.typing import EncodableT, FieldT

from gateway.bus.message import SecureMessage
from gateway.bus.redis_backend import PREFIX, SCAN_PAGE, redis_scan, sync_client
from gateway.cli import EXIT_PIPE
from tests.bus.conftest import RedisServer
from tests.conftest import SYMBI, symbi_env, write_config

pytestmark = pytest.mark.slow

SECRET = base64.b64encode(bytes(range(32))).decode()
STORED = 2_500  # more than two pages


def _message(n: int) -> SecureMessage:
    # unsigned: the scan reads what is stored, verify (not tested here) checks signatures
    return SecureMessage(
        f"m-{n:05d}", "ag-a", "ag-b", None, "direct", 1_000 + n, 10**13, None, None, b"n" * 12, b"c", b"s"
    )


def _fill(url: str) -> None:
    r = redis.Redis.from_url(url)
    try:
        pipe = r.pipeline(transaction=False)
        for n in range(STORED):
            pipe.xadd(PREFIX + "inbox:ag-b", cast(dict[FieldT, EncodableT], _message(n).to_fields()))
        pipe.execute()
    finally:
        r.close()


def _xrange_calls(r: redis.Redis) -> int:
    stats = cast(dict[str, dict[str, int]], r.info("commandstats"))
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


def test_an_inbox_is_read_a_page_a_reply_each_entry_once_in_order(redis_server: RedisServer) -> None:
    # one XRANGE with no COUNT read a whole inbox as one reply (a million entries held in
    # memory, and one reply the read timeout had to cover)
    _fill(redis_server.url)
    with sync_client(redis_server.url) as r:
        before = _xrange_calls(r)
        ids = [s.msg.id if s.msg is not None else s.error for s in redis_scan(r)]
        calls = _xrange_calls(r) - before
    assert ids == [f"m-{n:05d}" for n in range(STORED)]  # all, in order, none twice
    assert calls == STORED // SCAN_PAGE + 1 > 1  # a page a reply (the last one short)


def test_the_callers_own_os_error_is_not_taken_for_an_unreachable_bus(redis_server: RedisServer) -> None:
    # any OSError in the block (a closed stdout's BrokenPipeError) was BusUnavailable
    with pytest.raises(BrokenPipeError), sync_client(redis_server.url) as r:
        r.ping()
        raise BrokenPipeError(32, "the caller's own pipe")


@pytest.mark.parametrize("output", ["pipe", "socket"])
def test_a_reader_that_closes_early_ends_tail_quietly(
    tmp_path: Path, redis_server: RedisServer, output: str
) -> None:
    # `symbi bus tail | head -1`: a BrokenPipeError traceback (or a bus error), not a quiet end;
    # the same with stdout a stream socket (a libuv parent's stdio: POLLHUP, not POLLERR)
    _fill(redis_server.url)
    cfg = write_config(
        tmp_path, f'[bus]\nbackend = "redis"\nsecret = "{SECRET}"\nurl = "{redis_server.url}"\n'
    )
    ours, theirs = socket.socketpair() if output == "socket" else (None, None)
    for end in (ours, theirs):  # small buffers: the output stays far over them on any host
        if end is not None:
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    proc = subprocess.Popen(
        [str(SYMBI), "bus", "tail", "-n", str(STORED), "--config", str(cfg)],
        stdout=subprocess.PIPE if theirs is None else theirs.fileno(),
        stderr=subprocess.PIPE,
        env=symbi_env(),
    )
    if theirs is not None:
        theirs.close()
    reader = proc.stdout if ours is None else ours.makefile("rb")
    assert reader is not None and proc.stderr is not None
    first = reader.readline()  # the output is far over a buffer: the rest must wait
    reader.close()
    if ours is not None:
        ours.close()
    err = proc.stderr.read()
    assert proc.wait(60) == EXIT_PIPE, err
    assert b"m-" in first and err == b""
