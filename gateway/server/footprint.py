"""How much state the gateway holds, counted per structure (not RSS).

Everything kept per session, per principal, per upstream or per tool is listed here with
its size, so a test can open and close thousands of sessions and check that every count is
back where it started, and the soak benchmark can plot them (``GET /api/state``).

Two kinds of entries:
- ``owned``: freed when their owner goes away (a session closes, a call ends, a principal or
  tool goes idle past its longest window, a tool leaves the catalogue);
- ``bounded``: ring buffers and caches with a fixed cap (``caps`` gives it), whatever the load;
- ``vocabulary``: metric label sets over fixed vocabularies (status codes, event types).

The SDK's session tables are counted through ``gateway.compat`` (the one module that reads
library internals).
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import TYPE_CHECKING, Any

from gateway.compat import http_session_counts

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.bus.builtin import BusBuiltin
    from gateway.server.http import HttpState


def metrics_label_sets(metrics: Any, *, label: str | None = None) -> int:
    """Label sets held by the labelled metrics of ``metrics`` (a ``GatewayMetrics``); with
    ``label``, only those that carry it (``tool``: the ones owned by catalogue tools)."""
    held: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k not in ("le", "quantile")}
            if labels and (label is None or label in labels):
                held.add((family.name, tuple(sorted(labels.items()))))
    return len(held)


def gateway_footprint(gw: Gateway | None) -> dict[str, int]:
    if gw is None:
        return {}
    out = {
        "downstream_connections": gw.downstream_connections,
        "upstream_inflight": sum(u.relay.in_flight for u in gw.upstreams.values()),
        "catalog_tools": len(gw.catalog.tools),
        "listen_streams": len(gw.listen),  # 2026-era subscriptions/listen streams open
        "bridged_calls_waiting": len(gw.pending),  # 2025 upstream calls waiting for a 2026 client's answer
        "agents": len(gw.agents),  # session agents end with their session (not hosted ones)
    }
    for k, v in gw.counters.sizes().items():
        out[f"counters_{k}"] = v
    bus = _bus(gw)
    if bus is not None:  # bus keys, caches and watches per agent (rows of both key stores too)
        out.update(bus.footprint())
    return out


def gateway_bounded(gw: Gateway | None) -> dict[str, tuple[int, int]]:
    """The gateway's capped caches: name -> (size, cap)."""
    bus = _bus(gw)
    return bus.bounded() if bus is not None else {}


def _bus(gw: Gateway | None) -> BusBuiltin | None:
    from gateway.bus.builtin import BusBuiltin

    bus = gw.builtins.get("bus") if gw is not None else None
    return bus if isinstance(bus, BusBuiltin) else None


def http_footprint(state: HttpState) -> dict[str, Any]:
    """The HTTP front and its gateway; call it on the server's event loop (tasks are counted)."""
    manager = state.manager
    if state.gateway is not None:
        state.metrics.keep_tools(state.gateway.catalog.tools)
    sessions, session_owners = http_session_counts(manager)
    owned: dict[str, int] = {
        "sessions": sessions,
        "session_owners": session_owners,
        "metrics_tool_label_sets": metrics_label_sets(state.metrics, label="tool"),
        **gateway_footprint(state.gateway),
    }
    try:
        owned["tasks"] = len(asyncio.all_tasks())
    except RuntimeError:  # not on a running loop (a test thread)
        pass
    store = getattr(manager, "event_store", None)
    bounded = {"recent_calls": len(state.recent), "sse_events": len(store) if store is not None else 0}
    caps = {"recent_calls": state.recent.size, "sse_events": getattr(store, "max_events", 0)}
    for name, (size, cap) in gateway_bounded(state.gateway).items():
        bounded[name], caps[name] = size, cap
    # label sets over fixed vocabularies (route group x status, event type, decision, tier):
    # bounded by the vocabularies, not by any owner; reported, not compared
    vocabulary = {"metrics_label_sets": metrics_label_sets(state.metrics)}
    return {
        "owned": owned,
        "bounded": bounded,
        "caps": caps,
        "vocabulary": vocabulary,
        "process": process_footprint(),
    }


def process_footprint() -> dict[str, int]:
    """Open file descriptors, threads and RSS of this process (Linux /proc)."""
    out = {"threads": threading.active_count()}
    try:
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
        with open("/proc/self/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    return out
