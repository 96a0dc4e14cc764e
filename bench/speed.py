"""Issue 16 in one run: the secure path against its baselines, interleaved, one JSON document.

    .venv/bin/python bench/speed.py [--rounds 3] [--sequential 1000] [--callers 8] [--per-caller 50]
                                    [--http-clients 16] [--http-per-client 25] [--no-http]

Every round measures every part once (the stdio targets in an order that rotates each round),
so each number sits beside its baseline taken minutes apart on the same noisy machine:

- ``stdio``: server-everything's ``echo`` with the SDK ``ClientSession`` (one session each):
  ``direct``; ``relay`` (bench/peers/json_relay.py: parse, rename, re-serialise every message,
  no checks: the floor); ``gateway_off`` (``symbi mcp`` with policy, audit and verification
  off); ``gateway_secure`` (``symbi mcp`` with the repo's ``policies.rego``, the signed audit
  log and ``tofu`` verification: the default path); with ``--baseline-tree DIR`` also
  ``gateway_secure_baseline`` and ``gateway_off_baseline``, the same gateways run from another
  checkout (before a change), compared round by round in ``stdio_vs_baseline_tree``; with
  ``--sdk-front`` also ``gateway_secure_sdk_front`` and ``gateway_off_sdk_front``, the same
  gateways with ``mcp.stdio_fast_lane = false`` (``stdio_lane_vs_sdk_front``).
  Sequential latency (p50/p99), the targets taking turns in slices of 100 calls (this machine's
  speed flips within seconds: every target sees it alike; ``--sequential-blocks``: one block
  per target, as sessions 1-23 measured), and calls/s with ``--callers`` concurrent callers. The p99
  target reads the p99 of every round's sequential calls pooled (``p99_ms_pooled``: 3,000 a side
  at the defaults); a round's own p99 (``p99_ms_per_round``) is one of its few slowest calls.
- ``policy``: ``EmbeddedEngine.decide`` on ``policies/cases.json`` (decisions/s on one core,
  p99) vs the same rules in plain Python (bench/policy.py's baseline, checked to agree).
- ``audit``: ``AuditLog.emit`` + ``flush`` (signed, chained, fsync'd group commit) vs the same
  rows inserted unsigned into the same SQLite set-up, and verification (``verify_all_signatures``
  is the target's full verification; ``verify_fast`` checks Ed25519 signatures only where trust
  is decided), each timed 5 times per round (bench/audit.py's ``bench_verify``: medians).
- ``http``: ``--http-clients`` concurrent SDK clients (one session each, one process) against
  server-everything over streamable HTTP directly vs through ``symbi serve`` (API key, policy,
  audit, tofu; upstream over HTTP; one API key per client). One Python process cannot drive
  1,500 calls/s: this is a ratio against direct; bench/http_load.py is the issue's load test.

Every reply is checked (``misrouted`` and ``errors`` must be 0; the exit code is 1 otherwise).
Issue 16's targets are evaluated at the end (``targets``) from the medians over rounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the stdlib's http: import from the repo root instead of bench/.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp import ClientSession

from bench import audit as audit_bench
from bench import http as http_bench
from bench import policy as policy_bench
from bench._common import (
    EVERYTHING_JS,
    ROOT,
    SYMBI,
    Call,
    CallStats,
    baseline_policy_data,
    bench_policy_data,
    concurrent_calls,
    everything_toml,
    free_port,
    gateway_env,
    interleaved_sequential_calls,
    sequential_calls,
    stdio_session,
    text_of,
    write_gateway_config,
    write_http_gateway_config,
)
from bench._machine import machine_speed
from bench._pure_policy import PurePolicy
from bench._speed_report import report
from bench.proxy import _round as stdio_round
from bench.proxy import expected as proxy_expected
from gateway.policy.cases import decision_dict, load_cases
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import discover_files

RELAY = ROOT / "bench" / "peers" / "json_relay.py"


Target = tuple[str, list[str], dict[str, str] | None, str, Path | None]  # command, args, env, tool, cwd


def stdio_targets(tmp: Path, baseline: Path | None, sdk_front: bool = False) -> dict[str, Target]:
    node = ["node", str(EVERYTHING_JS), "stdio"]
    off = write_gateway_config(
        tmp / "off", everything_toml("off"), security=False, extra='[mcp]\ntool_verification = "off"\n'
    )
    data = bench_policy_data(tmp / "secure", "bench", [])
    secure = write_gateway_config(
        tmp / "secure", everything_toml("tofu"), security=True, principal="bench", policy_data=data
    )
    out: dict[str, Target] = {
        "direct": (node[0], node[1:], None, "echo", None),
        "relay": (sys.executable, [str(RELAY), "everything", "--", *node], None, "everything__echo", None),
        "gateway_off": (str(SYMBI), ["mcp", "--config", str(off)], gateway_env(), "everything__echo", ROOT),
        "gateway_secure": (
            str(SYMBI),
            ["mcp", "--config", str(secure)],
            gateway_env(),
            "everything__echo",
            ROOT,
        ),
    }
    if sdk_front:  # the same gateways with the stdio fast lane off (mcp.stdio_fast_lane = false)
        out |= _sdk_front_targets(tmp, data)
    if baseline is not None:  # the same gateways, another checkout's code (their own data dirs)
        out |= _baseline_targets(tmp, baseline)
    return out


def _sdk_front_targets(tmp: Path, data: Path) -> dict[str, Target]:
    """The two gateways with the stdio fast lane off: every message through the SDK's server session."""
    out: dict[str, Target] = {}
    off3 = write_gateway_config(
        tmp / "off_sdk",
        everything_toml("off"),
        security=False,
        extra='[mcp]\ntool_verification = "off"\nstdio_fast_lane = false\n',
    )
    secure3 = write_gateway_config(
        tmp / "secure_sdk",
        everything_toml("tofu"),
        security=True,
        principal="bench",
        policy_data=data,
        extra="[mcp]\nstdio_fast_lane = false\n",
    )
    for name, cfg in (("gateway_secure_sdk_front", secure3), ("gateway_off_sdk_front", off3)):
        out[name] = (str(SYMBI), ["mcp", "--config", str(cfg)], gateway_env(), "everything__echo", ROOT)
    return out


