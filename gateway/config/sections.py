"""The sections of the configuration (``[gateway]``, ``[security]``, ... ``[state]``, and
``[agents.NAME]``): each a frozen pydantic model that forbids unknown keys. ``Config``
(``gateway.config.model``) puts them together with the servers and the cross-section checks."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from gateway.config.sizes import parse_size
from gateway.config.urls import https_or_loopback, proxy_address

# bus.subscription_ttl_s at most (``gateway.bus.core.Bus`` checks it too, made without a config)
SUBSCRIPTION_TTL_MAX_S = 365 * 86400.0

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
VerificationMode = Literal["strict", "tofu", "warn", "off"]
TierName = Literal["none", "bwrap", "docker", "gvisor"]


def sandbox_network_refusal(tier: str) -> str | None:
    """Why ``sandbox_network = true`` cannot be granted in ``tier`` (None: it can, or there is no
    network to grant). The one rule: ``Config`` refuses it at load, the Docker tier again at start.
    gVisor here runs only with ``--network=none``; Docker's bridge reaches the host (172.17.0.1)
    and every private range, which is not egress-only (bwrap gets egress-only)."""
    if tier == "gvisor":
        return 'gVisor here runs only with --network=none; grant no network or use sandbox = "bwrap"'
    if tier == "docker":
        return 'a docker-tier upstream\'s network is not egress-only here; use sandbox = "bwrap"'
    return None


# TOML gives lists and strings: accept them for tuples and paths, stay strict elsewhere.
PathT = Annotated[Path, Strict(False)]
StrTuple = Annotated[tuple[str, ...], Strict(False)]
PathTuple = Annotated[tuple[PathT, ...], Strict(False)]


class Section(BaseModel):
    """A config section. Its numbers are budgets, times and sizes: ``inf`` and ``nan`` (TOML has
    them) are refused at load, naming the key, in every section. ``cpu_cores = inf`` loaded,
    then the first hosted run raised OverflowError computing its cgroup's CPU quota, out of the
    supervisor: the gateway stopped (``sandbox.cpus`` and ``bus.max_age_s`` the same way)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class StdioPrincipal(Section):
    """Who is calling when a client connects over stdio (no credentials there)."""

    id: str = "local"
    kind: str = "user"
    roles: StrTuple = ()


class GatewaySection(Section):
    name: str = "symbi"
    data_dir: PathT = Path(".symbi")
    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = "text"
    stdio_principal: StdioPrincipal = StdioPrincipal()
    # dotenv file (0600) for ${NAME} references in servers' env/headers (symbi import writes it)
    env_file: PathT | None = None


class SecuritySection(Section):
    default_sandbox_tier: TierName = "gvisor"
    enforce_policies: bool = True  # the seed's key; false is the deprecated unsafe_disable_policies
    audit_enabled: bool = True  # the seed's key; false is the deprecated unsafe_disable_audit
    unsafe_disable_policies: bool = False  # every verified call is allowed, no conditions applied
    unsafe_disable_audit: bool = False  # calls and events are not recorded
    # "ring" (the seed's Rust crate) cannot run here: it maps to "cryptography", which does
    # the same job (ECDSA P-256, Ed25519, SHA-256, AES-GCM), and the start says so once.
    crypto_provider: Literal["cryptography", "ring"] = "cryptography"
    # who unsandboxed stdio upstreams run as: a user name or "uid[:gid]"; never the gateway's
    # own user (the default user is created on first use; see gateway/upstream/runas.py)
    upstream_user: str = "symbi-upstream"
    # processes and threads the upstreams run as that user may hold together (its RLIMIT_NPROC,
    # set by prlimit): a server that forks without end stops there, not at the machine's limit
    upstream_max_tasks: int = Field(default=4096, ge=16)
    # each such server's own /tmp, /var/tmp, /dev/shm and /run/lock: one tmpfs of this many MiB
    # (memory, taken as written), gone when the server ends
    upstream_scratch_mb: int = Field(default=64, ge=1, le=65536)
    unsafe_upstreams_as_gateway_user: bool = False  # they could read the keys and the audit log
    # no Landlock domain per unsandboxed upstream (a kernel without Landlock): sharing a uid, each
    # could read the others' environment and files, ptrace and signal them
    unsafe_upstreams_unconfined: bool = False


