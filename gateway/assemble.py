"""The one assembly point: a ``Gateway`` from the config, with typed components and the chain.

``make_gateway`` decides which components exist (audit log, policy engine, verifier,
sandbox manager, metrics, built-in upstreams) and the order of the call chain, so the
fronts (stdio, HTTP), the CLI and the tests all get the same gateway. Protections are on
unless the config turns them off, and turning one off is logged.

Extension points (where new parts plug in, and nowhere else):

* a new built-in upstream (its tools pass the whole chain like any upstream tool): build it
  in ``gateway.builtins.make_builtins`` and append it to the list (``Builtin`` protocol in ``gateway.upstream.builtin``);
* a new step: add it to ``chain_steps`` at its place in the order (the docstring there says
  what each position sees);
* a component with a lifetime: construct it in ``make_gateway``, add its ``close`` to
  ``closers`` and any long-running task to ``background``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from gateway.app import Background, Gateway
from gateway.audit.log import AuditLog
from gateway.builtins import SandboxBuiltin, make_builtins, upstream_infos
from gateway.catalog import LiveCatalog
from gateway.chain import Step
from gateway.config.model import Config, UnsafeOption
from gateway.custody import check_trusted_files, hidden_paths, private_config, private_secret, secure_data_dir
from gateway.errors import AuditError, AuditLogBusy
from gateway.events import Event, EventSink, LoggingSink
from gateway.handouts import HandedOut
from gateway.listen import ListenHub
from gateway.memory.build import build_service, end_with_agents
from gateway.memory.builtin import MemoryService
from gateway.metrics import GatewayMetrics, MetricsSink
from gateway.policy import CallCounters, EmbeddedEngine, PolicyEngine, build_engine
from gateway.policy.remote import warn_open_opa
from gateway.runtime.core import AgentRuntime
from gateway.runtime.ended import EndedSessions
from gateway.runtime.holds import HoldFile, PrincipalHolds
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.launch import AgentHost
from gateway.sandbox import SandboxManager
from gateway.sandbox.upstreams import sandbox_manager, sandboxed_command
from gateway.state import SharedState, build_state, warn_open_backends
from gateway.steps.agent import AgentStep
from gateway.steps.arguments import ValidateArguments
from gateway.steps.audit import AuditStep
from gateway.steps.metrics import MetricsStep
from gateway.steps.policy import PolicyStep
from gateway.steps.resolve import ResolveTool
from gateway.steps.results import ValidateResult
from gateway.steps.schedule import ScheduleStep
from gateway.steps.unsafe import WarnUnsafe
from gateway.steps.verify import VerifyTool
from gateway.tasks import audit_retention, discover, poll_approvals, refusal_summaries, watch_keys
from gateway.telemetry import Telemetry
from gateway.upstream.builtin import Builtin
from gateway.verify.revocations import Revocations
from gateway.verify.verifier import ToolVerifier

_logger = logging.getLogger("symbi.assemble")

AUDIT_SLOTS = 16  # concurrent gateway processes sharing one data dir (one chain each)
AUDIT_SHIP_INTERVAL_S = 1.0  # how often committed audit records are copied to PostgreSQL ([state])


def open_audit(config: Config) -> AuditLog:
    """The audit log; a second process on the same data dir writes its own chain file.

    Each chain has one writer (the hash chain needs a single head), so when another gateway
    process (a second ``symbi mcp`` launched by an IDE, say) holds ``audit.db`` this one takes
    ``audit-2.db``, ``audit-3.db``...; ``symbi audit verify`` checks every chain.
    """
    base = config.audit_path
    last: AuditError | None = None
    for slot in range(1, AUDIT_SLOTS + 1):
        path = base if slot == 1 else base.with_name(f"{base.stem}-{slot}{base.suffix}")
        try:
            return AuditLog.from_config(config, path)
        except AuditLogBusy as e:
            last = e
    assert last is not None
    raise last


def chain_steps(
    catalog: LiveCatalog,
    *,
    audit: AuditLog | None,
    policy: PolicyEngine | None,
    counters: CallCounters,
    metrics: GatewayMetrics | None,
    runtime: AgentRuntime | None = None,
    builtins: frozenset[str] = frozenset(),
    state: SharedState | None = None,
    unsafe: Sequence[UnsafeOption] = (),
    max_argument_members: int | None = None,
    revocations: Revocations | None = None,
) -> list[Step]:
    """The call chain, outermost first. This list is the only place the order is decided.

    1. metrics: times and counts everything, denials and crashes included (HTTP front only);
       then, only when the config turns a protection off, a warning on every call;
    2. audit: one durable record per call, whatever happened inside (fails closed);
    3. agent: a suspended/terminated agent stops here; Ready <-> Running around the call;
    4. resolve: the client's name -> catalogue entry (unknown or hidden -> refused);
    5. verify: the tool is the approved one (SchemaPin, pins, drift) and not revoked since;
    6. arguments: valid against the tool's inputSchema;
    7. policy: the Rego decision, then its conditions around the dispatch;
    8. result: a tool result's structuredContent valid against the approved outputSchema
       (inside the policy: what the upstream sent, before redaction);
    9. schedule: the runtime's priority queue, execution budget, circuit breaker and retry.
    The endpoint after the last step is ``Gateway._dispatch``.
    """
    steps: list[Step] = []
    if metrics is not None:
        steps.append(MetricsStep(metrics))
    if unsafe:
        steps.append(WarnUnsafe(unsafe))
    if audit is not None:
        steps.append(AuditStep(audit, observe=metrics.observe_audit_write if metrics is not None else None))
    if runtime is not None:
        steps.append(AgentStep(runtime))
    steps += [
        ResolveTool(catalog, policy),
        VerifyTool(revocations),
        ValidateArguments(max_argument_members),
    ]  # hidden = unknown
    if policy is not None:
        steps.append(
            PolicyStep(
                policy,
                counters,
                observe=metrics.observe_policy if metrics is not None else None,
                limiter=state.limiter if state is not None else None,
            )
        )
    steps.append(ValidateResult())
    if runtime is not None:
        steps.append(ScheduleStep(runtime, builtins=builtins))
    return steps


def make_gateway(
    config: Config,
    listen: ListenHub | None = None,
    *,
    metrics: GatewayMetrics | None = None,
    agent_host: AgentHost | None = None,
) -> Gateway:
    """The gateway the config describes.

    ``listen`` holds the 2026-era clients' listen streams (the front owns it);
    ``metrics`` (the HTTP front's ``/metrics``) counts every event and call when given;
    ``agent_host`` is where hosted agents reach the gateway (the HTTP front's socket and keys).
    """
    check_trusted_files(config)  # another user could change who may do what: refuse to start
    secure_data_dir(config)
    private_config(config)  # upstreams run as another user in its folder
    closers: list[Callable[[], object]] = []
    try:
        return _assemble(config, listen, metrics, agent_host, closers)
    except BaseException:
        # a component that failed to start must not leave the others open (the audit lock...)
        for close in reversed(closers):
            try:
                close()
            except Exception:
                _logger.exception("closing a component after a failed start")
        raise


def _assemble(
    config: Config,
    listen: ListenHub | None,
    metrics: GatewayMetrics | None,
    agent_host: AgentHost | None,
    closers: list[Callable[[], object]],
) -> Gateway:
    telemetry = Telemetry(config)  # trace ids always; OTLP export when [telemetry] says where
    closers.append(telemetry.close)
    audit, events = _audit_and_events(config, metrics, closers)

    manager = sandbox_manager(config, closers)

    counters = CallCounters()
    state = build_state(config, counters)  # [state]: shared by replicas, or this process only
    closers.append(state.close)
    warn_open_backends(config)  # reachable by upstreams without a password: said at every start
    warn_open_opa(config.policy)  # and an OPA server without a token
    policy = _policy_engine(config, events, closers)

    background: list[Background] = []
    runtime, builtins = _runtime_and_builtins(config, events, policy, manager, closers, background)

    verifier = _verifier(config, events, builtins, state, closers)

    # the hand-outs: kept in the data dir, or every replica's in [state] redis_url
    catalog = LiveCatalog(upstream_infos(config, builtins), HandedOut(shared=state.handouts))
    steps = _call_chain(config, catalog, audit, policy, counters, metrics, runtime, builtins, state, verifier)
    _periodic_tasks(config, state, audit, policy, events, verifier, runtime, background)
    _sessions_on_redis(config, state, runtime, events, background)
    hosted = _hosted_agents(config, state, runtime, events, manager, agent_host, background, audit)
    return Gateway(
        config,
        steps,
        audit=audit,
        policy=policy,
        verifier=verifier,
        catalog=catalog,
        events=events,
        counters=counters,
        builtins=builtins,
        wrap_command=sandboxed_command(manager, hidden_paths(config)) if manager is not None else None,
        listen=listen,
        background=background,
        closers=list(reversed(closers)),  # the audit log closes last: it records the others' ends
        runtime=runtime,
        state=state,
        hosted=hosted,
    )


def _call_chain(
    config: Config,
    catalog: LiveCatalog,
    audit: AuditLog | None,
    policy: PolicyEngine | None,
    counters: CallCounters,
    metrics: GatewayMetrics | None,
    runtime: AgentRuntime,
    builtins: list[Builtin],
    state: SharedState,
    verifier: ToolVerifier,
) -> list[Step]:
    """The call chain's steps, in order (gateway/steps), from the components built above."""
    return chain_steps(
        catalog,
        audit=audit,
        policy=policy,
        counters=counters,
        metrics=metrics,
        runtime=runtime,
        builtins=frozenset(b.name for b in builtins),
        state=state,
        unsafe=[o for o in config.unsafe_options() if o.every_call],
        max_argument_members=config.mcp.max_argument_members,
        revocations=verifier.revocations,
    )


def _periodic_tasks(
    config: Config,
    state: SharedState,
    audit: AuditLog | None,
    policy: PolicyEngine | None,
    events: EventSink,
    verifier: ToolVerifier,
    runtime: AgentRuntime,
    background: list[Background],
) -> None:
    """The loops the gateway runs beside its calls: shared state, approvals, the runtime's
    scheduler, discovery and audit retention."""
    _shared_state_tasks(config, state, audit, policy, events, background)
    background.append(poll_approvals(verifier, config.mcp.recheck_interval_s, state.changes))
    # keys are fetched afresh once their cache expires (not more often than approvals are polled)
    keys_every = max(config.mcp.discovery_ttl_s, config.mcp.recheck_interval_s)
    background.append(watch_keys(verifier, keys_every))
    background.append(lambda _gw: runtime.run())
    if config.mcp.discovery_enabled:
        background.append(discover(config, events))
    if audit is not None and (retention := audit_retention(config, audit)) is not None:
        background.append(retention)
    if audit is not None and audit.refusals is not None:  # a window that ended with no refusal after it
        background.append(refusal_summaries(audit, audit.refusals.window_s))


def _policy_engine(
    config: Config, events: EventSink, closers: list[Callable[[], object]]
) -> PolicyEngine | None:
    """The policy engine; None only when the config turns policies off (unsafe)."""
    if not config.policies_enforced:
        _logger.warning("POLICY IS OFF (security.unsafe_disable_policies): every verified call is allowed")
        return None
    policy = build_engine(config, events)
    closers.append(policy.close)
    return policy


def _runtime_and_builtins(
    config: Config,
    events: EventSink,
    policy: PolicyEngine | None,
    manager: SandboxManager | None,
    closers: list[Callable[[], object]],
    background: list[Background],
) -> tuple[AgentRuntime, list[Builtin]]:
    """The agent runtime and what the gateway serves itself (memory, bus, code tools, ...):
    built together because memory ends with its agent's session and the built-ins see the agents."""
    memory = _memory(config, events, policy, closers, background)
    runtime = _agent_runtime(config, events, memory, closers)
    builtins = make_builtins(
        config,
        manager,
        memory,
        events=events,
        policy=policy,
        agents=runtime.agents,
        closers=closers,
        background=background,
    )
    return runtime, builtins


def _memory(
    config: Config,
    events: EventSink,
    policy: PolicyEngine | None,
    closers: list[Callable[[], object]],
    background: list[Background],
) -> MemoryService | None:
    """Agent memory and knowledge (``[context]``); the store and the model open on first use."""
    if not config.context.enabled:
        return None
    memory = build_service(config, events, policy)
    closers.append(memory.close)
    background.append(memory.retention)
    return memory


def _agent_runtime(
    config: Config, events: EventSink, memory: MemoryService | None, closers: list[Callable[[], object]]
) -> AgentRuntime:
    """Every session is an agent; ids made here (never by clients) under the data dir's id key."""
    # sessions an operator terminated that would recur after a restart stay refused (data dir)
    ended = EndedSessions(config.data_dir / "agents-ended.db")
    closers.append(ended.close)
    # suspended principals: on Redis with [state] redis_url (``_sessions_on_redis``), else the data dir's
    holds = PrincipalHolds(
        file=HoldFile(config.data_dir / "principals-suspended.db") if config.state.redis_url is None else None
    )
    closers.append(holds.close)
    runtime = AgentRuntime(
        config,
        events,
        key=private_secret(config.agent_id_key_path, "agent id key"),
        ended=ended,
        holds=holds,
    )
    if memory is not None:
        end_with_agents(memory.m, runtime.agents)  # short-term memory ends with its agent's session
    return runtime


def _verifier(
    config: Config,
    events: EventSink,
    builtins: list[Builtin],
    state: SharedState,
    closers: list[Callable[[], object]],
) -> ToolVerifier:
    # built-in tools are verified by construction; only the sandbox's run agent code
    code_builtins = frozenset(b.name for b in builtins if isinstance(b, SandboxBuiltin))
    verifier = ToolVerifier(
        config,
        events,
        builtins=frozenset(b.name for b in builtins),
        code_builtins=code_builtins,
        state=state.tool_state,
        pins=state.pins,
        accepted=state.accepted,
    )
    closers.append(verifier.close)
    return verifier


def _hosted_agents(
    config: Config,
    state: SharedState,
    runtime: AgentRuntime,
    events: EventSink,
    manager: SandboxManager | None,
    agent_host: AgentHost | None,
    background: list[Background],
    audit: AuditLog | None,
) -> HostedAgents | None:
    """Hosted agents: sandboxed processes with credentials of their own; the HTTP front
    attaches its Unix socket and key store (`symbi serve`), else they fail to start. With
    ``[state] redis_url`` their leases are on the process's one Redis client."""
    if not config.agents:
        return None
    board = None
    if state.redis is not None:
        from gateway.state.leases import LeaseBoard, process_name

        st = config.state
        assert st.redis_url is not None
        owner = process_name(config.data_dir)
        board = LeaseBoard(st.redis_url, owner=owner, timeout_s=st.timeout_s, client=state.redis)
    hosted = HostedAgents(
        config,
        runtime,
        events,
        sandbox=manager,
        host=agent_host,
        board=board,
        recordable=audit.ensure_writable if audit is not None else None,
        unwritable=audit.unwritable if audit is not None else None,  # the lease runner's quiet check
    )
    background.append(lambda _gw: hosted.run())
    return hosted


def _sessions_on_redis(
    config: Config,
    state: SharedState,
    runtime: AgentRuntime,
    events: EventSink,
    background: list[Background],
) -> None:
    """With ``[state] redis_url``: the session agents' board (an operator's action reaches the
    process holding the session) and the suspended principals (every replica refuses them)."""
    if state.redis is None:
        return
    from gateway.runtime.sessionorders import SessionAgents
    from gateway.state.leases import process_name
    from gateway.state.sessionboard import SessionBoard

    owner = process_name(config.data_dir)
    sessions = SessionAgents(runtime, events, SessionBoard(state.redis, owner=owner))
    state.sessions = sessions
    background.append(lambda _gw: sessions.run())
    # a session agent's suspension holds its principal on every replica (gateway.runtime.holds)
    from gateway.state.holdboard import HoldBoard

    runtime.holds.board = HoldBoard(state.redis, limit=runtime.holds.limit)
    background.append(lambda _gw: runtime.holds.run())


def _audit_and_events(
    config: Config, metrics: GatewayMetrics | None, closers: list[Callable[[], object]]
) -> tuple[AuditLog | None, EventSink]:
    """The audit log (None when the config turns it off) and the sink every component records to."""
    audit: AuditLog | None = None
    events: EventSink
    if config.audit_on:
        audit = open_audit(config)
        events = audit
        closers.append(audit.close)
    else:
        _logger.warning("AUDIT IS OFF (security.unsafe_disable_audit): calls are not recorded")
        events = LoggingSink()
    if metrics is not None:
        events = MetricsSink(events, metrics)
    events.emit(
        Event.CONFIG_LOADED,
        {"source": str(config.source) if config.source else None, "servers": sorted(config.servers)},
    )
    return audit, events


def _shared_state_tasks(
    config: Config,
    state: SharedState,
    audit: AuditLog | None,
    policy: PolicyEngine | None,
    events: EventSink,
    background: list[Background],
) -> None:
    """[state]'s background tasks: the replicas' watch, audit shipping, PostgreSQL's NOTIFY."""
    if state.shared:
        background.append(state.watch)
    if state.postgres is not None and audit is not None:
        # every replica's chain, copied to PostgreSQL (``symbi audit verify --shared``)
        from gateway.state.audit import AuditShipper
        from gateway.state.audit_roster import log_roll_call, log_signer

        shipper = AuditShipper(state.postgres, audit.path, log_signer(audit), roll_call=log_roll_call(audit))
        background.append(lambda _gw: shipper.run(AUDIT_SHIP_INTERVAL_S))
    if state.postgres is not None and state.changes is not None:
        # a change made anywhere (a replica, the CLI) wakes the poll at once: NOTIFY
        from gateway.state.postgres import CHANNEL, POLICY_CHANNEL

        pg = state.postgres
        channels = {CHANNEL: state.changes.set}
        if isinstance(policy, EmbeddedEngine) and config.policy.hot_reload:
            # policy reloads reach every replica: published, verified, loaded (gateway/state/policies.py)
            from gateway.state.policies import PgPolicyStore, PolicySync

            sync = PolicySync(policy, PgPolicyStore(pg), events, interval_s=config.state.probe_interval_s)
            channels[POLICY_CHANNEL] = sync.notified
            background.append(sync.run)
        background.append(lambda _gw: pg.listen(channels))
