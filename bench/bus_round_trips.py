"""Redis round trips of a bus publication: how many writes to Redis one ``Bus.publish`` costs,
the publisher on one ``Bus`` (a gateway process) and its subscribers on another, both on a
redis-server this script starts (127.0.0.1, random port, temp folder). Operation counts: the
same on a busy machine. ``PYTHONPATH=<checkout>`` counts another checkout's code.

Run: ``.venv/bin/python bench/bus_round_trips.py [--subscribers 5 50] [--publishes 10]``;
prints one JSON document: per subscriber count, the round trips of the first publication
(a new process: nothing cached) and per publication after it, and the commands Redis
ran (``INFO commandstats``: those a script runs are counted too, in no round trip of their own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# not bench/ (whose modules, e.g. bench/http.py, would shadow the stdlib); PYTHONPATH first,
# then this checkout
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parents[1]))

import redis
import redis.asyncio.connection as rconn

from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing, load_secret
from gateway.bus.redis_backend import RedisBackend
from gateway.context import Principal

SENT = [0]  # writes to Redis (one per command, one per pipeline): round trips
_send = rconn.AbstractConnection.send_packed_command


async def _counted(self: rconn.AbstractConnection, command: Any, check_health: bool = True) -> None:
    SENT[0] += 1
    await _send(self, command, check_health)


class _Sink:
    def emit(self, *args: Any, **kw: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(url: str, data: Path, subscribers: int, publishes: int) -> dict[str, Any]:
    buses = []
    for i in range(2):
        backend = RedisBackend(url)
        await backend.start()
        ring = KeyRing(load_secret(data / "bus-secret"), data / f"keys-{subscribers}-{i}.db")
        buses.append(Bus(backend, ring, events=_Sink(), buffer_size=10_000))
    publisher, others = buses
    topic = f"t{subscribers}"
    for n in range(subscribers):
        await others.subscribe(Principal(id="team", agent=f"agent-{topic}-{n}", source="key"), topic)
    me = Principal(id="team", agent=f"agent-pub-{topic}", source="key")
    await publisher.register(f"agent-pub-{topic}", me.qualified)
    r: Any = redis.Redis.from_url(url)
    out: dict[str, Any] = {}
    for label, n in (("first", 1), ("after", publishes)):
        r.config_resetstat()
        SENT[0] = 0
        for _ in range(n):
            await publisher.publish(me, topic, {"n": 1})
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}
        calls.pop("config|resetstat", None)
        out[label] = {"round_trips_per_publish": SENT[0] / n, "commands": calls}
    for b in buses:
        await b.backend.close()
        b.ring.close()
    return out


async def _all(url: str, data: Path, subscribers: list[int], publishes: int) -> dict[str, Any]:
    rconn.AbstractConnection.send_packed_command = _counted  # type: ignore[method-assign]
    return {str(s): await _measure(url, data, s, publishes) for s in subscribers}


def main(subscribers: list[int], publishes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while True:
                try:
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            return asyncio.run(_all(url, Path(tmp), subscribers, publishes))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, nargs="+", default=[5, 50])
    ap.add_argument("--publishes", type=int, default=10)
    args = ap.parse_args()
    json.dump({"subscribers": main(args.subscribers, args.publishes)}, sys.stdout, indent=2)
    print()
