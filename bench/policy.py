"""Benchmark: policy decisions per second and latency, embedded regorus vs pure Python.

One command, one process, JSON on stdout:

    .venv/bin/python bench/policy.py [--seconds 2] [--threads 1,2,4] [--timed 3000]

- embedded: ``EmbeddedEngine.decide`` on the repo's ``policies.rego`` + ``policies/data.json``
  with the 50 realistic inputs of ``policies/cases.json`` cycled (allows and denies, paths,
  URLs, code tools, listings);
- baseline: a hand-written Python evaluation of the same rules on the same inputs, measured in
  the same run (it is checked to give the same decisions first, so the ratio is honest);
- threads: total decisions/s with N threads, one engine per thread (regorus holds the GIL,
  so expect no gain: the way to scale is worker processes);
- step: the whole ``PolicyStep`` (input document + decision + conditions) around a trivial
  endpoint, minus the bare endpoint: the policy's cost inside one proxied call.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is sys.path[0] when run as a script; a sibling module named like a stdlib one
# (bench/http.py) would shadow it, so take bench/ off the path and put the repo on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from gateway.chain import build_chain
from gateway.context import CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.policy.cases import decision_dict, load_cases
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputdoc import CallCounters
from gateway.policy.loader import discover_files
from gateway.steps.policy import PolicyStep

URL_RE = re.compile(
    r"^(?i:https?)://(?:[^/?#\\@\s]*@)?(\[[0-9a-fA-F:.]+\]|[^/?#:@\\\s\[\]]+)(?::[0-9]{1,5})?(?:[/?#][^\\\s]*)?$"
)


class PurePolicy:
    """The rules of policies.rego written in Python: the baseline, not used by the gateway."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.d = data.get("symbi_data", {})
        self._host_res = [
            re.compile("^" + re.escape(p.lower()).replace(r"\*", "[^.]*") + "$")
            for p in self.d.get("url_hosts", [])
        ]

    def _entry(self, principal: dict[str, Any]) -> dict[str, Any]:
        ps, pid = self.d.get("principals", {}), principal["id"]
        source = principal.get("source")
        if source == "jwt":
            return dict(ps.get("jwt", {}).get(principal.get("issuer") or "", {}).get(pid, {}))
        ns = {"stdio": "stdio", "key": "keys", "anonymous": "anonymous"}.get(str(source))
        return dict(ps.get(ns, {}).get(pid, {})) if ns else {}

    def _patterns(self, principal: dict[str, Any], roles: set[str], field: str) -> list[str]:
        pe = self._entry(principal)
        out = list(pe.get(field, []))
        for r in roles:
            out += self.d.get("roles", {}).get(r, {}).get(field, [])
        return out

    @staticmethod
    def _any(pats: list[str], name: str) -> bool:
        return any(fnmatchcase(name, p) for p in pats)

    def _path_ok(self, p: Any) -> bool:
        if not isinstance(p, str) or "\\" in p or "\0" in p or any(s in (".", "..") for s in p.split("/")):
            return False
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in self.d.get("fs_roots", []))

    def _host(self, u: Any) -> str | None:
        m = URL_RE.match(u) if isinstance(u, str) else None
        return m.group(1).lower() if m else None

    def _values(self, args: dict[str, Any], keys: list[str]) -> list[tuple[str, Any]]:
        out = []
        for k in keys:
            if k in args:
                v = args[k]
                out += [(k, x) for x in v] if isinstance(v, list) else [(k, v)]
        return out

    def decide(self, inp: dict[str, Any]) -> dict[str, Any]:
        d, deny = self.d, set()
        action, kind = inp.get("action", "call"), inp.get("kind", "")
        pid = inp["principal"]["id"]
        pe = self._entry(inp["principal"])
        roles = set(inp["principal"].get("roles", [])) | set(pe.get("roles", []))
        tool: dict[str, Any] = inp["tool"] if isinstance(inp.get("tool"), dict) else {}
        is_tool, is_call = kind == "tools/call", action == "call"
        name: str | None = tool.get("name")
        permitted = False
        if is_tool and name is not None:
            permitted = self._any(self._patterns(inp["principal"], roles, "tools"), name)
            if not permitted:
                deny.add(f"principal {pid} may not use tool {name} (not in its allow-list)")
            if self._any(self._patterns(inp["principal"], roles, "deny_tools"), name):
                deny.add(f"tool {name} is on the deny-list of principal {pid}")
            ver = tool.get("verification", "unverified")
            up = d.get("upstreams", {}).get((inp.get("upstream") or {}).get("name"), {})
            if not (
                ver in ("verified", "pinned")
                or (ver in ("unverified", "off") and up.get("allow_unverified") is True)
            ):
                deny.add(f"tool {name} is {ver}: only verified or pinned tools may be called")
            if is_call:
                args = inp.get("arguments", {})
                for k, v in self._values(args, d.get("path_arguments", [])):
                    if not self._path_ok(v):
                        deny.add(f"argument {k} is not a path under an allowed root")
                for k, v in self._values(args, d.get("url_arguments", [])):
                    host = self._host(v)
                    if host is None:
                        deny.add(f"argument {k} is not an http(s) URL")
                    elif not any(r.match(host) for r in self._host_res):
                        deny.add(f"argument {k}: host {host} is not in the allow-list")
        elif kind in ("resources/read", "prompts/get"):
            field = "resources" if kind == "resources/read" else "prompts"
            permitted = self._any(self._patterns(inp["principal"], roles, field), inp.get("target", ""))
            if not permitted:
                verb = "read resource" if field == "resources" else "get prompt"
                deny.add(f"principal {pid} may not {verb} {inp.get('target')}")
        if is_call:
            cap = pe.get("max_calls_per_hour", d.get("default_max_calls_per_hour", 0))
            if cap > 0 and inp.get("context", {}).get("calls_last_hour", 0) >= cap:
                deny.add(f"principal {pid} reached its limit of {cap} calls per hour")
        allow = not deny and permitted
        if deny:
            reasons = sorted(deny)
        elif allow:
            reasons = []
        else:
            target = name if is_tool and name is not None else inp.get("target", "")
            reasons = [f"no rule allows {kind} on {target} (default deny)"]
        cond: dict[str, Any] = {}
        if allow and is_tool and name is not None:
            if tool.get("code_tool") is True:
                cond["sandbox_tier"] = "docker" if "trusted" in roles else "gvisor"
            rates = [n for p, n in d.get("tool_rate_limits", {}).items() if fnmatchcase(name, p)]
            cond["rate_limit"] = min(rates + [pe.get("rate_limit", d.get("default_rate_limit", 60))])
            caps = [n for p, n in d.get("max_result_bytes", {}).items() if fnmatchcase(name, p)]
            if caps:
                cond["max_result_bytes"] = min(caps)
            for f in ("redact_arguments", "redact_result"):
                keys = sorted({k for p, ks in d.get(f, {}).items() if fnmatchcase(name, p) for k in ks})
                if keys:
                    cond[f] = keys
            cond["audit"] = "minimal" if self._any(d.get("audit_minimal", []), name) else "full"
        return {"allow": allow, "reasons": reasons, "conditions": cond}


