"""bench/speed.py's JSON document from its rounds: medians over rounds, the ratios against
direct and against the baseline tree, and issue 16's targets."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bench._common import (
    CallStats,
    latency_summary,
    median,
)
from bench._machine import host

if TYPE_CHECKING:
    from bench.speed import PolicyPart


def stdio_report(rounds: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in names:
        seq, conc = CallStats(), CallStats()
        p50, p99, rate = [], [], []
        for rnd in rounds:
            s, c = rnd["stdio"][name]["sequential"], rnd["stdio"][name]["concurrent"]
            seq.merge(s)
            conc.merge(c)
            lat = latency_summary(s.latencies)
            p50.append(lat["p50_ms"])
            p99.append(lat["p99_ms"])
            rate.append(c.calls_per_s)
        out[name] = {
            "p50_ms": round(median(p50), 3),
            "p99_ms": round(median(p99), 3),
            "p50_ms_per_round": p50,
            "p99_ms_per_round": p99,
            # every round's sequential calls in one sample: a round's p99 of --sequential 300 is
            # its third-slowest call, so one stall moves it; pooled, the target reads this one
            "p99_ms_pooled": latency_summary(seq.latencies)["p99_ms"],
            "sequential_calls_pooled": len(seq.latencies),
            "calls_per_s_concurrent": round(median(rate), 1),
            "calls_per_s_per_round": [round(x, 1) for x in rate],
            "ok": seq.ok + conc.ok,
            "misrouted": seq.misrouted + conc.misrouted,
            "errors": seq.errors + conc.errors,
        }
    for name in names[1:]:
        added, p99r, thr = [], [], []
        for rnd in rounds:
            d, g = rnd["stdio"]["direct"], rnd["stdio"][name]
            dl, gl = latency_summary(d["sequential"].latencies), latency_summary(g["sequential"].latencies)
            added.append(gl["p50_ms"] - dl["p50_ms"])
            p99r.append(gl["p99_ms"] / dl["p99_ms"])
            thr.append(g["concurrent"].calls_per_s / d["concurrent"].calls_per_s)
        out[name]["vs_direct"] = {
            "added_p50_ms": round(median(added), 3),
            "added_p50_ms_per_round": [round(x, 3) for x in added],
            "p99_ratio": round(median(p99r), 2),
            "p99_ratio_per_round": [round(x, 2) for x in p99r],
            "p99_ratio_pooled": round(out[name]["p99_ms_pooled"] / out["direct"]["p99_ms_pooled"], 2),
            "throughput_ratio": round(median(thr), 3),
        }
    return out


def _vs_baseline(rounds: list[dict[str, Any]], name: str, base: str) -> dict[str, Any]:
    """This tree's gateway against the same gateway from ``--baseline-tree``, round by round
    (medians): p50 and p99 ratios (below 1 is faster) and the calls/s ratio (above 1 is more)."""
    p50, p99, thr = [], [], []
    for rnd in rounds:
        a, b = rnd["stdio"][name], rnd["stdio"][base]
        al, bl = latency_summary(a["sequential"].latencies), latency_summary(b["sequential"].latencies)
        p50.append(al["p50_ms"] / bl["p50_ms"])
        p99.append(al["p99_ms"] / bl["p99_ms"])
        thr.append(a["concurrent"].calls_per_s / b["concurrent"].calls_per_s)
    return {
        "p50_ratio": round(median(p50), 3),
        "p99_ratio": round(median(p99), 3),
        "throughput_ratio": round(median(thr), 3),
        "p50_ratio_per_round": [round(x, 3) for x in p50],
        "throughput_ratio_per_round": [round(x, 3) for x in thr],
    }


def _med(rounds: list[dict[str, Any]], *path: str) -> float:
    vals = []
    for rnd in rounds:
        v: Any = rnd
        for k in path:
            v = v[k]
        vals.append(float(v))
    return round(median(vals), 3)


def report(
    rounds: list[dict[str, Any]], names: list[str], policy: PolicyPart, args: argparse.Namespace
) -> dict[str, Any]:
    stdio = stdio_report(rounds, names)
    pol = {
        side: {k: _med(rounds, "policy", side, k) for k in ("decisions_per_s", "p50_us", "p99_us")}
        for side in ("embedded", "embedded_cached", "pure_python")
    }
    aud = {
        k: round(_med(rounds, "audit", k), 3 if k.endswith("_ms") else 2 if "cpu" in k else None)
        for k in rounds[0]["audit"]
    }
    http: dict[str, Any] = {}
    if args.http:
        http = {
            name: {k: _med(rounds, "http", name, k) for k in ("p50_ms", "p99_ms", "calls_per_s")}
            | {"misrouted_or_failed": sum(r["http"][name]["misrouted_or_failed"] for r in rounds)}
            for name in ("direct", "gateway")
        }
    targets = _targets(stdio, pol, aud, http, args)
    versus = {
        name: _vs_baseline(rounds, name, f"{name}_baseline")
        for name in ("gateway_secure", "gateway_off")
        if f"{name}_baseline" in names
    }
    lane = {
        name: _vs_baseline(rounds, name, f"{name}_sdk_front")
        for name in ("gateway_secure", "gateway_off")
        if f"{name}_sdk_front" in names
    }
    errors = sum(s["misrouted"] + s["errors"] for s in stdio.values())
    errors += sum(h["misrouted_or_failed"] for h in http.values())
    return {
        "benchmark": "speed (issue 16)",
        "rounds": args.rounds,
        "host": host(),
        # each round's machine_speed at its start (bench/_machine.machine_speed: the VM's level)
        "machine_speed_per_round": [rnd["machine"] for rnd in rounds if "machine" in rnd],
        "stdio": stdio,
        "stdio_vs_baseline_tree": versus,
        "stdio_lane_vs_sdk_front": lane,
        "policy": {
            **pol,
            "baseline_agrees_on": f"{policy.agree}/{len(policy.inputs)}",
            "embedded_vs_pure_throughput": round(
                pol["embedded"]["decisions_per_s"] / pol["pure_python"]["decisions_per_s"], 2
            ),
        },
        "audit": {
            **aud,
            "signed_vs_unsigned": round(aud["signed_emit_per_s"] / aud["baseline_unsigned_sqlite_per_s"], 3),
        },
        "http": http,
        "targets": targets,
        "misrouted_or_errors_total": errors,
    }


def _goal(target: float, measured: float, lower: bool, **extra: str) -> dict[str, Any]:
    met = measured <= target if lower else measured >= target
    return {
        "target": target,
        "measured": measured,
        "better": "lower" if lower else "higher",
        "met": met,
        **extra,
    }


def _targets(
    stdio: dict[str, Any],
    pol: dict[str, Any],
    aud: dict[str, Any],
    http: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Issue 16's targets against the medians over rounds."""
    sec, off, relay = stdio["gateway_secure"], stdio["gateway_off"], stdio["relay"]
    targets: dict[str, Any] = {
        "stdio_secure_added_p50_ms": _goal(0.5, sec["vs_direct"]["added_p50_ms"], True),
        "stdio_secure_p99_vs_direct": _goal(
            2.0,
            sec["vs_direct"]["p99_ratio_pooled"],
            True,
            note=f"p99 of every round's sequential calls ({sec['sequential_calls_pooled']} each side)",
        ),
        "stdio_secure_throughput_vs_direct": _goal(0.6, sec["vs_direct"]["throughput_ratio"], False),
        "stdio_off_p50_over_relay_ms": _goal(0.1, round(off["p50_ms"] - relay["p50_ms"], 3), True),
        "policy_decisions_per_s": _goal(10000, pol["embedded"]["decisions_per_s"], False),
        "policy_p99_ms": _goal(0.3, round(pol["embedded"]["p99_us"] / 1000, 3), True),
        "audit_appends_per_s": _goal(50000, aud["signed_emit_per_s"], False),
        "audit_verify_per_s": _goal(100000, aud["verify_all_signatures_per_s"], False),
        # process CPU per event (caller and writer threads): what one idle core would do
        "audit_appends_per_cpu_s": _goal(50000, round(1e6 / aud["signed_emit_cpu_us_per_event"]), False),
        "audit_verify_per_cpu_s": _goal(
            100000, round(1e6 / aud["verify_all_signatures_cpu_us_per_event"]), False
        ),
    }
    if http:
        targets["http_calls_per_s"] = _goal(
            1500,
            http["gateway"]["calls_per_s"],
            False,
            load=f"{args.http_clients} SDK clients in one process",
        )
        targets["http_p50_vs_direct_ms"] = _goal(
            http["direct"]["p50_ms"],
            http["gateway"]["p50_ms"],
            True,
            note="direct server-everything stands in for mcp-proxy",
        )
    return targets
