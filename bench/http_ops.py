"""Function calls per streamable-HTTP tools/call of ``symbi serve`` (cProfile, event-loop thread).

    .venv/bin/python bench/http_ops.py [--tree DIR] [--json-response] [--sessions 8] [--procs 2]
                                       [--seconds 10] [--top 25] [--out FILE.prof] [--shared-state]

The gateway of ``bench/http_load.py`` (API key per session, the repo's policy, signed audit
log, tofu, server-everything over stdio; SSE answers, or JSON with ``--json-response``) from
``--tree`` (default: this checkout) runs in-process under cProfile with the thread CPU clock,
switched on (SIGUSR1) and off (SIGUSR2, stats written) around the measured phase of
``bench/_load_client.py``'s load. Prints the function calls (Python and C) and the profiled
CPU per successful call, then the top entries by self time. cProfile counts every resumption
of a coroutine as a call; a loaded machine makes more calls outlast the SSE lane's 50 ms hold
(its watch then runs): compare trees in the same period. Operation counts survive a shared
machine better than times. ``--shared-state``: the same gateway on a private Redis and
PostgreSQL (``[state]``, the keys in PostgreSQL: ``gateway-1w`` of ``bench/http_load.py``);
cProfile sees the event loop's thread only, so the process's CPU per call (every thread: the
key lookups and the audit shipper run in others) is printed too.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the stdlib's http: import from the repo root instead of bench/.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import contextlib
import pstats
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

from bench._common import (
    ROOT,
    everything_toml,
    free_port,
    gateway_env,
    write_http_gateway_config,
)
from bench._machine import run_load_clients
from bench.http import wait_http


def serve(config: Path, out: Path, tree: Path) -> None:
    """``tree``'s gateway, profiled between SIGUSR1 and SIGUSR2 (``out``, then ``out.done``)."""
    import cProfile

    sys.path.insert(0, str(tree))  # before this checkout (sys.path[0]): nothing of gateway is loaded yet
    from gateway.config import load_config
    from gateway.server.http import run_http

    prof = cProfile.Profile(time.thread_time)
    cpu = [0.0]

    def process_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the gateway's process
        return ru.ru_utime + ru.ru_stime

    def start(*_: object) -> None:
        cpu[0] = process_cpu()
        prof.enable()

    def stop(*_: object) -> None:
        prof.disable()
        prof.dump_stats(out)
        out.with_suffix(".cpu").write_text(repr(process_cpu() - cpu[0]))
        out.with_suffix(".done").write_text("1")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    run_http(load_config(config, {}))


def load(
    url: str, keys: list[str | None], procs: int, seconds: float, gateway: subprocess.Popen[bytes]
) -> int:
    """The load clients' measured phase with the profiler on; successful calls."""
    jobs = [
        {"url": url, "tool": "everything__echo", "keys": keys[i::procs], "seconds": seconds}
        | {"run": "ops", "tag": f"ops-p{i}", "warmup": 20}
        for i in range(procs)
    ]
    rows = run_load_clients(
        jobs,
        "ops",
        on_go=lambda: gateway.send_signal(signal.SIGUSR1),
        on_done=lambda: gateway.send_signal(signal.SIGUSR2),
    )
    if any(r["misrouted"] or r["errors"] for r in rows):
        raise SystemExit("misrouted or failed calls")
    return sum(int(r["ok"]) for r in rows)


def report(prof: Path, calls: int, top: int) -> str:
    st = pstats.Stats(str(prof))
    total_tt = st.total_tt  # type: ignore[attr-defined]
    process_cpu = float(prof.with_suffix(".cpu").read_text())
    lines = [
        f"{calls} calls: {st.total_calls / calls:.0f} function calls per call, "  # type: ignore[attr-defined]
        f"{total_tt / calls * 1e6:.0f} us profiled thread CPU per call, "
        f"{process_cpu / calls * 1e6:.0f} us process CPU per call (every thread, profiler on)",
        "| function | calls per call | self us per call | % |",
        "| --- | --- | --- | --- |",
    ]
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    for (file, line, fn), (_, nc, tt, _, _) in rows[:top]:
        name = f"{Path(file).name}:{line}({fn})" if line else fn
        lines.append(f"| {name} | {nc / calls:.1f} | {tt / calls * 1e6:.0f} | {100 * tt / total_tt:.1f} |")
    return "\n".join(lines)


