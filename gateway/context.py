"""Typed per-call state: who is calling, what they call, and what each step found.

Steps of the call chain (``gateway.chain``) read and fill a ``CallContext``; the audit
step serialises it and nothing else, so nothing travels in free-form dicts.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gateway.screen.screener import Screening

# The SDK's context of the client request a call serves (None for calls made inside the gateway).
if TYPE_CHECKING:  # the SDK only for the type: the admin CLI imports this module (0.6 s of mcp)
    from mcp.server import ServerRequestContext

    Downstream = ServerRequestContext[Any, Any]

VerificationStatus = Literal[
    "verified", "pinned", "unverified", "drifted", "revoked", "off", "failed", "unavailable"
]
APPROVED: frozenset[str] = frozenset({"verified", "pinned"})


def is_blocked(mode: str, status: str) -> bool:
    """The one definition of a blocked tool (hidden from listings, refused when called).

    strict/tofu upstreams admit verified or pinned tools only; warn and off admit anything
    but a tool a security team revoked, or one whose approvals cannot be read
    ("unavailable": the shared state is down, so a revocation could be missed).
    """
    if mode in ("strict", "tofu"):
        return status not in APPROVED
    return status in ("revoked", "unavailable")


CallKind = Literal["tools/call", "resources/read", "prompts/get"]


PrincipalSource = Literal["stdio", "key", "jwt", "anonymous"]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: from config on stdio, from an API key / JWT on HTTP.

    ``id`` is unique only within its ``source`` (and, for JWTs, its ``issuer``): the policy
    data addresses each namespace explicitly and ``qualified`` keys per-caller state, so a
    JWT with ``sub=admin`` is never the API key principal ``admin``.
    """

    id: str
    kind: str = "user"  # user | agent | service | admin
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    agent: str | None = None  # the AgentId the runtime made for this session (never client-chosen)
    source: PrincipalSource = "stdio"
    issuer: str | None = None  # JWTs only

    @property
    def expires(self) -> float | None:
        """When the credential stops being valid (a JWT's ``exp``), or None (an API key, until
        revoked). Streams held open past it end (``gateway.server.sessions.sweep_revoked``)."""
        exp = self.claims.get("exp") if self.source == "jwt" else None
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None

    @property
    def key_id(self) -> str | None:
        """The API key this principal authenticated with, or None (not an API key)."""
        kid = self.claims.get("key_id") if self.source == "key" else None
        return kid if isinstance(kid, str) else None

    @property
    def qualified(self) -> str:
        """The id with its namespace: ``key:alice``, ``jwt:https://issuer#sub``, ``stdio:local``."""
        if self.source == "jwt":
            return f"jwt:{self.issuer}#{self.id}"
        return f"{self.source}:{self.id}"

    def as_input(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "roles": list(self.roles),
            "claims": dict(self.claims),
            "source": self.source,
            "issuer": self.issuer,
        }


ADMIN_ROLE = "admin"


def is_admin(principal: Principal | None) -> bool:
    """The one definition of an admin: a principal with the ``admin`` role.

    ``Principal.kind`` describes a caller, it grants nothing: an API key made with
    ``--kind admin`` but without the role is not an admin anywhere (API, dashboard, audit).
    """
    return principal is not None and ADMIN_ROLE in principal.roles


@dataclass(frozen=True)
class AgentInfo:
    """The calling agent as the policy sees it (``input.agent``); made by the runtime."""

    id: str
    name: str
    state: str
    priority: int = 0
    hosted: bool = False

    def as_input(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "priority": self.priority,
            "hosted": self.hosted,
        }


@dataclass(frozen=True)
class ToolInfo:
    """One tool as the catalogue knows it (the policy input's ``tool`` object)."""

    name: str  # namespaced, e.g. "fs__read_file"
    original_name: str
    upstream: str
    definition: Mapping[str, Any]  # the upstream's tool definition (wire JSON, camelCase)
    annotations: Mapping[str, Any] = field(default_factory=dict)
    verification: VerificationStatus = "unverified"
    key_fingerprint: str | None = None
    definition_hash: str | None = None
    code_tool: bool = False
    verification_mode: str = "strict"  # strict | tofu | warn | off (of its upstream)
    verification_reason: str | None = None  # why it is not verified, for the caller and the audit log
    screening: Screening = field(default_factory=Screening)  # poisoning findings (gateway.screen)

    @property
    def blocked(self) -> bool:
        """Hidden and refused (``is_blocked``)."""
        return is_blocked(self.verification_mode, self.verification)

    @property
    def input_schema(self) -> Mapping[str, Any]:
        schema = self.definition.get("inputSchema")
        return schema if isinstance(schema, Mapping) else {"type": "object"}


