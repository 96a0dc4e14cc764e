"""The typed, frozen configuration object (one TOML file, ``symbi.toml``).

Every section is a frozen pydantic model that forbids unknown keys, so a typo is an
error naming the key instead of a silently ignored setting. Paths are resolved against
the config file's folder by the loader. Every key is documented in ``examples/symbi.toml``.

Off-switches: a setting that turns a protection off has ``unsafe`` in its name
(``Config.unsafe_options`` lists what is in force, with the older spellings still accepted
and flagged as deprecated). ``runtime.mode = "production"`` refuses every one of them at
load, naming the key; ``development`` (the default) allows them with a warning on every call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.context_section import LOCAL_MODEL_DIMENSION, ContextSection
from gateway.config.sections import (
    AGENT_NAME_RE,
    AgentConfig,
    AuditSection,
    BreakerSection,
    BusSection,
    GatewaySection,
    HttpSection,
    JwtSection,
    LogLevel,
    McpSection,
    PathT,
    PathTuple,
    PolicySection,
    ResourcesSection,
    RetrySection,
    RuntimeSection,
    SandboxSection,
    Section,
    SecuritySection,
    StateSection,
    StdioPrincipal,
    StrTuple,
    TelemetrySection,
    TierName,
    VerificationMode,
    sandbox_network_refusal,
)
from gateway.config.sizes import parse_size
from gateway.config.urls import https_or_loopback

# the sections are defined in gateway.config.sections; importable from here too (one place to
# import the config types from)
__all__ = [
    "AGENT_NAME_RE",
    "LOCAL_MODEL_DIMENSION",
    "RESERVED_SERVER_NAMES",
    "SERVER_NAME_RE",
    "AgentConfig",
    "AuditSection",
    "BreakerSection",
    "BusSection",
    "Config",
    "ContextSection",
    "GatewaySection",
    "HttpSection",
    "JwtSection",
    "LogLevel",
    "McpSection",
    "PathT",
    "PathTuple",
    "PolicySection",
    "ResourcesSection",
    "RetrySection",
    "RuntimeSection",
    "SandboxSection",
    "Section",
    "SecuritySection",
    "ServerConfig",
    "StateSection",
    "StdioPrincipal",
    "StrTuple",
    "TelemetrySection",
    "TierName",
    "UnsafeOption",
    "VerificationMode",
    "parse_size",
]

SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# The built-in servers' names (gateway.catalog.RESERVED_PREFIXES uses the same set).
RESERVED_SERVER_NAMES = frozenset({"sandbox", "bus", "memory", "knowledge", "agents", "symbi"})


class ServerConfig(Section):
    """One upstream MCP server: stdio (``command``) or streamable HTTP (``url``)."""

    command: str | None = None
    args: StrTuple = ()
    env: dict[str, str] = Field(default_factory=dict)
    cwd: PathT | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    # a url over plain http:// to another host (calls readable, answers changeable): refused unless this
    unsafe_plain_http: bool = False
    enabled: bool = True
    timeout_s: float | None = Field(default=None, gt=0)  # per-call timeout; default mcp.call_timeout_s
    pass_through: bool = False  # keep original names (one upstream only)
    domain: str | None = None  # where its .well-known/schemapin.json lives (from config, never the server)
    verification: VerificationMode | None = None  # default: mcp.tool_verification
    approved: PathT | None = None  # signed manifest of approved tool definitions
    signature_digest: Literal["double", "single"] = "double"  # "single": Go-SDK signers (opt-in)
    # "legacy": the 2025-11-25 handshake (server->client requests relayed to the caller);
    # "auto": try 2026-07-28 (server/discover) first (input-required results, listen streams).
    protocol: Literal["legacy", "auto"] = "legacy"
    sandbox: TierName | None = None  # run this stdio server inside a sandbox tier
    sandbox_network: bool = False
    replicas: int = Field(default=1, ge=1, le=64)  # stdio: N processes, calls go to the least busy
    # "principal"/"session": each caller gets its own process (gateway/upstream/isolation.py), so a
    # server->client request (sampling, elicitation, roots) is answered by its caller's client
    # only; "shared": one process, such a request is refused while several principals call it.
    isolation: Literal["shared", "principal", "session"] = "shared"
    isolation_max: int = Field(default=16, ge=1, le=256)  # isolated processes at most (busy: refused)
    isolation_idle_s: float = Field(default=300.0, gt=0)  # an isolated process idle this long is stopped

    @model_validator(mode="after")
    def _one_transport(self) -> ServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("exactly one of 'command' (stdio) or 'url' (streamable HTTP) is required")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("'url' must start with http:// or https://")
        if self.url is not None and (self.args or self.env or self.cwd or self.sandbox):
            raise ValueError("'args', 'env', 'cwd' and 'sandbox' only apply to stdio servers ('command')")
        if self.url is not None and self.replicas > 1:
            raise ValueError(
                "'replicas' applies to stdio servers ('command'): an HTTP server scales behind its URL"
            )
        if self.isolation != "shared" and self.url is not None:
            raise ValueError("'isolation' applies to stdio servers ('command'): a process per caller")
        if self.isolation != "shared" and self.replicas > 1:
            raise ValueError(
                "'isolation' and 'replicas' exclude each other: isolated processes are per caller"
            )
        tuned = {"isolation_max", "isolation_idle_s"} & self.model_fields_set
        if self.isolation == "shared" and tuned:
            raise ValueError(
                f"{', '.join(sorted(tuned))} only apply with isolation = 'principal' or 'session'"
            )
        if self.command is not None and self.headers:
            raise ValueError("'headers' only apply to HTTP servers ('url')")
        self._check_plain_http()
        return self

    def _check_plain_http(self) -> None:
        """An HTTP upstream is reached over https:// or on this host: over plain http:// to another
        host anyone on the path reads what the gateway sends (bearer tokens, arguments) and
        changes what the upstream answers (results reach the model unsigned; a first-use pin would
        pin their definitions). ``unsafe_plain_http`` says so on purpose."""
        plain = self.url is not None and not https_or_loopback(self.url)
        if self.unsafe_plain_http and not plain:
            raise ValueError("'unsafe_plain_http' applies only to an http:// 'url' to another host")
        if not plain or self.unsafe_plain_http:
            return
        raise ValueError(
            "'url' is plain http:// to another host: anyone on the network path could read the calls "
            "(its headers, user:password@ and query included) and change the answers: use https:// "
            "(or set unsafe_plain_http = true on a network you trust)"
        )


@dataclass(frozen=True)
class UnsafeOption:
    """A setting in force that turns a protection off."""

    key: str  # as written in the config (the deprecated spelling when that was used)
    effect: str  # what is off, for the warnings
    replacement: str | None = None  # the unsafe-named key, when ``key`` is a deprecated spelling
    every_call: bool = True  # warned about on every call (verification: on calls to its tools)


class Config(Section):
    """The whole gateway configuration."""

    gateway: GatewaySection = GatewaySection()
    security: SecuritySection = SecuritySection()
    mcp: McpSection = McpSection()
    policy: PolicySection = PolicySection()
    audit: AuditSection = AuditSection()
    sandbox: SandboxSection = SandboxSection()
    http: HttpSection = HttpSection()
    runtime: RuntimeSection = RuntimeSection()
    context: ContextSection = ContextSection()
    telemetry: TelemetrySection = TelemetrySection()
    bus: BusSection = BusSection()
    state: StateSection = StateSection()
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    source: PathT | None = None  # the file this came from (set by the loader)

    @field_validator("servers")
    @classmethod
    def _server_names(cls, v: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in v:
            if not SERVER_NAME_RE.match(name) or "__" in name or name.endswith("_"):
                raise ValueError(
                    f"server name {name!r} must match [A-Za-z0-9][A-Za-z0-9_-]{{0,31}} without '__' "
                    "or a trailing '_' (tool names are SERVER__TOOL)"
                )
            if name.lower() in RESERVED_SERVER_NAMES:
                raise ValueError(
                    f"server name {name!r} is reserved for a built-in server "
                    f"({', '.join(sorted(RESERVED_SERVER_NAMES))}); rename it"
                )
        pt = [n for n, s in v.items() if s.pass_through and s.enabled]
        if pt and len([s for s in v.values() if s.enabled]) > 1:
            raise ValueError(f"pass_through on {pt[0]!r} requires it to be the only enabled server")
        return v

    @field_validator("agents")
    @classmethod
    def _agent_names(cls, v: dict[str, AgentConfig]) -> dict[str, AgentConfig]:
        for name in v:
            if not AGENT_NAME_RE.match(name):
                raise ValueError(f"agent name {name!r} must match [A-Za-z0-9][A-Za-z0-9_-]{{0,31}}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _bus_on_state_redis(cls, data: Any) -> Any:
        """With ``[state] redis_url`` and no ``[bus] backend`` given, the bus is on that Redis:
        agents on different replicas must reach each other, which a per-process bus cannot do."""
        if not isinstance(data, dict):
            return data
        state, bus = data.get("state"), data.get("bus", {})
        url = state.get("redis_url") if isinstance(state, dict) else None
        if isinstance(url, str) and isinstance(bus, dict) and "backend" not in bus:
            return {**data, "bus": {**bus, "backend": "redis", "url": bus.get("url", url)}}
        return data

    @model_validator(mode="after")
    def _every_key_set_has_an_effect(self) -> Config:
        """A key given where nothing reads it is refused, naming it (``bus.url`` without the
        Redis backend likewise, in its section): never a setting silently ignored. "Given" is
        written in the file or set by its environment variable (pydantic's ``model_fields_set``),
        so a default is never refused; ``gateway.config.load`` leaves the environment's
        ``OPENAI_*`` (which other tools read too) out where the embedder does not use them."""
        idle = self._idle_policy_keys()
        if self.state.postgres_url is not None and self.http.api_keys_path is not None:
            idle.append("http.api_keys_path (the API keys are in [state] postgres_url)")
        if not self.agents and "max_agent_connections" in self.http.model_fields_set:
            idle.append("http.max_agent_connections (no [agents]: the gateway opens no agents' socket)")
        if not self.mcp.discovery_enabled and "discovery_registry_dir" in self.mcp.model_fields_set:
            idle.append("mcp.discovery_registry_dir (discovery is off: mcp.discovery_enabled)")
        idle += [
            f"servers.{name}.sandbox_network (the server has no sandbox tier: servers.{name}.sandbox)"
            for name, srv in self.servers.items()
            if srv.sandbox in (None, "none") and "sandbox_network" in srv.model_fields_set
        ]
        idle += self.context.idle_keys()
        if idle:
            raise ValueError(f"set but without effect in this configuration: {', '.join(idle)}")
        for name, srv in self.servers.items():  # the Docker tier's own rule, at load
            if srv.sandbox_network and (why := sandbox_network_refusal(srv.sandbox or "none")):
                raise ValueError(f"servers.{name}.sandbox_network = true: {why}")
        return self

    def _idle_policy_keys(self) -> list[str]:
        """``[policy]`` keys given where nothing reads them: every one with policies off (the
        gateway builds no engine), an OPA server's with the embedded engine."""
        given = self.policy.model_fields_set
        if not self.policies_enforced:
            off = self.security.unsafe_disable_policies
            why = "security.unsafe_disable_policies" if off else "security.enforce_policies = false"
            return [f"policy.{k} (policies are off: {why})" for k in sorted(given)]
        if self.policy.engine != "embedded":
            return []
        idle = [f"policy.{k} (an OPA server's)" for k in ("url", "tls_ca") if getattr(self.policy, k)]
        if "timeout_s" in given:
            idle.append("policy.timeout_s (an OPA server's)")
        return idle

    @model_validator(mode="after")
    def _production_refuses_unsafe(self) -> Config:
        if self.runtime.mode == "production":
            unsafe = self.unsafe_options()
            if unsafe:
                keys = ", ".join(f"{o.key} ({o.effect})" for o in unsafe)
                raise ValueError(f'runtime.mode = "production" refuses unsafe options: {keys}')
        return self

    # -- protections, read through these (never the raw keys) --------------------------------

    @property
    def policies_enforced(self) -> bool:
        return self.security.enforce_policies and not self.security.unsafe_disable_policies

    @property
    def audit_on(self) -> bool:
        return self.security.audit_enabled and not self.security.unsafe_disable_audit

    @property
    def audit_fails_open(self) -> bool:
        return self.audit.on_failure != "deny"

    @property
    def anonymous_principal(self) -> str | None:
        return self.http.unsafe_anonymous_principal or self.http.anonymous_principal

    def unsafe_options(self) -> list[UnsafeOption]:
        """Every setting in force that turns a protection off (refused in production)."""
        return [*self._protections_off(), *self._checks_weakened()]

    def _protections_off(self) -> list[UnsafeOption]:
        """Policy, audit and authentication switched off (each also under its older name)."""
        out: list[UnsafeOption] = []
        sec = self.security
        if sec.unsafe_disable_policies:
            out.append(UnsafeOption("security.unsafe_disable_policies", "policy checks off"))
        elif not sec.enforce_policies:
            out.append(
                UnsafeOption(
                    "security.enforce_policies",
                    "policy checks off",
                    "security.unsafe_disable_policies = true",
                )
            )
        if sec.unsafe_disable_audit:
            out.append(UnsafeOption("security.unsafe_disable_audit", "audit log off"))
        elif not sec.audit_enabled:
            out.append(
                UnsafeOption(
                    "security.audit_enabled", "audit log off", "security.unsafe_disable_audit = true"
                )
            )
        if self.audit.on_failure == "unsafe_warn":
            out.append(UnsafeOption("audit.on_failure", "calls go on when the audit write fails"))
        elif self.audit.on_failure == "warn":
            out.append(
                UnsafeOption(
                    "audit.on_failure",
                    "calls go on when the audit write fails",
                    'audit.on_failure = "unsafe_warn"',
                )
            )
        if self.http.unsafe_anonymous_principal:
            out.append(UnsafeOption("http.unsafe_anonymous_principal", "HTTP requests without credentials"))
        elif self.http.anonymous_principal:
            out.append(
                UnsafeOption(
                    "http.anonymous_principal",
                    "HTTP requests without credentials",
                    "http.unsafe_anonymous_principal",
                )
            )
        return out

    def _checks_weakened(self) -> list[UnsafeOption]:
        """Tool verification relaxed, upstreams unsandboxed, key discovery over plain HTTP."""
        out: list[UnsafeOption] = []
        if self.mcp.tool_verification in ("warn", "off"):
            out.append(
                UnsafeOption(
                    "mcp.tool_verification",
                    f"tool verification {self.mcp.tool_verification}",
                    every_call=False,
                )
            )
        for name, srv in self.servers.items():
            if srv.verification in ("warn", "off"):
                out.append(
                    UnsafeOption(
                        f"servers.{name}.verification",
                        f"tool verification {srv.verification}",
                        every_call=False,
                    )
                )
        if self.security.unsafe_upstreams_as_gateway_user:
            out.append(
                UnsafeOption(
                    "security.unsafe_upstreams_as_gateway_user",
                    "unsandboxed stdio upstreams run as the gateway's user",
                )
            )
        if self.security.unsafe_upstreams_unconfined:
            out.append(
                UnsafeOption(
                    "security.unsafe_upstreams_unconfined",
                    "unsandboxed stdio upstreams share a user with nothing between them",
                )
            )
        for name, srv in self.servers.items():
            if srv.unsafe_plain_http:
                out.append(
                    UnsafeOption(
                        f"servers.{name}.unsafe_plain_http",
                        "an upstream reached over plain HTTP (calls readable, answers changeable)",
                        every_call=False,
                    )
                )
        if self.mcp.insecure_discovery_http:
            out.append(UnsafeOption("mcp.insecure_discovery_http", "key discovery over plain HTTP"))
        return out

    def verification_for(self, server: str) -> VerificationMode:
        mode = self.servers[server].verification if server in self.servers else None
        return mode or self.mcp.tool_verification

    @property
    def config_dir(self) -> Path | None:
        """The folder of the config file (None for a config built in memory)."""
        return self.source.parent if self.source is not None else None

    @property
    def data_dir(self) -> Path:
        return self.gateway.data_dir

    @property
    def audit_path(self) -> Path:
        return self.audit.path or self.data_dir / "audit.db"

    @property
    def audit_key_path(self) -> Path:
        return self.audit.key_path or self.data_dir / "audit-key.pem"

    @property
    def pins_path(self) -> Path:
        return self.data_dir / "pins.db"

    @property
    def handouts_path(self) -> Path:
        return self.data_dir / "handouts.db"

    @property
    def discovered_path(self) -> Path:
        return self.data_dir / "discovered.json"

    @property
    def screening_accepted_path(self) -> Path:
        return self.data_dir / "screening-accepted.json"

    @property
    def tool_state_path(self) -> Path:
        return self.data_dir / "tools.db"

    @property
    def bus_path(self) -> Path:
        return self.data_dir / "bus.db"

    @property
    def bus_secret_path(self) -> Path:
        return self.data_dir / "bus-secret"

    @property
    def agent_id_key_path(self) -> Path:
        return self.data_dir / "agent-id-key"

    @property
    def bus_keys_path(self) -> Path:
        return self.data_dir / "bus-keys.db"

    @property
    def api_keys_path(self) -> Path:
        return self.http.api_keys_path or self.data_dir / "api-keys.json"