def _baseline_targets(tmp: Path, baseline: Path) -> dict[str, Target]:
    """The two gateways run from another checkout (``--baseline-tree``), with their own data dirs."""
    cfg2 = _baseline_secure_config(tmp / "baseline", baseline)
    off2 = write_gateway_config(
        tmp / "baseline_off",
        everything_toml("off"),
        security=False,
        extra='[mcp]\ntool_verification = "off"\n',
        tree=baseline,
    )
    env = {**gateway_env(), "PYTHONPATH": str(baseline)}
    secure_baseline: Target = (
        str(SYMBI),
        ["mcp", "--config", str(cfg2)],
        env,
        "everything__echo",
        baseline,
    )
    off_baseline: Target = (
        str(SYMBI),
        ["mcp", "--config", str(off2)],
        env,
        "everything__echo",
        baseline,
    )
    return {"gateway_secure_baseline": secure_baseline, "gateway_off_baseline": off_baseline}


def _baseline_secure_config(folder: Path, baseline: Path) -> Path:
    """The secure gateway's config for ``--baseline-tree``: that tree's own ``policies.rego``
    and ``policies/data.json`` (plus the bench principal), since an older gateway may not give
    the policy of this tree the input it reads (every call would be denied and measured as a
    denial); keys that tree does not know are left out."""
    path = baseline_policy_data(folder, baseline)
    cfg = write_gateway_config(
        folder, everything_toml("tofu"), security=True, principal="bench", policy_data=path, tree=baseline
    )
    text = cfg.read_text().replace(f'"{ROOT / "policies.rego"}"', f'"{baseline / "policies.rego"}"')
    cfg.write_text(text)
    return cfg


