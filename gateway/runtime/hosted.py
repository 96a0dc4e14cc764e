"""Hosted agents: ``[agents.NAME]`` processes the runtime runs, in a sandbox tier, always.

One *run* of a hosted agent is one agent record (Terminated is final in the seed, so a restart
is a new record under the same name):

    Initializing --valid config--> Ready --task assigned: process started--> Running
    exit 0:        Running --task complete--> Ready --shutdown--> Terminated
    failure:       Running --policy violation (resource constraint: OOM, budget, crash)--> Suspended
                   Suspended --manual override (restart policy)--> Terminated
    bad config / tier unavailable / escalated: Initializing --invalid config--> Failed --> Terminated

The process gets a credential of its own: an API key for its principal (``agent:NAME`` by
default) that the runtime makes before the start and revokes when the run ends, bound to
this run's agent id. It has no network: the only way out of its sandbox is the gateway's
Unix socket (``/run/symbi/gateway.sock`` inside), where it is an MCP client like any other,
so every tool call passes verification, policy and audit as its own principal.

Budgets go to the tier's cgroup: memory_mb (OOM kill), cpu_cores (cpu quota), disk_io_mbps
(blkio), execution_timeout_s (the run is killed); network is off. ``max_failures`` failures
within ``failure_window_s`` escalate: the next run is Failed and no more restarts happen.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from gateway.config.model import Config
from gateway.config.sections import AgentConfig
from gateway.errors import AuditError, GatewayError, InvalidTransition
from gateway.events import Event, EventSink, record_acted
from gateway.runtime import launch
from gateway.runtime.agentlog import AgentLog
from gateway.runtime.agents import Agent, hosted_principal
from gateway.runtime.core import AgentRuntime
from gateway.runtime.launch import AgentHost, escalated, failed_run, hosted_command, interval_s, launchable
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.resources import ResourceLimits
from gateway.runtime.sandboxed import Sandboxed
from gateway.runtime.sandboxed import kill_run as _kill

if TYPE_CHECKING:
    from gateway.runtime.leased import LeasedAgents
    from gateway.sandbox.manager import SandboxManager
    from gateway.state.leases import LeaseBoard

_logger = logging.getLogger("symbi.runtime.hosted")

AUDIT_RETRY_S = 5.0  # a hosted agent's next try while the audit log cannot record it


class HostedAgents:
    """Starts, watches, restarts and stops the hosted agents of one gateway."""

    def __init__(
        self,
        config: Config,
        runtime: AgentRuntime,
        events: EventSink,
        *,
        sandbox: SandboxManager | None,
        host: AgentHost | None,
        board: LeaseBoard | None = None,
        recordable: Callable[[], None] | None = None,
        unwritable: Callable[[], AuditError | None] | None = None,
    ) -> None:
        self.config = config
        # raises AuditError while the audit log cannot record (its ensure_writable): no run then
        self.recordable = recordable
        self.unwritable = unwritable  # the same check, quiet (the lease runner's, each renewal)
        self.runtime = runtime
        self.events = events
        self.sandbox = sandbox  # None: no tier can run here
        self.keys = host.keys if host is not None else None
        self.socket_path = host.socket_path if host is not None else None
        self._wake = {name: anyio.Event() for name in config.agents}
        self._stop: dict[str, Callable[[], None]] = {}
        # a restart's backoff or an interval's wait, and its thread (a scope is cancelled on it)
        self._pauses: dict[str, tuple[anyio.CancelScope, int]] = {}
        self._halted: set[str] = set()  # terminated by an operator since its last run started
        self._failures: dict[str, deque[float]] = {name: deque() for name in config.agents}
        self.runs: dict[str, int] = {name: 0 for name in config.agents}
        # run credentials not revoked (the key store was down): retried until done
        self.unrevoked: set[str] = set()
        # each agent's live run credential (its key id): on the lease board for other replicas
        self.run_keys: dict[str, str] = {}
        self.refusing: set[str] = set()  # agents whose runs are refused now (the audit log broken)
        runtime.on_terminate.append(self._terminated)
        # [state] redis_url: replicas share the config, each agent runs where its lease is; the
        # board is the assembly's, on the process's one Redis client (``gateway.assemble``)
        self.leased: LeasedAgents | None = None
        if board is not None and config.agents:
            from gateway.runtime.leased import LeasedAgents

            self.leased = LeasedAgents(self, board)

    # -- control ------------------------------------------------------------------------------

    def request_start(self, name: str) -> str:
        """``symbi agents run NAME``: start it now (on-demand or idle between runs)."""
        if name not in self.config.agents:
            raise GatewayError(f"no hosted agent {name!r} in the config ([agents.{name}])")
        if self.leased is not None and not self.leased.holds(name):
            return self.leased.request_elsewhere(name)  # it runs in another replica
        live = self.runtime.agents.by_name(name)
        if live is not None and live.state in (AgentState.RUNNING, AgentState.INITIALIZING, AgentState.READY):
            return "already running"
        self._wake[name].set()
        return "starting"

    def _terminated(self, agent: Agent) -> None:
        """An operator's terminate (here or passed as an order): the run stopped, and a start
        not run yet withdrawn, here and on Redis (passed on at the lease's loss, it ran the
        terminated agent on another replica)."""
        if not agent.hosted or agent.name not in self._wake:
            return
        if (stop := self._stop.get(agent.name)) is not None:
            stop()
        self._halted.add(agent.name)  # no restart of it (its record Terminated in a backoff)
        pause, thread = self._pauses.get(agent.name, (None, None))
        if pause is not None and thread == threading.get_ident():  # (else it waits its end)
            pause.cancel()
        self.withdraw_start(agent.name)

    def withdraw_start(self, name: str, *, mark: bool = True) -> bool:
        """Every terminate's: a start asked here and not taken yet withdrawn, and (``mark``)
        one on Redis marked for the lease's loop (``LeasedAgents.withdraw``; False: the caller
        marks it, or not). Whether one was here."""
        asked = self._wake[name].is_set()
        if asked:  # only when set: a waiting supervisor keeps its event
            self._wake[name] = anyio.Event()
        if mark and self.leased is not None:
            self.leased.withdraw(name)
        return asked

    async def run(self) -> None:
        """Started with the gateway: one supervisor per enabled hosted agent (with shared
        state, for the agents whose lease this process holds)."""
        if self.leased is not None:
            await self.leased.run()
            return
        async with anyio.create_task_group() as tg:
            for name, ac in self.config.agents.items():
                if ac.enabled:
                    tg.start_soon(self._supervise, name, ac, name=f"agent-{name}")

    # -- supervision --------------------------------------------------------------------------

    async def _supervise(self, name: str, ac: AgentConfig) -> None:
        """``name``'s runs, for good. The audit log broken (``on_failure = "deny"``): no run is
        made that cannot be recorded (``AuditError`` ended the gateway, rt42b), it is tried again
        later. Only a run not started yet raises it here: an ended run's records go through
        ``record_acted`` and its outcome to the restart policy (session 43)."""
        self._halted.discard(name)  # an earlier holding's terminate: not this supervisor's
        while True:
            try:
                await self._runs(name, ac)
                return
            except AuditError as e:
                _logger.error("agent %s: not run while the audit log cannot record it (%s)", name, e)
                self.end_record(name, "the audit log cannot record it")  # a run it cut short
                self.refusing.add(name)  # its lease's holder lets it go to a replica that can
                if ac.start == "on-demand":  # the refused run (a start, a restart) stays asked for:
                    self._wake[name].set()  # a terminate in the wait withdraws it (``_may_start`` takes it)
                try:  # (a terminate in it ends it: no retry, as in a restart's backoff)
                    halted = not await self._pause(name, AUDIT_RETRY_S)
                finally:
                    self.refusing.discard(name)
                if halted and ac.start != "on-demand":  # (on-demand: waits for a new start)
                    return

    def end_record(self, name: str, why: str) -> None:
        """``name``'s run is over here (its process gone): its record says so, as a run that
        ended. Each move is made even when the audit log refuses its record (a record left
        Ready or Suspended made the next run's registration raise, and the supervisor end)."""
        agent = self.runtime.agents.by_name(name)
        if agent is None:
            return
        agent.hosted_busy = False
        moves = (
            (AgentState.RUNNING, AgentState.SUSPENDED, f"policy violation: {why}"),
            (AgentState.INITIALIZING, AgentState.FAILED, f"invalid config: {why}"),
            (AgentState.READY, AgentState.TERMINATED, f"run ended: {why}"),
            (AgentState.SUSPENDED, AgentState.TERMINATED, f"run ended: {why}"),
            (AgentState.FAILED, AgentState.TERMINATED, f"run ended: {why}"),
        )
        for src, to, reason in moves:  # each a lifecycle edge from the state it is made in
            if agent.state is src:
                self._move(agent, to, reason)

    async def _runs(self, name: str, ac: AgentConfig) -> None:
        every = interval_s(ac.start)
        ondemand = ac.start == "on-demand"
        backoff = ac.restart_backoff_s
        if ondemand:
            await self._wait_for_start(name)
        while True:
            self._may_start(name)
            outcome = await self._run_once(name, ac)
            ended = outcome in ("invalid", "escalated", "stopped")
            if not ended and every is not None:  # "30s": a run every interval, whatever the last did
                if await self._pause(name, every, start=True):
                    continue
            elif not ended and (
                ac.restart == "always" or (ac.restart == "on-failure" and outcome == "failed")
            ):
                if outcome == "ok":
                    backoff = ac.restart_backoff_s
                record_acted(
                    self.events,
                    Event.AGENT_RESTART_SCHEDULED,
                    {"name": name, "after_s": backoff, "outcome": outcome},
                )
                if await self._pause(name, backoff):  # (False: terminated in it)
                    backoff = min(backoff * 2, ac.restart_backoff_max_s)
                    continue
            # no run follows by itself: an on-demand agent waits for a new start (an operator's
            # terminate ends its run, not it: it returned, and the next `symbi agents run` was
            # answered "starting" and ran nothing), whose restarts back off afresh
            if not ondemand:
                return
            await self._wait_for_start(name)
            backoff = ac.restart_backoff_s

    async def _pause(self, name: str, seconds: float, *, start: bool = False) -> bool:
        """Wait ``seconds`` (``start``: or for a start). False: an operator terminated the agent
        (its record Terminated already, the restart ran it): no run follows, as after a live one's."""
        pause = anyio.CancelScope(deadline=anyio.current_time() + seconds)
        self._pauses[name] = (pause, threading.get_ident())
        try:
            with pause:
                await (self._wait_for_start(name) if start else anyio.sleep_forever())
        finally:
            del self._pauses[name]
        return name not in self._halted

    async def _wait_for_start(self, name: str) -> None:
        await self._wake[name].wait()  # taken by the run once it may start (``_may_start``)

    def _may_start(self, name: str) -> None:
        """Raises ``AuditError`` while the audit log cannot record a run (none made whose records
        would be refused): its start stays asked (a terminate in the retry's wait withdraws it,
        ``_supervise``). Else the start is taken, only now."""
        if self.recordable is not None:
            self.recordable()
        self._wake[name] = anyio.Event()
        self._halted.discard(name)  # a new run: a terminate from now on stops it

    async def _run_once(self, name: str, ac: AgentConfig) -> str:
        """One run (``_may_start`` passed): ``ok``, ``failed``, ``invalid`` (never started),
        ``escalated`` or ``stopped``."""
        rt = self.runtime
        self.runs[name] += 1
        principal = hosted_principal(name, ac)
        agent = rt.agents.add_hosted(name, principal, priority=ac.priority, run=self.runs[name])
        limits = ResourceLimits.from_config(ac.resources)
        rt.limits[agent.id] = limits
        if self._stop_escalated(name, ac, agent):
            return "escalated"
        tier = ac.sandbox or self.config.security.default_sandbox_tier
        record: Any = None
        try:
            keys = launchable(tier, self.keys, self.socket_path)
            if self.unrevoked:  # a past run's key an outage kept alive goes first
                await anyio.to_thread.run_sync(launch.revoke_pending, self.keys, self.unrevoked, _logger)
            # off the event loop: with [state] postgres_url the key store is a round trip
            key, record = await anyio.to_thread.run_sync(
                lambda: keys.create(principal.id, tuple(ac.roles), kind="agent")
            )
            rt.agents.bind_credential(record.id, agent)
            self.run_keys[name] = record.id
            # the agent's id is the same every run: the sandbox's name also carries a per-run part
            argv, cleanup = self._command(
                name, ac, tier, limits, key, f"{agent.id[-6:]}{os.urandom(3).hex()}"
            )
        except GatewayError as e:
            if record is not None:
                await self._revoke(record.id)
            self._fail(agent, f"invalid config: {e.message}")
            return "invalid"
        # the slot and the cgroup are given back on every way out: a GatewayError out of a
        # displaced victim's terminate left both taken for good (session 43)
        try:
            try:
                self._place(agent, name, ac, limits)
            except GatewayError as e:
                await self._revoke(record.id)
                # a victim still Initializing: a failed run (counted, recorded), run again later
                busy = isinstance(e, InvalidTransition)
                why = f"{'resource constraint' if busy else 'invalid config'}: {e.message}"
                self._fail(agent, why)
                if busy:
                    self._failed_run(agent, why, None, False)
                return "failed" if busy else "invalid"
            return await self._execute(agent, ac, tier, argv, cleanup, limits, record.id)  # revokes it
        except BaseException:
            await self._revoke(record.id)  # _execute failed, perhaps before its own revocation
            raise
        finally:
            rt.pool.release(agent.id)
            # shielded: a cancelled run (the gateway stopping) still removes its cgroup/container
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(cleanup.remove)

    def _place(self, agent: Agent, name: str, ac: AgentConfig, limits: ResourceLimits) -> None:
        """``agent``'s slot in the pool (``BudgetExceeded`` when none has room); the agents it
        displaces ("priority") are terminated, also when the audit log refuses their records
        (``InvalidTransition``, nothing displaced: one of them cannot be, it is Initializing)."""
        rt = self.runtime
        before = rt.pool.placements()
        _, displaced = rt.pool.allocate(agent.id, limits, ac.priority)
        victims = [v for v in map(rt.agents.get, displaced) if v is not None]
        if busy := [v.name for v in victims if v.state is AgentState.INITIALIZING]:
            # checked before any is terminated: one refused part-way left those before it gone
            # and the pool short of them (the retry over-committed it); the pool as it was
            rt.pool.restore(before)
            raise InvalidTransition(f"the agents it would displace are Initializing: {busy}")
        why = f"displaced from its resource slot by {name} (priority {ac.priority})"
        for victim in victims:
            self._unrecorded(victim, "displacement", functools.partial(rt.terminate, victim, why))

    def _stop_escalated(self, name: str, ac: AgentConfig, agent: Agent) -> bool:
        """True (and the agent failed, the event emitted) when it failed too often lately."""
        failures = escalated(self._failures[name], ac)
        if not failures:
            return False
        reason = f"escalated: {failures} failures within {ac.failure_window_s:g} s (max_failures)"
        self._fail(agent, reason)
        record_acted(
            self.events,
            Event.AGENT_ESCALATED,
            {"name": name, "failures": failures},
            principal=agent.principal,
            agent=agent.id,
        )
        return True

    def _fail(self, agent: Agent, reason: str) -> None:
        self._move(agent, AgentState.FAILED, reason)
        self._move(agent, AgentState.TERMINATED, "failed")

    def _move(self, agent: Agent, to: AgentState, reason: str) -> None:
        """A move of a run that has ended or was refused: made also when its record is refused
        (the state moves before it), so the outcome reaches the restart policy, not an error."""
        move = functools.partial(self.runtime.agents.transition, agent, to, reason)
        self._unrecorded(agent, f"move to {to.value}", move)

    @staticmethod
    def _unrecorded(agent: Agent, what: str, step: Callable[[], object]) -> None:
        """``step`` on ``agent``, done also when the log refuses its record (written after it)."""
        try:
            step()
        except AuditError as e:
            _logger.error("agent %s: its %s not recorded: %s", agent.name, what, e.message)

    async def _revoke(self, key_id: str) -> None:
        self.runtime.agents.unbind_credential(key_id)
        for name in [n for n, k in self.run_keys.items() if k == key_id]:
            del self.run_keys[name]
        self.unrevoked.add(key_id)
        with anyio.CancelScope(shield=True):  # also when the run was cancelled (shutdown)
            await anyio.to_thread.run_sync(launch.revoke_pending, self.keys, self.unrevoked, _logger)

    async def _execute(
        self,
        agent: Agent,
        ac: AgentConfig,
        tier: str,
        argv: list[str],
        cgroup: Sandboxed,
        limits: ResourceLimits,
        key_id: str,
    ) -> str:
        reg = self.runtime.agents
        reg.transition(agent, AgentState.READY, f"valid config: {tier} tier, {limits.memory_mb} MB")
        agent.hosted_busy = True
        agent.in_flight += 1  # the process itself is the task that keeps it Running
        reg.transition(agent, AgentState.RUNNING, "task assigned: process started")
        out = AgentLog(self.config.data_dir / "agents" / f"{agent.name}.log")  # bounded (agentlog.py)
        started = time.monotonic()
        stopped: list[str] = []
        write_end = await anyio.to_thread.run_sync(out.start)
        try:
            try:
                launch_env = {**os.environ, **cgroup.launch_env} if cgroup.launch_env else None
                proc = await anyio.open_process(
                    argv, stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end, env=launch_env
                )
            finally:
                os.close(write_end)  # the process has its copy: the pipe ends with its writers

            def stop() -> None:
                stopped.append("terminated by an operator")
                _kill(proc, cgroup)

            self._stop[agent.name] = stop
            try:
                with anyio.move_on_after(limits.execution_timeout_s) as scope:
                    await proc.wait()
                if scope.cancelled_caught:
                    stopped.append(f"budget breach: execution time over {limits.execution_timeout_s:g} s")
                    _kill(proc, cgroup)
                    with anyio.CancelScope(shield=True):
                        await proc.wait()
            except BaseException:
                _kill(proc, cgroup)
                with anyio.CancelScope(shield=True):
                    await proc.wait()
                raise
        finally:
            self._stop.pop(agent.name, None)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(out.finish)
        # the credential dies with the process, before the run is reported ended: an agent seen
        # Terminated whose key still answered 200 was a window for whoever held the key
        await self._revoke(key_id)
        # how it ended, off the loop: a container's is Docker's events, read for up to
        # EVENTS_WAIT_S (not when we stopped it: a kernel OOM racing our stop is said as the stop)
        end = await anyio.to_thread.run_sync(cgroup.end_cause, proc.returncode, bool(stopped))
        return self._ended(agent, ac, limits, cgroup, proc.returncode, end, stopped, started)

    def _ended(
        self,
        agent: Agent,
        ac: AgentConfig,
        limits: ResourceLimits,
        cgroup: Sandboxed,
        code: int | None,
        end: tuple[bool, str | None],
        stopped: list[str],
        started: float,
    ) -> str:
        """A run's process exited: its usage, its exit on the record, and its state ("ok",
        "stopped" by an operator, or "failed", which counts towards the restart back-off)."""
        rt = self.runtime
        usage = rt.usage_of(agent)
        usage.longest_call_s = max(usage.longest_call_s, time.monotonic() - started)
        usage.memory_peak_mb = cgroup.memory_peak_mb()
        oom, other = end  # (``Sandboxed.end_cause``: another party's kill is no budget's)
        agent.hosted_busy = False
        agent.in_flight -= 1
        record_acted(
            self.events,
            Event.AGENT_EXITED,
            {
                "agent": agent.id,
                "name": agent.name,
                "exit_code": code,
                "oom": oom,
                "memory_peak_mb": round(usage.memory_peak_mb, 1),
            },
            principal=agent.principal,
            agent=agent.id,
        )
        if code == 0 and not stopped:
            if agent.in_flight == 0 and agent.state is AgentState.RUNNING:
                self._move(agent, AgentState.READY, "task complete: exited 0")
            if agent.state is AgentState.READY:
                self._move(agent, AgentState.TERMINATED, "shutdown: run ended")
            return "ok"
        if oom:
            why = f"resource constraint: OOM-killed at its memory budget of {limits.memory_mb} MB"
        elif stopped:
            why = stopped[0]
        else:
            why = other or f"failure: exited with code {code}"
        if agent.state is AgentState.RUNNING:
            self._move(agent, AgentState.SUSPENDED, why)
        if agent.state is AgentState.SUSPENDED:
            self._move(
                agent, AgentState.TERMINATED, f"manual override: run ended ({ac.restart} restart policy)"
            )
        if stopped and stopped[0].startswith("terminated"):
            return "stopped"
        self._failed_run(agent, why, code, oom)
        return "failed"

    def _failed_run(self, agent: Agent, why: str, code: int | None, oom: bool) -> None:
        """A failed run: the restart back-off's count, and on the record (``failed_run``)."""
        self._failures[agent.name].append(time.monotonic())
        failed_run(self.runtime, self.events, agent, why, code, oom)

    def _command(
        self, name: str, ac: AgentConfig, tier: str, limits: ResourceLimits, key: str, run_tag: str
    ) -> tuple[list[str], Sandboxed]:
        """The run's argv in its tier, and what removes its cgroup or container afterwards."""
        return hosted_command(
            self.config, self.sandbox, self.socket_path, name, ac, tier, limits, key, run_tag
        )
