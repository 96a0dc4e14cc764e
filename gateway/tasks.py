"""The gateway's long-running tasks that ``gateway.assemble.make_gateway`` starts: approval
and manifest changes, and changed discovered keys, re-verify the catalogue; discovery of MCP
servers; audit retention and the summaries of counted refusals."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from gateway.app import Background, Gateway
from gateway.audit.log import AuditLog
from gateway.config.model import Config, ServerConfig
from gateway.errors import AuditError
from gateway.events import Event, EventSink, Unsent, record_acted
from gateway.state import Changes
from gateway.verify.verifier import ToolVerifier

if TYPE_CHECKING:  # imported when discovery runs (gateway.tasks.discover)
    from gateway.onboard.discovery import Discovered

_logger = logging.getLogger("symbi.assemble")


def audit_retention(config: Config, audit: AuditLog) -> Background | None:
    """Audit retention, applied periodically, when ``[audit] retention_days`` / ``max_bytes`` is set."""
    from gateway.audit.retention import RetentionPolicy, periodic

    policy = RetentionPolicy.from_config(config)
    return periodic(audit, policy, config.audit.retention_check_s) if policy.enabled else None


def refusal_summaries(audit: AuditLog, window_s: float) -> Background:
    """Record the counted refusals of windows that ended (``AuditLog.summarize_refusals``):
    the next refusal of the principal would, but a burst that stops has no next one. Checked
    a few times a window (at most every 5 s), so a summary is written soon after its window."""
    interval = min(max(window_s / 4, 0.05), 5.0)

    async def run(gw: Gateway) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                audit.summarize_refusals()
            except AuditError as e:  # a broken log refuses every call from now on: said there
                _logger.error("counted refusals not recorded: %s", e.message)

    return run


def poll_approvals(verifier: ToolVerifier, interval: float, changes: Changes | None = None) -> Background:
    """Re-assess the catalogue when the CLI approves/revokes or a manifest changes: every
    ``interval`` seconds, or at once when ``changes`` wakes it (PostgreSQL's NOTIFY).

    The revoked tools are read first and refused at call time from then on: the rebuild may
    wait behind another (an upstream's long listing), and so may the next one, without
    holding up this loop (one rebuild is kept due while one runs)."""

    async def run(gw: Gateway) -> None:
        # off the event loop: with [state] postgres_url the fingerprint is a query, which
        # blocks up to state.timeout_s while PostgreSQL is unreachable
        seen = await anyio.to_thread.run_sync(verifier.fingerprint)
        await anyio.to_thread.run_sync(verifier.revocations.reload)
        due, wake = anyio.create_memory_object_stream[None](1)
        # the only record of a CLI approve/revoke (the CLI writes none): held until the log
        # commits it. Never waited for here: a stalled disk must not hold the next revoke up
        unsent = verifier.unsent
        async with anyio.create_task_group() as tg:
            tg.start_soon(_refresh_when_due, gw, wake)
            tg.start_soon(_send_held, gw, unsent, interval)
            while True:
                if changes is None:
                    await anyio.sleep(interval)
                else:
                    await changes.wait(interval)
                now = await anyio.to_thread.run_sync(verifier.fingerprint)
                if now == seen:
                    continue
                seen = now
                await anyio.to_thread.run_sync(verifier.revocations.reload)
                _logger.info("approvals or manifests changed: re-verifying the catalogue")
                # made outside this process (symbi tools approve/revoke, a manifest edit): queued
                # before the rebuild's records, not waited for
                unsent.keep(Event.TOOL_APPROVALS_CHANGED, {"fingerprint": [str(x) for x in now]})
                unsent.queue(gw.events)
                with contextlib.suppress(anyio.WouldBlock):  # one is due already: it sees this too
                    due.send_nowait(None)

    return run


async def _send_held(gw: Gateway, unsent: Unsent, interval: float) -> None:
    """Every ``interval``, the held records the log has not committed (refused, or failed by
    its writer) queued again and waited for: apart from the poll, which a stalled disk must not
    hold up. One in flight (a stalled commit) is waited on, not queued again. A log that
    refused them is not tried again (``Unsent.refused_by``: broken for the process's life)."""
    while True:
        await anyio.sleep(interval)
        if len(unsent) and unsent.refused_by(gw.events) is None:  # (its walk, skipped for good)
            await unsent.send(gw.events)


def watch_keys(verifier: ToolVerifier, interval: float) -> Background:
    """Re-resolve every upstream's domain each ``interval`` seconds and re-assess the catalogue
    when a key's fingerprint, revocation or reachability differs from what the verdicts were
    made with (a developer revoking a compromised key, on a running gateway)."""

    async def run(gw: Gateway) -> None:
        while True:
            await anyio.sleep(interval)
            moved = await verifier.keys.changed()
            if not moved:
                continue
            _logger.warning("discovered keys changed for %s: re-verifying the catalogue", moved)
            # queued ahead of the rebuild's records, not waited for (the approvals poll's sender
            # does): a stalled disk must not hold the new verdicts (a revoked key) up
            verifier.unsent.keep(Event.TOOL_KEYS_CHANGED, {"upstreams": moved})
            verifier.unsent.queue(gw.events)
            await gw.refresh()

    return run


async def _refresh_when_due(gw: Gateway, wake: MemoryObjectReceiveStream[None]) -> None:
    async for _ in wake:
        await gw.refresh()


def discover(config: Config, events: EventSink) -> Background:
    """Discovery: new servers quarantined (not started), approved ones started with tofu
    verification (a person approved the server: what it offers is pinned on first sight).
    Claude Code's managed MCP policy is read once a pass and checked for every approved or
    running discovered server: one it blocks (or whose config holds references the gateway
    does not fill in) is not started, or is stopped if it runs. One gone from its client's
    config is stopped if it runs (``server.stopped``)."""
    from gateway.onboard.discovery import discovery_store

    discovery = discovery_store(config, events)

    async def run(gw: Gateway) -> None:
        failed = ""  # the last pass's failure, logged once until it changes or a pass succeeds
        blocked: dict[str, str] = {}  # approved servers not to run (managed policy...), logged once
        while True:
            try:
                added, removed = await anyio.to_thread.run_sync(discovery.poll)
                # a running one no longer approved (removed, or changed in its file) is stopped below
                ours = [
                    d
                    for d in discovery.entries().values()
                    if d.status == "approved" or d.name in gw.upstreams
                ]
                refused = await anyio.to_thread.run_sync(discovery.managed_policy().refusals, ours)
                # approved before approving one was refused: it would start without its secret
                refused |= {d.name: why for d in ours if (why := d.unresolved()) is not None}
            except Exception as e:  # noqa: BLE001 - a failed pass must not stop the gateway
                # fail closed: nothing is quarantined, removed or started from this pass
                if str(e) != failed:
                    failed = str(e)
                    _logger.error(
                        "discovery pass failed (retried every %gs): %s", config.mcp.recheck_interval_s, e
                    )
                await anyio.sleep(config.mcp.recheck_interval_s)
                continue
            failed = ""
            _log_discovered(added, removed)
            for d in ours:
                if d.status != "approved":  # running, its approval gone: removed, or its config changed
                    await _stop_unapproved(gw, d)
                elif d.name in refused:
                    await _block(gw, d, refused[d.name], blocked)
                elif d.status == "approved" and d.name not in gw.upstreams:
                    blocked.pop(d.name, None)
                    await _start_approved(gw, d)
            await anyio.sleep(config.mcp.recheck_interval_s)

    return run


async def _block(gw: Gateway, d: Discovered, why: str, logged: dict[str, str]) -> None:
    """A discovered server Claude Code's managed policy blocks (deployed since its approval),
    or approved with references the gateway does not fill in (before that was refused):
    stopped if it runs; on the record and in the log once per reason."""
    running = d.name in gw.upstreams
    if logged.get(d.name) == why and not running:
        return
    logged[d.name] = why
    stopped = await _stop(gw, d, Event.SERVER_BLOCKED, why)
    done = "stopped" if stopped else "could not be stopped" if running else "not started"
    _logger.error("approved server %s %s: %s", d.name, done, why)


# why a running discovered server is no longer approved, by its status now
_UNAPPROVED = {
    "removed": "removed from its source",
    # the approval was for the config the person saw: `symbi tools approve` names the new one's digest
    "quarantined": "its launch config changed in its source: it waits for an approval again",
}


async def _stop_unapproved(gw: Gateway, d: Discovered) -> None:
    """A running discovered server no longer approved (gone from its client's config, or its
    launch config changed there): stopped, on the record as ``server.stopped``."""
    why = _UNAPPROVED.get(d.status, f"its status is {d.status!r}")
    if await _stop(gw, d, Event.SERVER_STOPPED, why):
        _logger.warning("discovered server %s stopped (%s): %s", d.name, d.source, why)


async def _stop(gw: Gateway, d: Discovered, event: Event, why: str) -> bool:
    """Stop ``d`` if it runs (its processes end, its tools leave the catalogue) and record
    ``event`` with the reason; whether it was stopped."""
    stopped = False
    if d.name in gw.upstreams:
        try:
            await gw.remove_server(d.name)
            stopped = True
        except Exception:  # out of the catalogue all the same (remove_server's finally)
            _logger.exception("discovered server %s (%s): stopping it failed", d.name, why)
    # (a stop is the safe side: done whatever the audit log says; a refused record ended the gateway)
    record_acted(gw.events, event, {"server": d.name, "source": d.source, "reason": why, "stopped": stopped})
    return stopped


def _log_discovered(added: list[Discovered], removed: list[Discovered]) -> None:
    for d in added:
        if d.status == "approved":  # back with the launch config that was approved
            _logger.warning("discovered MCP server %r is back in %s, as approved", d.original_name, d.source)
            continue
        _logger.warning(
            "discovered MCP server %r in %s: quarantined until `symbi tools approve %s`",
            d.original_name,
            d.source,
            d.name,
        )
    for d in removed:
        _logger.warning("discovered MCP server %r is gone from %s", d.original_name, d.source)


async def _start_approved(gw: Gateway, d: Discovered) -> None:
    """A discovered server a person approved, started with tofu verification."""
    try:
        srv = ServerConfig.model_validate({**d.table, "verification": "tofu"})
        gw.events.emit(
            Event.SERVER_APPROVED,
            {
                "server": d.name,
                "source": d.source,
                "original_name": d.original_name,
                "approved_by": d.approved_by,
                "verification": "tofu",
            },
        )
        await gw.add_server(d.name, srv)
    except Exception as e:  # noqa: BLE001 - a bad entry must not stop discovery
        _logger.error("approved server %s cannot start: %s", d.name, e)