class McpSection(Section):
    discovery_enabled: bool = False
    # with discovery on: a folder of MCP registry server.json documents watched with the client configs
    discovery_registry_dir: PathT | None = None
    tool_verification: VerificationMode = "strict"
    connection_timeout_s: float = Field(default=30.0, gt=0)
    # stdio upstreams starting at once (process start + initialize + first listing, the part
    # under connection_timeout_s); None: the CPU count, at least 2. Fifty servers started
    # together on two cores each got 1/25 of a core, timed out, and restarted together.
    max_concurrent_starts: int | None = Field(default=None, ge=1)
    call_timeout_s: float = Field(default=60.0, gt=0)
    # MCP requests served at once: over HTTP; over stdio, the one client's requests in flight
    max_concurrent_connections: int = Field(default=1024, ge=1)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # keys and items of a call's arguments in all: each is redaction-matched and handed to the
    # policy on the event loop (~5 us a key), and 300,000 short keys held every caller for seconds
    max_argument_members: int = Field(default=10_000, ge=1)
    # tools/list pages (cursor / nextCursor): 2,000 tools in one reply were over the SDK
    # client's 1 MiB SSE event limit
    list_page_size: int = Field(default=500, ge=1, le=10_000)
    # the most tools (and, each counted apart, resources, resource templates, prompts) one upstream
    # may list; a longer list is refused whole. Each new tool is assessed while the catalogue's
    # rebuild holds every other change: 20,000 held a revocation of another server's tool 101 s
    max_listed_per_upstream: int = Field(default=2_000, ge=1)
    # an upstream's own requests to the client (sampling, elicitation, roots) relayed at once per
    # upstream session; past it each gets a JSON-RPC error at once (the SDK ran one task per
    # request: 300 at once reached the client together)
    max_server_requests_in_flight: int = Field(default=16, ge=1, le=10_000)
    # the largest such request's params (JSON bytes); a larger one is refused before the policy
    # is asked (the SDK client's SSE event limit is 1 MiB: a 2 MiB prompt broke the caller's
    # stream). Never more than max_message_bytes, the largest message read at all.
    max_server_request_bytes: int = Field(default=512 * 1024, ge=1024)
    # ``symbi mcp``: a plain tools/call of an initialized session is framed and answered by the
    # gateway (gateway/server/fastlane.py, the same chain and handler); off: every message
    # goes through the SDK's server session
    stdio_fast_lane: bool = True
    # symbi serve: a plain tools/call of an open session is parsed and answered by the gateway
    # itself (same chain, middleware, session; an SSE stream or, with http.json_response, a JSON
    # body); false: all through the SDK
    http_fast_lane: bool = True
    # tools/list pages answered in wire form, each tool shaped once per protocol version
    # (gateway/server/listwire.py: the same pager and policy); false: shaped by the SDK each time
    list_fast_path: bool = True
    restart_backoff_initial_s: float = Field(default=0.5, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    org_keys: PathTuple = ()  # organisation public keys that may sign approved manifests
    insecure_discovery_http: bool = False  # tests only: allow http:// .well-known; logged loudly
    discovery_ca: PathT | None = None  # CA bundle for .well-known discovery (default: system CAs)
    discovery_ttl_s: float = Field(default=300.0, ge=0)
    # SchemaPin's reference SDKs do not normalise S, so about half their signatures are high-S;
    # they verify by default (a signature is never an identity here). Opt in to refuse them.
    require_low_s_signatures: bool = False
    recheck_interval_s: float = Field(default=2.0, gt=0)  # how often approvals/manifests are re-read

    @property
    def starts_at_once(self) -> int:
        """``max_concurrent_starts``, or the CPU count (at least 2) when it is not set."""
        return self.max_concurrent_starts or max(2, os.cpu_count() or 2)


class PolicySection(Section):
    engine: Literal["embedded", "opa"] = "embedded"
    path: PathT | None = None  # default: policies.rego at the repo root / packaged copy
    data: PathT | None = None
    url: str | None = None  # OPA server base URL when engine = "opa"
    timeout_s: float = Field(default=2.0, gt=0)
    tls_ca: PathT | None = None
    hot_reload: bool = True
    decision: str = "data.symbi.decision"
    # the bearer token OPA's `--authentication=token` asks for (or SYMBI_POLICY_TOKEN): without
    # one, whatever reaches OPA's port can rewrite the policy (`symbi policy push` does)
    token: str | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _opa_needs_url(self) -> PolicySection:
        if self.engine == "opa" and not self.url:
            raise ValueError('policy.url is required when policy.engine = "opa"')
        if self.token is not None and self.engine != "opa":
            raise ValueError('policy.token applies only with policy.engine = "opa"')
        if self.token is not None and self.url is not None and not https_or_loopback(self.url):
            raise ValueError("policy.token would go over plain http:// to another host: use https://")
        return self


class AuditSection(Section):
    path: PathT | None = None  # default: <data_dir>/audit.db
    key_path: PathT | None = None  # default: <data_dir>/audit-key.pem
    # "unsafe_warn": a call goes on when its record cannot be written ("warn": deprecated spelling)
    on_failure: Literal["deny", "unsafe_warn", "warn"] = "deny"
    checkpoint_every: int = Field(default=100, ge=1)
    batch_max: int = Field(default=256, ge=1)
    # key ids ("ed25519:<32 hex>") verification trusts; printed by `symbi audit init` / first start
    pinned_keys: StrTuple = ()
    # a second copy of every signed checkpoint, appended (JSON lines) outside the data dir
    checkpoint_export: PathT | None = None

    @field_validator("pinned_keys")
    @classmethod
    def _key_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for k in v:
            if not re.fullmatch(r"ed25519:[0-9a-f]{32}", k):
                raise ValueError(
                    f"{k!r} is not an audit key id (ed25519:<32 hex digits>, see `symbi audit init`)"
                )
        return v

    # Retention (gateway/audit/retention.py): off unless one of the two limits is set.
    retention_days: float | None = Field(default=None, gt=0)  # events older than this leave the live log
    max_bytes: int | None = Field(default=None, ge=65536)  # the live log's used size stays below this
    retention_mode: Literal["archive", "delete"] = "archive"  # sealed, signed segments, or deletion
    archive_dir: PathT | None = None  # default: <data_dir>/audit-archive
    retention_check_s: float = Field(default=3600.0, gt=0)  # how often the gateway applies retention
    # refused calls recorded one by one per principal and window; the rest as counts (audit/refusals.py)
    refusals_recorded_per_window: int = Field(default=100, ge=1)
    refusal_window_s: float = Field(default=60.0, gt=0)


class SandboxSection(Section):
    image: str = "symbi-sandbox:latest"
    memory_mb: int = Field(default=256, ge=16)
    cpus: float = Field(default=1.0, gt=0)
    pids: int = Field(default=128, ge=8)
    timeout_s: float = Field(default=10.0, gt=0)
    output_bytes: int = Field(default=64 * 1024, ge=256)
    warm_pool: int = Field(default=0, ge=0)
    code_tools: bool = True  # expose sandbox__run_python / sandbox__run_shell
    # hosts/CIDRs a sandboxed server with network may reach; empty: any public address
    # (never this host, loopback or private ranges)
    egress_allow: StrTuple = ()


class JwtSection(Section):
    issuer: str
    audience: str
    algorithms: StrTuple = ("RS256", "ES256")
    jwks_file: PathT | None = None
    jwks_url: str | None = None
    # the HTTP proxy an https jwks_url is fetched through (CONNECT): "http://host:port", or
    # "direct" for none; unset, $https_proxy applies unless $no_proxy names the IdP's host
    jwks_proxy: str | None = None
    roles_claim: str = "roles"

    @model_validator(mode="after")
    def _one_jwks(self) -> JwtSection:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("exactly one of http.jwt.jwks_file or http.jwt.jwks_url is required")
        if "none" in {a.lower() for a in self.algorithms}:
            raise ValueError("http.jwt.algorithms must not contain 'none'")
        if self.jwks_url is not None and not https_or_loopback(self.jwks_url):
            # whoever answers this URL decides whose tokens are valid (an admin's included):
            # plain http to another host lets anyone on the path serve its own keys
            raise ValueError("http.jwt.jwks_url must be an https:// URL (http:// only to a loopback address)")
        if self.jwks_proxy is not None:
            if self.jwks_url is None or urlsplit(self.jwks_url).scheme != "https":
                # a loopback http:// URL is never proxied: the key would have no effect
                raise ValueError("http.jwt.jwks_proxy applies only to an https:// http.jwt.jwks_url")
            if self.jwks_proxy != "direct":
                proxy_address(self.jwks_proxy)
        return self


class HttpSection(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    path: str = "/mcp"
    json_response: bool = False
    session_idle_timeout_s: float = Field(default=1800.0, gt=0)
    max_sessions: int = Field(default=1000, ge=1)
    max_sessions_per_principal: int = Field(default=16, ge=1)  # one caller cannot take every slot
    max_listens_per_principal: int = Field(default=16, ge=1)  # 2026 listen streams (open requests)
    header_timeout_s: float = Field(default=10.0, gt=0)  # request headers must be complete by then
    max_header_bytes: int = Field(default=65536, ge=1024)  # a request's headers in all (431 past it)
    body_timeout_s: float = Field(default=30.0, gt=0)  # the whole request body must arrive by then
    # connections open at once (idle ones included): past it a new one closes the one idle
    # longest, else the oldest request without a credential that passed, or is refused (503)
    # when every one holds a request whose did; the open-file limit is raised to hold them
    max_connections: int = Field(default=4096, ge=1)
    # the hosted agents' Unix socket's own bound, the same way (TCP callers cannot crowd it)
    max_agent_connections: int = Field(default=256, ge=1)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    allowed_hosts: StrTuple = ()
    api_keys_path: PathT | None = None  # default: <data_dir>/api-keys.json
    unsafe_anonymous_principal: str | None = None  # requests without credentials act as this principal
    anonymous_principal: str | None = None  # deprecated spelling of unsafe_anonymous_principal
    access_log: bool = True
    authorization_servers: StrTuple = ()
    jwt: JwtSection | None = None


class ResourcesSection(Section):
    """The seed's ResourceLimits (five budgets) plus call concurrency, per agent."""

    memory_mb: int = Field(default=512, ge=16)
    cpu_cores: float = Field(default=1.0, gt=0)
    disk_io_mbps: int = Field(default=50, ge=1)
    network_io_mbps: int = Field(default=10, ge=1)
    network: bool = False  # hosted agents: no network but the gateway's own socket
    execution_timeout_s: float = Field(default=300.0, gt=0)  # per call (session) / per run (hosted)
    max_concurrent_calls: int = Field(default=8, ge=1)


class BreakerSection(Section):
    failures: int = Field(default=5, ge=1)  # consecutive failures that open an upstream's breaker
    reset_s: float = Field(default=10.0, gt=0)  # open this long, then one half-open probe


class RetrySection(Section):
    attempts: int = Field(default=3, ge=1)  # only for tools annotated idempotent or read-only
    backoff_s: float = Field(default=0.2, gt=0)
    backoff_max_s: float = Field(default=2.0, gt=0)


class RuntimeSection(Section):
    """The agent runtime (gateway/runtime): agents, scheduler, budgets, error handling."""

    # production refuses every unsafe option (``Config.unsafe_options``); env SYMBI_RUNTIME_MODE
    mode: Literal["development", "production"] = "development"
    max_concurrent_agents: int = Field(default=10000, ge=1)
    # live session agents of one principal (a stateless client makes one per client name):
    # one caller cannot take max_concurrent_agents; hosted agents are not counted
    max_agents_per_principal: int = Field(default=64, ge=1)
    scheduler_threads: int = Field(default=4, ge=1)  # worker threads for blocking work
    message_buffer_size: int = Field(default=1024, ge=1)  # per-agent bus buffer (the bus reads it)
    gc_interval_ms: int = Field(default=100, ge=1)  # sweep of terminated agents and idle sessions
    gc_batch: int = Field(default=256, ge=1)  # agents looked at per sweep (bounded pause)
    agent_idle_timeout_s: float = Field(default=1800.0, gt=0)
    max_in_flight: int = Field(default=64, ge=1)  # calls dispatched at once, all agents
    queue_limit: int = Field(default=1024, ge=1)
    # one principal's calls in flight (all its sessions and agents, hosted ones too) and
    # waiting: one caller cannot take every slot of max_in_flight or fill queue_limit
    max_in_flight_per_principal: int = Field(default=16, ge=1)
    queue_limit_per_principal: int = Field(default=256, ge=1)
    aging_s: float = Field(default=1.0, gt=0)  # seconds of waiting worth one priority level
    default_priority: int = Field(default=4, ge=0, le=9)
    suspend_after_denials: int = Field(default=10, ge=1)
    denial_window_s: float = Field(default=60.0, gt=0)
    allocation: Literal["first-fit", "best-fit", "priority"] = "first-fit"
    pool_slots: int = Field(default=4, ge=1)  # placement bins of the resource pool
    pool_slot_cpu: float = Field(default=1.0, gt=0)
    pool_slot_memory_mb: int = Field(default=1024, ge=16)
    resources: ResourcesSection = ResourcesSection()
    breaker: BreakerSection = BreakerSection()
    retry: RetrySection = RetrySection()


AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class AgentConfig(Section):
    """One hosted agent: a process the runtime runs in a sandbox tier as its own principal."""

    command: str
    args: StrTuple = ()
    env: dict[str, str] = Field(default_factory=dict)
    principal: str | None = None  # default: "agent:NAME"
    roles: StrTuple = ()
    sandbox: Literal["bwrap", "docker", "gvisor"] | None = None  # default: security.default_sandbox_tier
    priority: int = Field(default=4, ge=0, le=9)
    resources: ResourcesSection = ResourcesSection()
    read_only_paths: StrTuple = ()  # extra host paths it may read (e.g. a venv's site-packages)
    restart: Literal["never", "on-failure", "always"] = "on-failure"
    restart_backoff_s: float = Field(default=1.0, gt=0)
    restart_backoff_max_s: float = Field(default=30.0, gt=0)
    max_failures: int = Field(default=5, ge=1)  # within failure_window_s: escalate to Failed
    failure_window_s: float = Field(default=300.0, gt=0)
    start: str = "with-gateway"  # "with-gateway" | "on-demand" | an interval like "30s", "5m"
    enabled: bool = True

    @field_validator("resources")
    @classmethod
    def _no_network(cls, v: ResourcesSection) -> ResourcesSection:
        if v.network:
            raise ValueError(
                "resources.network = true is not supported for hosted agents: they reach "
                "tools through the gateway only (network_io_mbps applies to nothing else)"
            )
        return v

    @field_validator("start")
    @classmethod
    def _start(cls, v: str) -> str:
        if v in ("with-gateway", "on-demand") or re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h)", v):
            return v
        raise ValueError('start must be "with-gateway", "on-demand" or an interval like "30s", "5m", "1h"')


class TelemetrySection(Section):
    """OpenTelemetry traces (gateway/telemetry.py): ids always; OTLP export when configured."""

    service_name: str = "symbi-gateway"
    otlp_endpoint: str | None = None  # OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces
    otlp_headers: dict[str, str] = Field(default_factory=dict)
    otlp_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (OTLP/HTTP)")
        return v


class BusSection(Section):
    """The agent bus (``bus__*`` tools, ``bus://`` resources); buffers are runtime.message_buffer_size."""

    enabled: bool = True  # expose the built-in ``bus`` server
    # default: "redis" on [state] redis_url when that is set (replicas' agents reach each
    # other), else "embedded" (this process only); Config._bus_on_state_redis fills it in
    backend: Literal["embedded", "redis"] = "embedded"
    url: str | None = None  # Redis URL when backend = "redis" (redis://, rediss:// or unix://)
    # the secret the key directory's HMACs and topic keys derive from, base64 of 32 bytes:
    # every gateway on one Redis bus needs the same one (replicas: SYMBI_BUS_SECRET from the
    # deployment's Secret). Unset: <data_dir>/bus-secret, made on first use (one gateway).
    # The tools/list cursor key is derived from it too (gateway/server/paging.py)
    secret: str | None = Field(default=None, repr=False)

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                raw = base64.b64decode(v, validate=True)
            except ValueError:
                raise ValueError("must be base64 (head -c 32 /dev/urandom | base64)") from None
            if len(raw) != 32:
                raise ValueError(
                    f"must be 32 bytes in base64, not {len(raw)} (head -c 32 /dev/urandom | base64)"
                )
        return v

    max_age_s: float = Field(default=86400.0, gt=0)  # longest a message may live (timestamp window)
    clock_skew_s: float = Field(default=30.0, ge=0)  # how far ahead of this clock a timestamp may be
    max_body_bytes: int = Field(default=256 * 1024, ge=16)
    expire_interval_s: float = Field(default=5.0, gt=0)  # how often expired messages are removed
    # topic subscriptions one agent may hold: every publish and every receipt of a topic
    # message reads all of them, so one agent's without end slowed every other's
    max_subscriptions_per_agent: int = Field(default=256, ge=1)
    # how long a topic subscription (a grant decided once, by the policy, at bus__subscribe)
    # lasts; subscribing again renews it (and asks the policy again). Past it the agent is
    # sent no copy and a copy still waiting is rejected: a grant made for a task never
    # outlives it by more than this (at most a year; finite, as every float of this section)
    subscription_ttl_s: float = Field(default=86400.0, gt=0, le=SUBSCRIPTION_TTL_MAX_S)
    # bytes a principal's agents put on the bus within max_age_s (topic copies: the subscriber's):
    # what it sends stays stored that long (the embedded store keeps settled messages as long)
    max_bytes_per_principal: int = Field(default=256 * 1024 * 1024, ge=1024)

    @field_validator("max_bytes_per_principal", mode="before")
    @classmethod
    def _bytes(cls, v: object) -> int:
        return parse_size(v)

    @model_validator(mode="after")
    def _redis_needs_url(self) -> BusSection:
        if self.backend == "redis":
            if not self.url:
                raise ValueError('bus.url is required when bus.backend = "redis"')
            if not self.url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("bus.url must start with redis://, rediss:// or unix://")
        elif self.url is not None:
            raise ValueError('bus.url only applies when bus.backend = "redis"')
        return self


class StateSection(Section):
    """State shared by gateway replicas behind a load balancer (gateway/state).

    Unset, everything stays in this process and its data dir (one gateway). ``redis_url``:
    the rate-limit log is shared, so N replicas admit exactly the policy's limit together.
    ``postgres_url``: tool records, approvals, revocations and API keys are shared (schema
    migrated at start), and each replica's audit chain is copied there (``symbi audit verify --shared``).
    """

    redis_url: str | None = Field(default=None, repr=False)  # may carry a password
    postgres_url: str | None = Field(default=None, repr=False)  # postgresql://user@host:port/db
    timeout_s: float = Field(default=2.0, gt=0)  # per round trip; past it the call is refused
    probe_interval_s: float = Field(
        default=1.0, gt=0
    )  # how often /readyz's view of each backend is refreshed

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("postgres_url")
    @classmethod
    def _postgres_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// or postgres://")
        return v
