"""The gateway's one error family.

Every failure the gateway reports to a client is a ``GatewayError``; the boundary
(``gateway.boundary``) is the single place that turns one into an MCP result or a
JSON-RPC error.

    GatewayError
     ├── ConfigError                 bad config file / env value (names the key and file)
     ├── AuthError                   the HTTP front cannot tell who is calling (401)
     │    ├── NoCredentials          no credentials at all (challenge with resource metadata)
     │    └── AuthFailed             credentials given but not valid (invalid_token)
     ├── CatalogError           [D]  a tool/resource/prompt that cannot be listed or routed
     │    ├── UnknownTool       [D]  no such tool (or hidden from this principal)
     │    └── ResourceAmbiguous [D]  a URI two upstreams claim (listed by both, or matched by both's templates)
     ├── UpstreamError               an upstream failed, timed out or is down
     │    ├── UpstreamUnavailable    the upstream is not connected right now
     │    └── ResultInvalid          a tool result not matching the tool's approved outputSchema
     ├── ArgumentsInvalid       [D]  arguments do not validate against inputSchema
     ├── VerificationDenied     [D]  SchemaPin / pin / drift check refused the tool
     │    └── ScreeningFlagged  [D]  a definition screened as poisoned (approval needs an accept)
     ├── ApprovalError               an approval that cannot be made (CLI, admin API, dashboard)
     │    ├── ReviewedHashRequired   no (or a malformed) hash of the definition (or pin key) reviewed
     │    ├── DefinitionChanged      the definition (or pending pin change) is not the one reviewed
     │    └── AmbiguousTool          two recorded tools of one upstream share the namespaced name
     ├── AdminApiError               the CLI could not use a running gateway's admin API
     ├── PolicyDenied           [D]  the Rego decision refused the call (carries reasons)
     │    ├── PolicyError       [D]  the policy could not be evaluated (fail closed)
     │    │    └── PolicyLoadError   the policy, its data or its tests cannot be used
     │    └── RateLimited       [D]  the policy's rate_limit condition tripped
     ├── SdkChanged                  a library lost a private attribute gateway.compat uses
     ├── SandboxError                a sandbox tier failed or is unavailable
     │    ├── SandboxUnavailable     the chosen tier cannot run here (never downgraded)
     │    └── SandboxInterrupted     a run cut short (the warm pool closed, its container removed): no result
     ├── AgentError                  the runtime refused the calling agent
     │    ├── AgentSuspended         suspended (policy condition, denials, budget, operator)
     │    ├── AgentTerminated        the agent has ended (or is ending)
     │    ├── AgentLimitReached      runtime.max_concurrent_agents live agents already
     │    ├── BudgetExceeded         a resource budget was breached (the agent is suspended)
     │    └── InvalidTransition      a state change the seed's lifecycle does not have
     ├── SchedulerBusy               the scheduler's queue is full, or the call was preempted
     ├── AuditError                  the audit log cannot be written (fail closed)
     │    ├── AuditLogBusy           another process writes this chain
     │    ├── ActionUnrecorded       an operator's action was done, its record not committed (held, pending or broken)
     │    └── AuditIntegrityError    verification found a changed/missing/reordered event
     ├── ContextError                agent memory / knowledge failed (bad input, store down)
     │    ├── MemoryQuotaExceeded [D]  the principal holds all the memory [context] allows it
     │    ├── EmbedderMismatch       a collection's vectors come from another embedder / dimension
     │    └── VectorStoreUnavailable the vector store cannot be opened or reached
     ├── TooManyConnections          beyond mcp.max_concurrent_connections (HTTP 503, retry)
     │    └── TooManyListens         beyond http.max_listens_per_principal open listen streams
     ├── StateUnavailable            a shared-state backend ([state]: Redis, PostgreSQL) cannot be reached
     ├── NotStarted                  the HTTP front answers before its gateway is assembled (admin API 503)
     └── BusError                    an agent message could not be sent or received
          ├── BusNoAgent             the caller is not an agent / the recipient is unknown
          ├── BusBufferFull          the recipient's buffer (runtime.message_buffer_size) is full
          ├── BusUnavailable         the bus backend (Redis) cannot be reached
          ├── BusTimeout             a request got no reply within its timeout
          └── BusRejected            a stored message failed verification (never delivered)

[D]: a denial, the gateway saying "no" (``is_denial``) as opposed to something failing: the
audit outcome and the metrics say ``denied``, and a JSON-RPC error is -32602, not -32603.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from gateway.audit.verify import Problem


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose.

    ``code`` is a stable machine-readable identifier; ``reasons`` are the
    human-readable reasons a client and the audit log see.
    """

    code: str = "gateway_error"
    denial: bool = False  # the one definition of "is this a denial": see is_denial

    def __init__(self, message: str, *, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reasons: list[str] = list(reasons) if reasons else [message]

    def diagnostics(self) -> str:
        """Multi-line text for a person: what failed and why."""
        return "\n".join([self.message, *(f"  - {r}" for r in self.reasons if r != self.message)])


def is_denial(err: BaseException) -> bool:
    """Whether ``err`` is the gateway refusing (unknown or hidden name, bad arguments,
    verification, policy) rather than something failing. Used by the audit record, the
    metrics and the boundary alike."""
    return isinstance(err, GatewayError) and err.denial


class ConfigError(GatewayError):
    code = "config_invalid"


class AuthError(GatewayError):
    code = "auth_error"


class AuthFailed(AuthError):
    """Credentials were given but are not valid (HTTP 401, ``error="invalid_token"``)."""

    code = "unauthorized"


class JwksFetchFailed(AuthFailed):
    """The key set of ``http.jwt.jwks_url`` could not be had (too big, too slow, not a 200,
    unreachable; or a fetch failed moments ago): a JWT that needs it is refused."""


class NoCredentials(AuthError):
    """No credentials at all (HTTP 401 with the resource-metadata challenge)."""

    code = "no_credentials"


class CatalogError(GatewayError):
    code = "catalog_error"
    denial = True


class HeldForApproval(CatalogError):
    """A prompt, resource or template whose listed definition is not approved (drifted, or
    new since its upstream's first approved listing): not served until a person approves it."""

    code = "held_for_approval"


class UnknownTool(CatalogError):
    code = "unknown_tool"


class ResourceAmbiguous(CatalogError):
    """A URI more than one upstream claims: refused for all of them, never guessed."""

    code = "resource_ambiguous"


class UpstreamError(GatewayError):
    code = "upstream_error"

    def __init__(self, message: str, *, reasons: list[str] | None = None, mcp_error: object = None) -> None:
        super().__init__(message, reasons=reasons)
        self.mcp_error = mcp_error  # the upstream's own JSON-RPC error (an MCPError), passed on as is


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class ResultInvalid(UpstreamError):
    """A tool result whose ``structuredContent`` is missing or does not match the tool's
    approved (pinned, listed) ``outputSchema``. The reasons name the path and the schema
    keyword, never the value there (it may be a secret)."""

    code = "result_invalid"


class UpstreamTimeout(UpstreamError):
    """A request to the upstream got no answer in time (the upstream may be wedged: it is
    probed with a ping and restarted when it does not answer)."""


class ArgumentsInvalid(GatewayError):
    code = "arguments_invalid"
    denial = True


class VerificationDenied(GatewayError):
    code = "verification_denied"
    denial = True


class AdminApiError(GatewayError):
    """A CLI command could not use a running gateway's admin API (unreachable, HTTP error)."""

    code = "admin_api_error"


class ApprovalError(GatewayError):
    """The approval cannot be made here; ``status`` is the HTTP status to answer with."""

    code = "approval_refused"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ReviewedHashRequired(ApprovalError):
    """An approval names the definition hash the person reviewed (``--hash``, ``{"hash"}``):
    none was given, or it is not one (too short to resist a chosen collision, not hex). A
    SchemaPin pin approval likewise names the pending key fingerprint and definition hash
    (``pins approve --fingerprint/--definition-hash``, as ``pins show`` printed them)."""

    code = "reviewed_hash_required"

    def __init__(self, message: str) -> None:
        super().__init__(message, 400)


class DefinitionChanged(ApprovalError):
    """The tool's current definition is not the one the person reviewed (the upstream changed
    it since): nothing approved, review it again. For a SchemaPin pin: its pending change (key
    or definition) is not the one the person named."""

    code = "definition_changed"

    def __init__(self, message: str) -> None:
        super().__init__(message, 409)


class AmbiguousTool(ApprovalError):
    """A namespaced name recorded for two upstream tools (a rename: ``rm_all`` and ``rm all``
    both map to ``evil__rm_all``) and the current listing does not tell which is meant."""

    code = "ambiguous_tool"

    def __init__(self, message: str) -> None:
        super().__init__(message, 409)


class ScreeningFlagged(VerificationDenied):
    """A definition with high-severity screening findings (approval needs an explicit accept)."""

    code = "screening_flagged"


class PolicyDenied(GatewayError):
    code = "policy_denied"
    denial = True


class PolicyError(PolicyDenied):
    code = "policy_error"


class PolicyLoadError(PolicyError):
    """The policy (or its data, or its tests) cannot be used; ``location`` is file:line:col."""

    code = "policy_load_error"

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location


class RateLimited(PolicyDenied):
    code = "rate_limited"


class SdkChanged(GatewayError):
    """A library no longer has the private attribute ``gateway.compat`` relies on."""

    code = "sdk_changed"

    def __init__(self, what: str) -> None:
        super().__init__(f"gateway.compat: {what} is gone (library upgraded?): update gateway/compat/")


class SandboxError(GatewayError):
    code = "sandbox_error"


class SandboxUnavailable(SandboxError):
    code = "sandbox_unavailable"


class SandboxInterrupted(SandboxError):
    """A run was cut short from outside (the gateway's warm pool closed while it ran, or its
    container was removed under it): there is no result, and none is made up."""

    code = "sandbox_interrupted"


class AgentError(GatewayError):
    code = "agent_error"


class AgentSuspended(AgentError):
    code = "agent_suspended"


class HoldsFull(AgentError):
    """``HOLDS_MAX`` principals are suspended already: a new suspension is refused (the oldest
    was dropped to make room, un-suspending it, before session 41)."""

    code = "holds_full"


class AgentTerminated(AgentError):
    code = "agent_terminated"


class AgentLimitReached(AgentError):
    code = "agent_limit"


class BudgetExceeded(AgentError):
    code = "budget_exceeded"


class InvalidTransition(AgentError):
    code = "invalid_transition"


class WorkerExited(GatewayError):
    """``symbi serve --workers``: a worker or the front exited (or never got ready); the
    supervisor stopped every other child."""

    code = "worker_exited"


class SchedulerBusy(GatewayError):
    code = "scheduler_busy"


class Preempted(SchedulerBusy):
    code = "preempted"


class AuditError(GatewayError):
    code = "audit_unavailable"


class AuditLogBusy(AuditError):
    """Another process holds this log (one writer per chain)."""


# where an operator's unrecorded action's record is (``ActionUnrecorded``)
UnrecordedState = Literal["held", "pending", "broken", "dropped", "stopped"]


class ActionUnrecorded(AuditError):
    """An operator's action was carried out (it cannot be undone in general) but its record was
    not committed (``gateway.server.oprecord``): the log failed it after the check before it
    (``held``: sent again until committed), or stalled (``pending``: still queued in
    the writer, held should it fail), or the log refused it, broken for good (``broken``: not sent again,
    a restart is needed), or it was dropped by the held records' bound (``dropped``), or let go
    by the gateway's stop (``stopped``: logged then, its commit failed after). Returned
    with the action's own answer, not raised: the 503 says both what was done and this
    (``oprecord.with_record``)."""

    code = "action_unrecorded"

    def __init__(self, message: str, *, state: UnrecordedState) -> None:
        super().__init__(message)
        self.state = state


class AuditIntegrityError(AuditError):
    """The audit log failed verification; ``problem`` names the first bad sequence number."""

    code = "audit_integrity"

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"audit log integrity: seq {problem.seq} {problem.kind}: {problem.message}")
        self.problem = problem