# -- policy and audit (in this process) ---------------------------------------------------------


class PolicyPart:
    def __init__(self) -> None:
        files = discover_files()
        # the target is about decisions the engine must make: evaluated every time (no cache);
        # the cached engine answers the same questions again, as a listing asked twice is
        self.engine = EmbeddedEngine(files, cache_entries=0)
        self.cached = EmbeddedEngine(files)
        if not (self.engine.load() and self.cached.load()):
            raise SystemExit("policies.rego does not load")
        self.inputs = [c.input for c in load_cases(ROOT / "policies" / "cases.json")]
        self.pure = PurePolicy(json.loads(files.data.read_text()) if files.data else {})
        self.agree = sum(decision_dict(self.engine.decide(i)) == self.pure.decide(i) for i in self.inputs)

    def round(self, seconds: float, timed: int) -> dict[str, Any]:
        emb = {
            **policy_bench.latency(self.engine.decide, self.inputs, timed),
            **policy_bench.throughput(self.engine.decide, self.inputs, seconds),
        }
        cached = {
            **policy_bench.latency(self.cached.decide, self.inputs, timed),
            **policy_bench.throughput(self.cached.decide, self.inputs, seconds),
        }
        pure = {
            **policy_bench.latency(self.pure.decide, self.inputs, timed),
            **policy_bench.throughput(self.pure.decide, self.inputs, seconds),
        }
        return {"embedded": emb, "embedded_cached": cached, "pure_python": pure}


def audit_round(events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="symbi-bench-speed-audit-") as tmp:
        d = Path(tmp)
        append = audit_bench.bench_append(d, events)
        base, base_cpu = audit_bench.bench_baseline_sqlite(d, events)
        verify = audit_bench.bench_verify(d)
        # what a sequential call waits for: its own record's group commit (fsync) through
        # AuditStep, beside a bare append + fsync on the same disk
        step = audit_bench.bench_step(d, 300)
        floor = audit_bench.bench_fsync_floor(d)
    return {
        "sequential_call_audit_wait_ms": round(step["added_median_ms_sequential"], 3),
        "fsync_floor_median_ms": round(floor, 3),
        **append,
        "baseline_unsigned_sqlite_per_s": base,
        "baseline_unsigned_sqlite_cpu_us_per_event": base_cpu,
        **verify,
    }


# -- HTTP ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def http_targets(tmp: Path, clients: int) -> Iterator[list[http_bench.Target]]:
    from gateway.server.auth import ApiKeyStore

    (tmp / "loopback.cjs").write_text(http_bench.PRELOAD)
    up_port, gw_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    # one API key (principal) per client: the default per-principal session quota stays on
    names = tuple(f"bench-{c:03d}" for c in range(clients))
    store = ApiKeyStore(tmp / "data" / "api-keys.json")
    auth = [{"Authorization": f"Bearer {store.create(n, ('developer',))[0]}"} for n in names]
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            http_bench.proc(
                ["node", "-r", str(tmp / "loopback.cjs"), str(EVERYTHING_JS), "streamableHttp"],
                tmp / "http-upstream.log",
                {**os.environ, "PORT": str(up_port)},
            )
        )
        http_bench.wait_http(upstream, {400, 405, 406, 200})
        cfg = write_http_gateway_config(
            tmp / "http-gateway",
            gw_port,
            everything_toml("tofu", upstream),
            names,
            max_sessions=1000,
            max_connections=64,
            data_dir=tmp / "data",
        )
        stack.enter_context(
            http_bench.proc(
                [sys.executable, "-c", http_bench.GATEWAY_MAIN, str(cfg)],
                tmp / "http-gateway.log",
                {**gateway_env(), "PYTHONPATH": str(ROOT)},
            )
        )
        http_bench.wait_http(f"http://127.0.0.1:{gw_port}/readyz", {200})
        yield [
            http_bench.Target("direct", upstream, "echo", {}),
            http_bench.Target(
                "gateway",
                f"http://127.0.0.1:{gw_port}/mcp",
                "everything__echo",
                auth[0],
                auth,
            ),
        ]


