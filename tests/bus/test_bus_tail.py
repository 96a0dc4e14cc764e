"""``symbi bus tail`` on real stores (SQLite, Redis): the N newest rows, in the order and with
the ties of a stable sort of every row by time, but only N held while scanning; ``-n`` checked."""

from __future__ import annotations

import dataclasses
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.typing import EncodableT, FieldT

from gateway.bus.embedded import open_db
from gateway.bus.message import SecureMessage
from gateway.bus.redis_backend import PREFIX
from gateway.cli import EXIT_OK, EXIT_USAGE, main
from tests.bus.conftest import RedisServer
from tests.conftest import write_config

pytestmark = pytest.mark.slow

INBOXES = ("ag-c", "ag-a", "ag-b")  # read sorted by inbox: not the order they were written in


def _message(n: int, inbox: str) -> SecureMessage:
    # unsigned: tail shows what is stored; many equal timestamps (n // 7), across inboxes too
    topic = "team.news" if n % 3 == 0 else None
    return SecureMessage(
        f"m-{n:05d}",
        "ag-s",
        inbox,
        topic,
        "direct",
        1_000 + n // 7,
        10**13,
        None,
        None,
        b"n" * 12,
        b"c",
        b"s",
    )


def _messages(count: int) -> list[tuple[str, SecureMessage]]:
    return [(INBOXES[n % 3], _message(n, INBOXES[n % 3])) for n in range(count)]


def _fill_sqlite(tmp_path: Path, stored: list[tuple[str, SecureMessage]]) -> Path:
    db = open_db(tmp_path / "data" / "bus.db")
    with db:
        db.execute("BEGIN")
        for inbox, m in stored:
            f = m.to_fields()
            db.execute(
                "INSERT INTO messages(inbox, id, expires_ms, ts_ms, h, n, c, s) VALUES (?,?,?,?,?,?,?,?)",
                (inbox, m.id, m.expires_ms, m.timestamp_ms, f["h"], f["n"], f["c"], f["s"]),
            )
        db.execute("COMMIT")
    db.close()
    return write_config(tmp_path, "")


def _fill_redis(url: str, tmp_path: Path, stored: list[tuple[str, SecureMessage]]) -> Path:
    r = redis.Redis.from_url(url)
    try:
        pipe = r.pipeline(transaction=False)
        for inbox, m in stored:
            pipe.xadd(PREFIX + "inbox:" + inbox, cast(dict[FieldT, EncodableT], m.to_fields()))
        pipe.execute()
    finally:
        r.close()
    return write_config(tmp_path, f'[bus]\nbackend = "redis"\nurl = "{url}"\n')


def _expected(stored: list[tuple[str, SecureMessage]], n: int, topic: str | None) -> list[str]:
    """The ids as tail printed them before it bounded what it holds: every row, read in the
    store's order (inbox, then arrival), sorted stably by time, the last n."""
    order = sorted(range(len(stored)), key=lambda i: stored[i][0])  # stable: arrival within an inbox
    rows = [stored[i][1] for i in order if topic is None or stored[i][1].topic == topic]
    rows.sort(key=lambda m: m.timestamp_ms)
    return [m.id for m in rows[-n:]] if n else []


def _tail_ids(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str) -> tuple[list[str], list[str]]:
    """The ids ``tail`` printed, as JSON lines and as text lines."""
    capsys.readouterr()
    assert main(["bus", "tail", "--json", "--config", str(cfg), *args]) == EXIT_OK
    as_json = [json.loads(x)["id"] for x in capsys.readouterr().out.splitlines()]
    assert main(["bus", "tail", "--config", str(cfg), *args]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    as_text = [w.removeprefix("id=") for x in lines for w in x.split() if w.startswith("id=")]
    return as_json, as_text


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_tail_prints_the_newest_n_in_time_order_ties_as_stored(
    store: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = _messages(400)
    if store == "redis":
        server = cast(RedisServer, request.getfixturevalue("redis_server"))
        cfg = _fill_redis(server.url, tmp_path, stored)
    else:
        cfg = _fill_sqlite(tmp_path, stored)
    # n cuts through a run of equal timestamps (7 a run): which of them are kept, and their order
    for n, topic in ((20, None), (25, None), (10, "team.news"), (400, None), (1_000, None), (0, None)):
        args = ["-n", str(n)] + ([] if topic is None else ["--topic", topic])
        want = _expected(stored, n, topic)
        assert _tail_ids(capsys, cfg, *args) == (want, want), (n, topic)
    assert _tail_ids(capsys, cfg)[0] == _expected(stored, 20, None)  # the default


def _peak_of(run: Callable[[], int]) -> int:
    tracemalloc.start()
    try:
        assert run() == EXIT_OK
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tail_holds_only_the_n_newest_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # every row was kept to be sorted: a bus of millions held whole to print 20
    small, large = tmp_path / "small", tmp_path / "large"
    cfg_small = _fill_sqlite(small, _messages(500))
    cfg_large = _fill_sqlite(large, _messages(5_000))

    def tail(cfg: Path) -> Callable[[], int]:
        return lambda: main(["bus", "tail", "-n", "5", "--json", "--config", str(cfg)])

    tail(cfg_small)()  # (imports and first-use caches outside the measure)
    capsys.readouterr()
    peak_small, peak_large = _peak_of(tail(cfg_small)), _peak_of(tail(cfg_large))
    assert capsys.readouterr().out.count("\n") == 10  # 5 a run
    # ten times the rows, 4,500 more of them: at least ~500 bytes each if they were held
    assert peak_large - peak_small < 4_500 * 100, (peak_small, peak_large)


@pytest.mark.parametrize("lines", ["-1", "-20", "x"])
def test_a_negative_count_is_a_usage_error(
    lines: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # -n -1 printed every row (a slice from the end)
    cfg = _fill_sqlite(tmp_path, _messages(30))
    with pytest.raises(SystemExit) as refused:
        main(["bus", "tail", "-n", lines, "--config", str(cfg)])
    assert refused.value.code == EXIT_USAGE and capsys.readouterr().out == ""


def test_a_time_past_what_the_platform_shows_is_printed_raw(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # tail checks no signature: anyone who may write to the bus can store ts 10**20 (Redis keeps
    # it as text; SQLite's integers stop at 2**63, which gmtime shows), always the newest, and
    # the text form ended every tail in a traceback (gmtime's OSError)
    far = dataclasses.replace(_message(1, "ag-a"), timestamp_ms=10**20)
    cfg = _fill_redis(redis_server.url, tmp_path, [("ag-a", far), *_messages(3)])
    capsys.readouterr()
    assert main(["bus", "tail", "--config", str(cfg)]) == EXIT_OK
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and "id=m-00001" in printed[-1].split(), printed
    assert printed[-1].split()[0] == f"{10**20}ms"  # its raw milliseconds, as stored