class ContentFlagged(GatewayError):
    """Text one agent writes for others (a shared memory, a bus message) that speaks to their
    model: a high screening finding (``gateway.screen``). Nothing is stored or sent."""

    code = "content_flagged"
    denial = True


class ContextError(GatewayError):
    code = "context_error"


class MemoryQuotaExceeded(ContextError):
    """A principal holds as much memory as ``[context]`` allows it (nothing it stored is dropped)."""

    code = "memory_quota_exceeded"
    denial = True


class EmbedderMismatch(ContextError):
    code = "embedder_mismatch"


class VectorStoreUnavailable(ContextError):
    code = "vector_store_unavailable"


class TooManyConnections(GatewayError):
    code = "too_many_connections"


class TooManyListens(TooManyConnections):
    """A principal holds its share of 2026-era listen streams: each is an open request, and
    one caller's streams must not take every connection slot."""

    code = "too_many_listen_streams"


class StateUnavailable(GatewayError):
    """Replicas share rate limits and approvals through [state]; without it, refuse (fail closed)."""

    code = "state_unavailable"


class NotStarted(GatewayError):
    """The HTTP front is up but its gateway is not assembled yet (or stopped): an admin request
    that needs it is answered 503 with this code, to be tried again."""

    code = "gateway_not_started"

    def __init__(self, message: str = "gateway not started") -> None:
        super().__init__(message)


class BusError(GatewayError):
    code = "bus_error"


class BusNoAgent(BusError):
    code = "bus_no_agent"


class BusBufferFull(BusError):
    code = "bus_buffer_full"


class BusUnavailable(BusError):
    code = "bus_unavailable"


class BusTimeout(BusError):
    code = "bus_timeout"


class BusQuotaExceeded(BusError):
    """An agent holds as many topic subscriptions as ``bus.max_subscriptions_per_agent`` allows."""

    code = "bus_quota_exceeded"
    denial = True


class BusRejected(BusError):
    code = "bus_rejected"
