"""How long one large but valid tool call holds every other caller of the gateway.

``symbi mcp`` with the default policy (its redaction rules on), the signed audit log and
``tofu``, server-everything's ``echo`` as the upstream. Per case, one SDK session sends the
large call and, while it is in flight, small ``echo`` calls back to back on the same session
(the gateway serves both on one event loop): the longest a small call waited is the time the
large one held the loop. Cases: a 3 MB string of JSON-like text, 3 MB of prose, 10,000 keys,
150,000 keys (past ``mcp.max_argument_members``: refused where the arguments enter), one key
of 3 MB (past ``gateway.jsonlimits.MAX_KEY_CHARS``: refused there too). With
``--baseline-tree`` the same gateway from that checkout runs in the same rounds, case by case.

    PYTHONPATH=$PWD .venv/bin/python bench/large_input.py --rounds 3 --baseline-tree /tmp/base
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # bench/http.py is not the stdlib's http

import argparse
import asyncio
import json
import tempfile
import time
from contextlib import AsyncExitStack
from typing import Any

from bench._common import (
    ROOT,
    SYMBI,
    bench_policy_data,
    everything_toml,
    gateway_env,
    median,
    stdio_session,
    text_of,
    write_gateway_config,
)
from bench._machine import host

PRINCIPAL = "bench"
JSONISH = '{"id": 12345, "name": "alpha_beta", "value": 3.14159, "tags": ["a", "b"]}, '
PROSE = "the quick brown fox jumps over the lazy dog, and a token of thanks to the basic reader. "


def cases() -> dict[str, dict[str, Any]]:
    return {
        "string_3mb_jsonish": {"message": (JSONISH * 40_000)[:3_000_000]},
        "string_3mb_prose": {"message": (PROSE * 35_000)[:3_000_000]},
        "keys_10k": {"message": "m", **{f"k{i}": i for i in range(9_999)}},
        "keys_150k": {"message": "m", **{f"k{i}": i for i in range(149_999)}},
        "one_key_3mb": {"message": "m", "k" * 3_000_000: 1},
    }


async def one(session: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The large call's wall time and outcome, and the small calls' longest wait meanwhile."""
    waits: list[float] = []
    began = time.perf_counter()
    big = asyncio.ensure_future(session.call_tool("everything__echo", args))
    i = 0
    while not big.done():
        t = time.perf_counter()
        r = await session.call_tool("everything__echo", {"message": f"p{i}"})
        waits.append(time.perf_counter() - t)
        if text_of(r) != f"Echo: p{i}":
            raise RuntimeError(f"unexpected probe reply {r}")
        i += 1
    result = await big
    wall = time.perf_counter() - began
    error = (result.meta or {}).get("symbi/error", {}).get("code") if result.is_error else None
    return {
        "large_call_s": round(wall, 4),
        "longest_wait_s": round(max(waits, default=0.0), 4),
        "probes": len(waits),
        "refused": error,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="large-input-"))
    data = bench_policy_data(tmp, PRINCIPAL)
    trees = {"this": ROOT}
    if args.baseline_tree is not None:
        trees["base"] = args.baseline_tree
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {t: {c: [] for c in cases()} for t in trees}
    async with AsyncExitStack() as stack:
        sessions = {}
        for name, tree in trees.items():
            cfg = write_gateway_config(
                tmp / name,
                everything_toml("tofu"),
                security=True,
                principal=PRINCIPAL,
                policy_data=data,
                tree=None if tree == ROOT else tree,
            )
            env = gateway_env() if tree == ROOT else {**gateway_env(), "PYTHONPATH": str(tree)}
            sessions[name] = await stack.enter_async_context(
                stdio_session(str(SYMBI), ["mcp", "--config", str(cfg)], env, cwd=tree)
            )
            for i in range(20):  # warm: the tool verified and pinned, the policy compiled
                await sessions[name].call_tool("everything__echo", {"message": f"w{i}"})
        for _ in range(args.rounds):
            for case, arguments in cases().items():
                for name in trees:
                    rows[name][case].append(await one(sessions[name], arguments))
    out: dict[str, Any] = {"benchmark": "large_input", "host": host(), "rounds": args.rounds, "cases": {}}
    for case in cases():
        out["cases"][case] = {
            name: {
                "large_call_s": median([r["large_call_s"] for r in rows[name][case]]),
                "longest_wait_s": median([r["longest_wait_s"] for r in rows[name][case]]),
                "refused": rows[name][case][0]["refused"],
                "rounds": rows[name][case],
            }
            for name in trees
        }
    if args.baseline_tree is not None:
        out["baseline_tree"] = str(args.baseline_tree)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline-tree", type=Path, default=None, help="the same gateway from this checkout")
    args = p.parse_args()
    if args.baseline_tree is not None:
        args.baseline_tree = args.baseline_tree.resolve()
    out = asyncio.run(run(args))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