def pct(sorted_ns: list[int], p: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(p * len(sorted_ns)))] / 1000.0


def latency(fn: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]], n: int) -> dict[str, float]:
    for i in range(200):  # warm-up (regorus prepares lazily)
        fn(inputs[i % len(inputs)])
    samples = []
    for i in range(n):
        inp = inputs[i % len(inputs)]
        t0 = time.perf_counter_ns()
        fn(inp)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return {
        "p50_us": round(pct(samples, 0.50), 2),
        "p90_us": round(pct(samples, 0.90), 2),
        "p99_us": round(pct(samples, 0.99), 2),
        "mean_us": round(statistics.fmean(samples) / 1000, 2),
    }


def throughput(
    fn: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]], seconds: float
) -> dict[str, float]:
    n, end = 0, time.perf_counter() + seconds
    c0, t0 = time.thread_time(), time.perf_counter()
    while time.perf_counter() < end:
        for inp in inputs:
            fn(inp)
        n += len(inputs)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return {"decisions_per_s": round(n / wall), "decisions_per_cpu_s": round(n / cpu) if cpu else 0}


def threaded(
    engine: EmbeddedEngine, inputs: list[dict[str, Any]], threads: int, seconds: float
) -> dict[str, Any]:
    counts = [0] * threads
    start, stop = threading.Barrier(threads + 1), threading.Event()

    def work(i: int) -> None:
        engine.decide(inputs[0])  # builds this thread's own engine before the clock starts
        start.wait()
        while not stop.is_set():
            for inp in inputs:
                engine.decide(inp)
            counts[i] += len(inputs)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return {"threads": threads, "decisions_per_s": round(sum(counts) / (time.perf_counter() - t0))}


