"""Function calls per streamable-HTTP tools/call of ``symbi serve`` (cProfile, event-loop thread).

    .venv/bin/python bench/http_ops.py [--tree DIR] [--json-response] [--sessions 8] [--procs 2]
                                       [--seconds 10] [--top 25] [--out FILE.prof]

The gateway of ``bench/http_load.py`` (API key per session, the repo's policy, signed audit
log, tofu, server-everything over stdio; SSE answers, or JSON with ``--json-response``) from
``--tree`` (default: this checkout) runs in-process under cProfile with the thread CPU clock,
switched on (SIGUSR1) and off (SIGUSR2, stats written) around the measured phase of
``bench/_load_client.py``'s load. Prints the function calls (Python and C) and the profiled
CPU per successful call, then the top entries by self time. cProfile counts every resumption
of a coroutine as a call; a loaded machine makes more calls outlast the SSE lane's 50 ms hold
(its watch then runs): compare trees in the same period. Operation counts survive a shared
machine better than times.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the stdlib's http: import from the repo root instead of bench/.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import pstats
import signal
import subprocess
import tempfile
import time

from bench._common import (
    ROOT,
    everything_toml,
    free_port,
    gateway_env,
    run_load_clients,
    write_http_gateway_config,
)
from bench.http import wait_http


def serve(config: Path, out: Path, tree: Path) -> None:
    """``tree``'s gateway, profiled between SIGUSR1 and SIGUSR2 (``out``, then ``out.done``)."""
    import cProfile

    sys.path.insert(0, str(tree))  # before this checkout (sys.path[0]): nothing of gateway is loaded yet
    from gateway.config import load_config
    from gateway.server.http import run_http

    prof = cProfile.Profile(time.thread_time)

    def stop(*_: object) -> None:
        prof.disable()
        prof.dump_stats(out)
        out.with_suffix(".done").write_text("1")

    signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
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
    lines = [
        f"{calls} calls: {st.total_calls / calls:.0f} function calls per call, "  # type: ignore[attr-defined]
        f"{total_tt / calls * 1e6:.0f} us profiled thread CPU per call",
        "| function | calls per call | self us per call | % |",
        "| --- | --- | --- | --- |",
    ]
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])  # type: ignore[attr-defined]
    for (file, line, fn), (_, nc, tt, _, _) in rows[:top]:
        name = f"{Path(file).name}:{line}({fn})" if line else fn
        lines.append(f"| {name} | {nc / calls:.1f} | {tt / calls * 1e6:.0f} | {100 * tt / total_tt:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose gateway runs")
    ap.add_argument("--json-response", action="store_true")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None, help="keep the cProfile stats here")
    ap.add_argument("--serve", nargs=3, type=Path, metavar=("CONFIG", "OUT", "TREE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    from gateway.server.auth import ApiKeyStore

    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-http-ops-"))
    (tmp / "data").mkdir(mode=0o700)
    names = [f"bench-{i:03d}" for i in range(args.sessions)]
    store = ApiKeyStore(tmp / "data" / "api-keys.json")
    keys: list[str | None] = [store.create(n, ("developer",))[0] for n in names]
    port = free_port()
    cfg = write_http_gateway_config(
        tmp, port, everything_toml("tofu"), names, json_response=args.json_response
    )
    prof = args.out.resolve() if args.out else tmp / "ops.prof"
    env = {**gateway_env(), "PYTHONPATH": str(args.tree.resolve())}  # the upstream's tools too
    tree = args.tree.resolve()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(cfg), str(prof), str(tree)]
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
    print(report(prof, calls, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
