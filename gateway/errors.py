"""The gateway's one error family.

Every failure the gateway reports to a client is a ``GatewayError``; the boundary
(``gateway.boundary``) is the single place that turns one into an MCP result or a
JSON-RPC error.

    GatewayError
     ├── ConfigError                 bad config file / env value (names the key and file)
     ├── CatalogError                a tool/resource/prompt that cannot be listed or routed
     │    └── UnknownTool            no such tool (or hidden from this principal)
     ├── UpstreamError               an upstream failed, timed out or is down
     │    └── UpstreamUnavailable    the upstream is not connected right now
     ├── ArgumentsInvalid            arguments do not validate against inputSchema
     ├── VerificationDenied          SchemaPin / pin / drift check refused the tool
     │    └── ScreeningFlagged       a definition screened as poisoned (approval needs an accept)
     ├── PolicyDenied                the Rego decision refused the call (carries reasons)
     │    ├── PolicyError            the policy could not be evaluated (fail closed)
     │    └── RateLimited            the policy's rate_limit condition tripped
     ├── SandboxError                a sandbox tier failed or is unavailable
     │    └── SandboxUnavailable     the chosen tier cannot run here (never downgraded)
     ├── AgentError                  the runtime refused the calling agent
     │    ├── AgentSuspended         suspended (policy condition, denials, budget, operator)
     │    ├── AgentTerminated        the agent has ended (or is ending)
     │    ├── AgentLimitReached      runtime.max_concurrent_agents live agents already
     │    ├── BudgetExceeded         a resource budget was breached (the agent is suspended)
     │    └── InvalidTransition      a state change the seed's lifecycle does not have
     ├── SchedulerBusy               the scheduler's queue is full, or the call was preempted
     ├── AuditError                  the audit log cannot be written (fail closed)
     ├── ContextError                agent memory / knowledge failed (bad input, store down)
     │    ├── EmbedderMismatch       a collection's vectors come from another embedder / dimension
     │    └── VectorStoreUnavailable the vector store cannot be opened or reached
     ├── TooManyConnections          beyond mcp.max_concurrent_connections (HTTP 503, retry)
     ├── StateUnavailable            a shared-state backend ([state]: Redis, PostgreSQL) cannot be reached
     └── BusError                    an agent message could not be sent or received
          ├── BusNoAgent             the caller is not an agent / the recipient is unknown
          ├── BusBufferFull          the recipient's buffer (runtime.message_buffer_size) is full
          ├── BusUnavailable         the bus backend (Redis) cannot be reached
          ├── BusTimeout             a request got no reply within its timeout
          └── BusRejected            a stored message failed verification (never delivered)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose.

    ``code`` is a stable machine-readable identifier; ``reasons`` are the
    human-readable reasons a client and the audit log see.
    """

    code: str = "gateway_error"

    def __init__(self, message: str, *, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reasons: list[str] = list(reasons) if reasons else [message]

    def diagnostics(self) -> str:
        """Multi-line text for a person: what failed and why."""
        return "\n".join([self.message, *(f"  - {r}" for r in self.reasons if r != self.message)])


class ConfigError(GatewayError):
    code = "config_invalid"


class CatalogError(GatewayError):
    code = "catalog_error"


class UnknownTool(CatalogError):
    code = "unknown_tool"


class UpstreamError(GatewayError):
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class ArgumentsInvalid(GatewayError):
    code = "arguments_invalid"


class VerificationDenied(GatewayError):
    code = "verification_denied"


class ScreeningFlagged(VerificationDenied):
    """A definition with high-severity screening findings (approval needs an explicit accept)."""

    code = "screening_flagged"


class PolicyDenied(GatewayError):
    code = "policy_denied"


class PolicyError(PolicyDenied):
    code = "policy_error"


class RateLimited(PolicyDenied):
    code = "rate_limited"


class SandboxError(GatewayError):
    code = "sandbox_error"


class SandboxUnavailable(SandboxError):
    code = "sandbox_unavailable"


class AgentError(GatewayError):
    code = "agent_error"


class AgentSuspended(AgentError):
    code = "agent_suspended"


class AgentTerminated(AgentError):
    code = "agent_terminated"


class AgentLimitReached(AgentError):
    code = "agent_limit"


class BudgetExceeded(AgentError):
    code = "budget_exceeded"


class InvalidTransition(AgentError):
    code = "invalid_transition"


class SchedulerBusy(GatewayError):
    code = "scheduler_busy"


class Preempted(SchedulerBusy):
    code = "preempted"


class AuditError(GatewayError):
    code = "audit_unavailable"


class ContextError(GatewayError):
    code = "context_error"


class EmbedderMismatch(ContextError):
    code = "embedder_mismatch"


class VectorStoreUnavailable(ContextError):
    code = "vector_store_unavailable"


class TooManyConnections(GatewayError):
    code = "too_many_connections"


class StateUnavailable(GatewayError):
    """Replicas share rate limits and approvals through [state]; without it, refuse (fail closed)."""

    code = "state_unavailable"


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


class BusRejected(BusError):
    code = "bus_rejected"
