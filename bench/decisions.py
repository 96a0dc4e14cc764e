"""Policy evaluations per ``tools/call`` and per ``tools/list`` on the default secure path:
operation counts, not timings, so they are the same on a busy machine and an idle one.

    .venv/bin/python bench/decisions.py [--calls 50] [--lists 5]

The whole gateway as ``make_gateway`` assembles it, in this process (default policy
``policies.rego`` with the bench principal as a developer, signed audit log, ``tofu``
verification), in front of server-everything over stdio; calls made as the stdio front makes
them (the caller's agent for its session). The embedded engine's ``cache_misses`` (decisions
evaluated) and ``cache_hits`` (answered from its decision cache) are read around:

- ``first_call`` and ``repeated_call`` (per call, over ``--calls`` calls of ``everything__echo``);
- ``first_list``, ``list_again`` and ``list_after_calls`` (a listing after more calls: the
  principal's counters moved), per listing of every tool the caller may see.

JSON on stdout. Run it with ``PYTHONPATH=<another checkout>`` to count that checkout's code.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import dataclasses
import json
import tempfile
from typing import Any

import anyio

from bench._common import EVERYTHING_JS, bench_policy_data, write_gateway_config
from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.config.load import load_config
from gateway.context import CallContext, Principal
from gateway.policy.engine import EmbeddedEngine

PRINCIPAL = "bench"


def counts(engine: EmbeddedEngine) -> tuple[int, int]:
    return engine.cache_hits, engine.cache_misses


def delta(engine: EmbeddedEngine, before: tuple[int, int], per: int = 1) -> dict[str, float]:
    hits, misses = counts(engine)
    return {"evaluations": (misses - before[1]) / per, "cache_hits": (hits - before[0]) / per}


async def measure(gw: Gateway, calls: int, lists: int) -> dict[str, Any]:
    engine = gw.policy
    assert isinstance(engine, EmbeddedEngine), "the default config's engine is the embedded one"
    base = Principal(id=PRINCIPAL, roles=("developer",), source="stdio")
    agent = gw.agents.for_session(base, "bench-client", "s1")
    who = dataclasses.replace(base, agent=agent.id)

    async def call(i: int) -> None:
        ctx = CallContext(
            principal=who,
            agent=gw.agents.info(who.agent),
            kind="tools/call",
            target="everything__echo",
            arguments={"message": f"m{i}"},
            session_id="s1",
        )
        result = await gw.call(ctx)
        assert not result.is_error, result

    async def listing() -> int:
        return len(await gw.visible_tools(who))

    out: dict[str, Any] = {}
    before = counts(engine)
    shown = await listing()
    out["first_list"] = {"tools": shown, **delta(engine, before)}
    before = counts(engine)
    for _ in range(lists):
        await listing()
    out["list_again"] = delta(engine, before, lists)
    before = counts(engine)
    await call(0)
    out["first_call"] = delta(engine, before)
    before = counts(engine)
    for i in range(1, calls + 1):
        await call(i)
    out["repeated_call"] = delta(engine, before, calls)
    before = counts(engine)
    for _ in range(lists):
        await call(-1)
        await listing()
    out["list_after_calls"] = {
        k: v - out["repeated_call"][k] for k, v in delta(engine, before, lists).items()
    }  # per listing, less the call made before it
    return out


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    data = bench_policy_data(tmp, PRINCIPAL)
    servers = f'[servers.everything]\ncommand = "node"\nargs = ["{EVERYTHING_JS}", "stdio"]\nverification = "tofu"\n'
    cfg = write_gateway_config(tmp, servers, security=True, principal=PRINCIPAL, policy_data=data)
    gw = make_gateway(load_config(cfg))
    async with gw.running():
        for _ in range(600):  # the upstream's tools arrive once it has started
            if "everything__echo" in gw.catalog.tools:
                break
            await anyio.sleep(0.05)
        result = await measure(gw, args.calls, args.lists)
    return {
        "benchmark": "decisions",
        "settings": {"calls": args.calls, "lists": args.lists},
        **result,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--lists", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="symbi-decisions-") as d:
        out = anyio.run(run, args, Path(d))
    out["gateway_code"] = str(Path(sys.modules["gateway"].__file__ or "").resolve().parent.parent)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