def step_overhead(engine: EmbeddedEngine, n: int) -> dict[str, float]:
    tool = ToolInfo(
        name="fs__read_text_file",
        original_name="read_text_file",
        upstream="fs",
        definition={},
        verification="pinned",
    )
    up = UpstreamInfo(name="fs", transport="stdio")
    principal = Principal(id="admin", roles=("admin",))  # admin: no per-minute limit trips in the loop

    async def endpoint(call: CallContext) -> Any:
        from mcp.types import CallToolResult, TextContent

        return CallToolResult(content=[TextContent(type="text", text="ok")])

    def new_call() -> CallContext:
        return CallContext(
            principal=principal,
            kind="tools/call",
            target=tool.name,
            arguments={"path": "/srv/symbi/a.txt", "token": "x"},
            tool=tool,
            upstream=up,
        )

    async def measure(handler: Any) -> list[int]:
        out = []
        for _ in range(n):
            call = new_call()
            t0 = time.perf_counter_ns()
            await handler(call)
            out.append(time.perf_counter_ns() - t0)
        return sorted(out)

    class Unlimited(CallCounters):
        def try_acquire(self, principal: str, tool: str, limit_per_minute: int | None) -> bool:
            return super().try_acquire(principal, tool, None)

    bare = asyncio.run(measure(build_chain([], endpoint)))
    with_step = asyncio.run(measure(build_chain([PolicyStep(engine, Unlimited())], endpoint)))
    return {
        "bare_endpoint_p50_us": round(pct(bare, 0.5), 2),
        "with_policy_step_p50_us": round(pct(with_step, 0.5), 2),
        "policy_step_p50_us": round(pct(with_step, 0.5) - pct(bare, 0.5), 2),
        "policy_step_p99_us": round(pct(with_step, 0.99) - pct(bare, 0.99), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--timed", type=int, default=3000)
    ap.add_argument("--threads", default="1,2,4")
    args = ap.parse_args()

    files = discover_files()
    engine = EmbeddedEngine(files)
    if not engine.load():
        print(json.dumps({"error": "policies.rego does not load"}))
        return 1
    inputs = [c.input for c in load_cases(ROOT / "policies" / "cases.json")]
    pure = PurePolicy(json.loads(files.data.read_text()) if files.data else {})
    agree = sum(decision_dict(engine.decide(i)) == pure.decide(i) for i in inputs)

    emb_lat = latency(engine.decide, inputs, args.timed)
    pure_lat = latency(pure.decide, inputs, args.timed)
    emb_tp = throughput(engine.decide, inputs, args.seconds)
    pure_tp = throughput(pure.decide, inputs, args.seconds)
    out = {
        "benchmark": "policy",
        "inputs": len(inputs),
        "baseline_agrees_on": f"{agree}/{len(inputs)}",
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "embedded_regorus": {**emb_lat, **emb_tp},
        "pure_python_baseline": {**pure_lat, **pure_tp},
        "ratio_p50_embedded_over_pure": round(emb_lat["p50_us"] / pure_lat["p50_us"], 1),
        "threads": [threaded(engine, inputs, int(t), args.seconds) for t in args.threads.split(",")],
        "step": step_overhead(engine, args.timed),
        "targets": {"per_decision_us": 1000, "decisions_per_s": 10000},
    }
    print(json.dumps(out, indent=2))
    engine.close()
    return 0 if agree == len(inputs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
