"""``symbi bus stats|verify|tail``: the agent bus for operators (metadata only, never bodies)."""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from gateway.cli import HELP, whole_number
from gateway.errors import BusUnavailable

# the bus (its core, crypto) and the config models are imported as a command runs: at the top
# they were ~0.5 s of CPU in every `symbi bus ... --help` and parse error
if TYPE_CHECKING:
    import redis

    from gateway.bus.backend import StoredMessage
    from gateway.bus.crypto import PublicKeys
    from gateway.config.model import Config


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    b = sub.add_parser("bus", help=HELP["bus"])
    bs = b.add_subparsers(dest="bus_command", metavar="ACTION")

    s = bs.add_parser("stats", help="counters and what waits in each inbox")
    s.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    s.set_defaults(func=_stats)

    v = bs.add_parser("verify", help="check every stored message's signature and the chain of ids")
    v.add_argument("--config", type=Path, default=None)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=_verify)

    t = bs.add_parser("tail", help="the last stored messages (metadata only)")
    t.add_argument("--config", type=Path, default=None)
    t.add_argument("--topic", default=None, help="only messages on this topic")
    t.add_argument(
        "-n",
        "--lines",
        type=whole_number(0),
        default=20,
        metavar="N",
        help="how many, the newest (default 20; 0: none)",
    )
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_tail)

    b.set_defaults(func=lambda args: (b.print_help(sys.stderr), 2)[1])


class _Source:
    """Read-only access to the configured backend's messages and key directory: one client (a
    Redis client or a read-only SQLite connection) per command, opened at entry and closed at
    exit. On Redis, a failure anywhere in the block is ``BusUnavailable`` (``sync_client``)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._open = contextlib.ExitStack()
        self._r: redis.Redis | None = None
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> Self:
        if self.cfg.bus.backend == "redis":
            from gateway.bus.redis_backend import sync_client

            assert self.cfg.bus.url is not None  # (the config model requires it with redis)
            self._r = self._open.enter_context(sync_client(self.cfg.bus.url))
            return self
        path = self.cfg.bus_path
        from gateway.bus.embedded import open_db

        try:  # a data dir or store closed to this user, a file that is no database
            if not path.exists():
                raise BusUnavailable(f"no bus store at {path} (the gateway has not run with this data dir)")
            self._db = self._open.enter_context(contextlib.closing(open_db(path, readonly=True)))
            # (a read-only open reads nothing: a file that is no database fails here)
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except (sqlite3.Error, OSError) as e:
            self._open.close()
            raise self._unreadable(e) from e
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        suppressed = self._open.__exit__(kind, err, tb)
        if isinstance(err, sqlite3.Error):  # (a store damaged or locked away under the command)
            raise self._unreadable(err) from err
        return suppressed

    def _unreadable(self, e: sqlite3.Error | OSError) -> BusUnavailable:
        return BusUnavailable(f"the bus store at {self.cfg.bus_path} cannot be read: {e}")

    def stats(self) -> dict[str, object]:
        if self._r is not None:
            from gateway.bus.redis_backend import redis_stats

            return redis_stats(self._r)
        from gateway.bus.embedded import stats_of

        assert self._db is not None
        return stats_of(self._db)

    def scan(self) -> Iterator[StoredMessage]:
        if self._r is not None:
            from gateway.bus.redis_backend import redis_scan

            return redis_scan(self._r)
        from gateway.bus.embedded import scan_db

        assert self._db is not None
        return scan_db(self._db)

    def lookup(self) -> Callable[[str], PublicKeys | None]:
        if self._r is not None:
            from gateway.bus.redis_backend import PREFIX, parse_key_blob

            r = self._r

            def from_redis(agent: str) -> PublicKeys | None:
                blob = r.hget(PREFIX + "keys", agent)
                return parse_key_blob(agent, blob) if isinstance(blob, bytes) else None

            return from_redis
        from gateway.bus.embedded import lookup_keys_db

        db = self._db
        assert db is not None

        def from_db(agent: str) -> PublicKeys | None:
            return lookup_keys_db(db, agent)

        return from_db


def _stats(args: argparse.Namespace) -> int:
    from gateway.config import load_config

    with _Source(load_config(args.config, args.environ)) as src:
        stats = src.stats()
    print(json.dumps(stats, indent=2))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from gateway.bus.crypto import config_secret
    from gateway.bus.verify import verify_messages
    from gateway.config import load_config

    cfg = load_config(args.config, args.environ)
    # only verify reads the secret, and never makes one (stats and tail need none); first, as a
    # missing one is the thing to say, not the backend's state
    secret = config_secret(cfg, make=False)
    with _Source(cfg) as src:
        report = verify_messages(src.scan(), src.lookup(), secret)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"{report.checked} stored message(s) checked: {'OK' if report.ok else 'PROBLEMS'}")
        for p in report.problems:
            print("  " + "  ".join(f"{k}={v}" for k, v in p.items() if v is not None))
    return 0 if report.ok else 1


_Row = tuple[int, int, dict[str, object]]  # (time, place in the scan, what is printed)


def _rows(stored: Iterable[StoredMessage], topic: str | None) -> Iterator[_Row]:
    for seq, s in enumerate(stored):
        if s.msg is None:  # (unreadable: no time, sorted first)
            yield 0, seq, {"inbox": s.inbox, "state": s.state, "error": s.error}
        elif topic is None or s.msg.topic == topic:
            yield s.msg.timestamp_ms, seq, {"inbox": s.inbox, "state": s.state, **s.msg.metadata()}


def _newest(rows: Iterable[_Row], n: int) -> list[_Row]:
    """The ``n`` newest, oldest first; equal times in scan order (a stable sort's last ``n``).
    Only ``n`` held while scanning: a bus of millions is never held whole to print 20."""
    return list(reversed(heapq.nlargest(n, rows)))  # (time, then the unique scan place: never the dict)


def _when(ms: int) -> str:
    """A stored time as UTC text; one past what the platform can show (anyone who may write
    to the bus may store one: tail checks no signature) as its raw milliseconds."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + "Z"
    except (OverflowError, OSError, ValueError):
        return f"{ms}ms"


def _tail(args: argparse.Namespace) -> int:
    from gateway.config import load_config

    with _Source(load_config(args.config, args.environ)) as src:
        newest = _newest(_rows(src.scan(), args.topic), args.lines)
    for ms, _, r in newest:
        if args.json:
            print(json.dumps(r))
            continue
        when = _when(ms)
        where = f"topic {r['topic']}" if r.get("topic") else f"-> {r.get('recipient')}"
        print(
            f"{when} {r.get('kind', '?')!s:7} {r.get('sender')} {where} id={r.get('id')} "
            f"state={r['state']} bytes={r.get('size')} inbox={r['inbox']}"
        )
    return 0