# -- the run ------------------------------------------------------------------------------------


async def _interleaved_round(
    sessions: Mapping[str, ClientSession],
    targets: Mapping[str, Target],
    order: list[str],
    tag: str,
    args: argparse.Namespace,
) -> dict[str, dict[str, CallStats]]:
    """One round's stdio part: each target warmed, the sequential calls in slices taking turns
    across the targets (``interleaved_sequential_calls``), then each target's concurrent callers
    in turn (a calls/s figure needs a block of its own)."""

    def caller(name: str) -> Call:
        session, tool = sessions[name], targets[name][3]

        async def call(msg: str) -> str | None:
            return text_of(await session.call_tool(tool, {"message": msg}))

        return call

    calls = {name: caller(name) for name in order}
    for name, call in calls.items():
        await sequential_calls(call, 20, f"{name}-{tag}-warm", proxy_expected)
    seq = await interleaved_sequential_calls(calls, args.sequential, f"{tag}-seq", proxy_expected)
    return {
        name: {
            "sequential": seq[name],
            "concurrent": await concurrent_calls(
                call, args.callers, args.per_caller, f"{name}-{tag}-conc", proxy_expected
            ),
        }
        for name, call in calls.items()
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if not EVERYTHING_JS.exists():
        raise SystemExit(f"server-everything missing at {EVERYTHING_JS} (run `make setup`)")
    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-speed-"))
    targets = stdio_targets(tmp, args.baseline_tree, args.sdk_front)
    policy = PolicyPart()
    rounds: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        sessions = {
            name: await stack.enter_async_context(stdio_session(cmd, argv, env, tmp / f"{name}.stderr", cwd))
            for name, (cmd, argv, env, _tool, cwd) in targets.items()
        }
        http = stack.enter_context(http_targets(tmp, args.http_clients)) if args.http else []
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            machine = machine_speed()
            if args.sequential_blocks:  # each target's sequential calls in one block (before session 24)
                stdio = {n: await stdio_round(sessions[n], targets[n][3], f"{n}-r{r}", args) for n in order}
            else:
                stdio = await _interleaved_round(sessions, targets, order, f"r{r}", args)
            # the audit part runs its own asyncio loop: in a worker thread (the stdio sessions idle)
            row: dict[str, Any] = {
                "machine": machine,
                "stdio": stdio,
                "policy": policy.round(args.policy_seconds, args.policy_timed),  # regorus: this thread only
                "audit": await anyio.to_thread.run_sync(audit_round, args.audit_events),
            }
            row["http"] = {
                t.name: await http_bench.measure(t, args.http_clients, args.http_per_client)
                for t in (http if r % 2 == 0 else http[::-1])
            }
            rounds.append(row)
    return report(rounds, names, policy, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sequential", type=int, default=1000)
    p.add_argument(
        "--sequential-blocks",
        action="store_true",
        help="time each target's sequential calls in one block (sessions 1-23) instead of in slices taking turns",
    )
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--per-caller", type=int, default=50)
    p.add_argument("--policy-seconds", type=float, default=1.0)
    p.add_argument("--policy-timed", type=int, default=2000)
    p.add_argument("--audit-events", type=int, default=5000)
    p.add_argument("--http-clients", type=int, default=16)
    p.add_argument("--http-per-client", type=int, default=25)
    p.add_argument("--no-http", dest="http", action="store_false")
    p.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="also run gateway_secure from this checkout (e.g. /work/main: the code before a change)",
    )
    p.add_argument(
        "--sdk-front",
        action="store_true",
        help="also run both gateways with the stdio fast lane off (every message through the SDK's server session)",
    )
    args = p.parse_args(argv)
    out = anyio.run(run, args)
    print(json.dumps(out, indent=2))
    return 1 if out["misrouted_or_errors_total"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