@contextlib.contextmanager
def _keys(tmp: Path, names: list[str], shared: bool) -> Iterator[tuple[list[str | None], str]]:
    """One API key per name and the config's ``[state]`` text: the data dir's key file, or
    (``shared``) PostgreSQL next to Redis, both private and stopped afterwards."""
    if not shared:
        from gateway.server.auth import ApiKeyStore

        store = ApiKeyStore(tmp / "data" / "api-keys.json")
        yield [store.create(n, ("developer",))[0] for n in names], ""
        return
    from bench.scale import _engines
    from gateway.state.pgkeys import PgApiKeyStore
    from gateway.state.postgres import Postgres

    with _engines() as (_, redis, pg):
        pool = Postgres(pg.url, timeout_s=5).open()
        keys: list[str | None] = [PgApiKeyStore(pool).create(n, ("developer",))[0] for n in names]
        pool.close()
        yield keys, f'[state]\nredis_url = "{redis.url}"\npostgres_url = "{pg.url}"\n'


def _profiled(
    args: argparse.Namespace, cfg: Path, prof: Path, port: int, keys: list[str | None], tmp: Path
) -> int:
    """The gateway of ``args.tree`` on ``cfg`` under load, profiled: the successful calls."""
    env = {**gateway_env(), "PYTHONPATH": str(args.tree.resolve())}  # the upstream's tools too
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        str(cfg),
        str(prof),
        str(args.tree.resolve()),
    ]
    with open(tmp / "gateway.log", "w") as log:
        gateway = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", {200}, timeout=180)
        calls = load(f"http://127.0.0.1:{port}/mcp", keys, args.procs, args.seconds, gateway)
        deadline = time.monotonic() + 30
        while not prof.with_suffix(".done").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        gateway.send_signal(signal.SIGINT)
        try:
            gateway.wait(30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
    return calls


def revocation_delay(n: int) -> str:
    """How long a revocation takes to reach another process's key cache (gateway.state.keycache):
    from the start of ``revoke`` (its commit included) until the cached record is dropped."""
    import statistics

    from bench.scale import _engines
    from gateway.state.pgkeys import PgApiKeyStore
    from gateway.state.postgres import Postgres

    with _engines() as (_, _redis, pg):
        cli = PgApiKeyStore(Postgres(pg.url, timeout_s=2).open(), owns=True)
        served = PgApiKeyStore(Postgres(pg.url, timeout_s=2).open(), owns=True, cache=True)
        delays = []
        try:
            for i in range(n):
                key, rec = cli.create(f"p{i}", ())
                while not (served.lookup(key) == rec and served.cached(rec.id) == rec):
                    time.sleep(0.001)  # the cache subscribed and the creation's NOTIFY handled
                started = time.monotonic()
                cli.revoke(rec.id)
                while served.cached(rec.id) is not None:
                    time.sleep(0.0002)
                delays.append((time.monotonic() - started) * 1000)
                assert served.lookup(key) is None
        finally:
            served.close()
            cli.close()
    return (
        f"{n} revocations, revoke() start to the other cache dropping the key: median "
        f"{statistics.median(delays):.2f} ms, max {max(delays):.2f} ms, min {min(delays):.2f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose gateway runs")
    ap.add_argument("--json-response", action="store_true")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None, help="keep the cProfile stats here")
    ap.add_argument(
        "--shared-state",
        action="store_true",
        help="on a private Redis and PostgreSQL ([state], the API keys in PostgreSQL)",
    )
    ap.add_argument(
        "--revocation-delay",
        type=int,
        default=0,
        metavar="N",
        help="instead: N keys revoked through one PostgreSQL store, the ms until another's cache drops each",
    )
    ap.add_argument("--serve", nargs=3, type=Path, metavar=("CONFIG", "OUT", "TREE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    if args.revocation_delay:
        print(revocation_delay(args.revocation_delay))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-http-ops-"))
    (tmp / "data").mkdir(mode=0o700)
    names = [f"bench-{i:03d}" for i in range(args.sessions)]
    with contextlib.ExitStack() as stack:
        keys, state = stack.enter_context(_keys(tmp, names, args.shared_state))
        port = free_port()
        servers = everything_toml("tofu") + state
        cfg = write_http_gateway_config(tmp, port, servers, names, json_response=args.json_response)
        prof = args.out.resolve() if args.out else tmp / "ops.prof"
        calls = _profiled(args, cfg, prof, port, keys, tmp)
        print(report(prof, calls, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