@dataclass(frozen=True)
class UpstreamInfo:
    name: str
    transport: Literal["stdio", "http", "builtin"]
    domain: str | None = None

    def as_input(self) -> dict[str, Any]:
        return {"name": self.name, "transport": self.transport, "domain": self.domain}


@dataclass(frozen=True)
class Decision:
    """A policy decision. ``conditions`` are already validated (unknown ones deny)."""

    allow: bool
    reasons: tuple[str, ...] = ()
    conditions: Mapping[str, Any] = field(default_factory=dict)


# The low 48 bits of a call id count; the other 74 of a UUID4's 122 are drawn once per process.
_COUNTED_BITS = 48


class CallIds:
    """Call ids: the audit record's ``call_id``, its only reader, which needs each one unique
    (across calls, processes, restarts and the replicas that write one log) and a UUID's text
    (lower-case 8-4-4-4-12 hex, version 4, RFC 4122 variant). Nothing looks a call up by its id
    or treats it as a secret, so the ids need not be unpredictable: a prefix drawn from
    ``uuid4()`` per process (74 random bits; drawn again in a forked child) and a counter in
    the last 48 bits, instead of a ``uuid4()`` per call (a ``getrandom`` system call and ~2 us)."""

    def __init__(self) -> None:
        self._prefix = ""
        self._count: itertools.count[int] = itertools.count()
        self.redraw()

    def redraw(self) -> None:
        self._prefix = str(uuid.uuid4())[:24]  # "xxxxxxxx-xxxx-4xxx-yxxx-": version and variant set
        self._count = itertools.count()

    def __call__(self) -> str:
        n = next(self._count)  # atomic under the GIL: no two threads get the same number
        if n >> _COUNTED_BITS:  # 2**48 calls in one process: a new prefix rather than a repeat
            self.redraw()
            return self()
        return f"{self._prefix}{n:012x}"


new_call_id = CallIds()
# a forked child would otherwise count on from its parent's prefix and number: the same ids
os.register_at_fork(after_in_child=new_call_id.redraw)


@dataclass
class CallContext:
    """Everything one request through the gateway carries from step to step."""

    principal: Principal
    kind: CallKind
    target: str  # tool name / resource uri / prompt name as the client sent it
    arguments: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    agent: AgentInfo | None = None  # the runtime's view of principal.agent when the call arrived
    tool: ToolInfo | None = None
    upstream: UpstreamInfo | None = None
    decision: Decision | None = None
    sandbox_tier: str | None = None
    # the calling agent's budget for sandbox runs (memory_mb, cpus, timeout_s), set by the scheduler
    sandbox_budget: Mapping[str, float] | None = None
    # arguments as they may be written to the audit log (redacted per policy)
    audit_arguments: dict[str, Any] | None = None
    # a 2026-era client's input_responses as the audit log may keep them (redacted likewise)
    audit_input_responses: Any = None
    outcome: str | None = None  # "ok" | "error" | "denied"
    error_code: str | None = None
    reasons: list[str] = field(default_factory=list)
    result_bytes: int | None = None
    unverified_warning: bool = False
    # the SDK's per-request context (progress, relays); never serialised
    downstream: Downstream | None = field(default=None, repr=False, compare=False)
    # 2026-07-28 multi-round-trip: the client's answers to an input-required result, passed on
    input_responses: Any = field(default=None, repr=False)
    request_state: str | None = field(default=None, repr=False)
    call_id: str = field(default_factory=new_call_id)
    started_ns: int = field(default_factory=time.time_ns)
    started_mono: float = field(default_factory=time.perf_counter)

    @property
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started_mono) * 1000.0
