"""Ties SchemaPin to the catalogue: which upstream tools are the approved ones.

On every catalogue refresh (start, list_changed, reconnect, an approval) each tool is
assessed under its upstream's mode:

- ``strict``: listed and callable only if a signature verifies (in-band
  ``_meta["schemapin/signature"]`` against the upstream's discovered key, pinned on first
  use; or an envelope of the approved manifest signed by an organisation key) and the
  definition is the signed one.
- ``tofu``: as strict for signed tools; an unsigned tool's definition is pinned on first
  sight and any later change blocks it.
- ``warn``: everything listed and callable; unverified or drifted tools are marked.
- ``off``: no checks; a warning at start and on every call.

Every change of a definition is drift: it is recorded (old and new, for ``symbi tools
diff``), an event is emitted, and in strict/tofu the tool stays blocked until a person
approves the new definition (``symbi tools approve``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from gateway.config.model import Config
from gateway.context import ToolInfo, is_blocked
from gateway.errors import ConfigError, StateUnavailable
from gateway.events import Event, EventSink, Unsent
from gateway.screen.accepted import AcceptedFindings
from gateway.screen.refresh import Listings, RefreshScreening
from gateway.verify.definitions import META_KEY, approved_definition, same_json
from gateway.verify.keys import UpstreamKeys
from gateway.verify.listed import is_listed, kind_of, listed_mode
from gateway.verify.manifest import load_manifest
from gateway.verify.revocations import REVOKED_REASON, Revocations
from gateway.verify.signatures import check_manifest, check_signature, drift_reason
from gateway.verify.state import ToolRecord, ToolStates, ToolStateStore
from schemapin import (
    KeySnapshot,
    PinStore,
    SchemaPinError,
    WellKnownResolver,
    definition_hash,
    split_carrier,
)

if TYPE_CHECKING:
    from gateway.state.accepted import PgAcceptedFindings
    from gateway.state.pins import PgPinStore

_logger = logging.getLogger("symbi.verify")


@dataclass(frozen=True)
class _UpstreamTrust:
    """What one upstream's tools are checked against: its verification mode, its approved
    manifest and its discovered keys (or why either could not be had)."""

    mode: str
    domain: str | None
    manifest: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest_error: str | None = None
    snapshot: KeySnapshot | None = None
    snap_error: str | None = None


def load_org_keys(config: Config) -> list[KeySnapshot]:
    keys = []
    for i, path in enumerate(config.mcp.org_keys):
        try:
            keys.append(KeySnapshot.from_public_key(Path(path).read_text()))
        except (OSError, SchemaPinError, ValueError) as e:
            raise ConfigError(f"mcp.org_keys[{i}] ({path}): not a readable P-256 public key: {e}") from None
    return keys


class ToolVerifier:
    """Assesses every tool of the catalogue; see the module docstring for the rules."""

    def __init__(
        self,
        config: Config,
        events: EventSink,
        *,
        resolver: Any = None,
        builtins: frozenset[str] = frozenset(),
        code_builtins: frozenset[str] | None = None,
        state: ToolStates | None = None,
        pins: PgPinStore | None = None,
        accepted: PgAcceptedFindings | None = None,
    ) -> None:
        self._config = config
        self._events = events
        # records not committed yet (state.observe saved the change; a CLI approve/revoke the
        # approvals poll noticed): queued in order, re-queued until committed (tasks._send_held)
        self.unsent = Unsent()
        self._builtins = builtins
        # built-ins whose tools run agent code (the sandbox); default: all of them
        self._code_builtins = builtins if code_builtins is None else code_builtins
        # approvals: the data dir's SQLite, or PostgreSQL shared by replicas ([state])
        self.state: ToolStates = state if state is not None else ToolStateStore(config.tool_state_path)
        # SchemaPin key pins: the data dir's SQLite, or PostgreSQL shared by replicas ([state])
        self.pins: PinStore | PgPinStore = pins if pins is not None else PinStore(config.pins_path)
        # revoked tools, refused at call time before the catalogue says so (poll_approvals)
        self.revocations = Revocations(self.state)
        ca = config.mcp.discovery_ca
        self._resolver = resolver or WellKnownResolver(
            timeout=min(10.0, config.mcp.connection_timeout_s),
            ttl=config.mcp.discovery_ttl_s,
            allow_insecure_http=config.mcp.insecure_discovery_http,
            verify=str(ca) if ca else True,
        )
        self._org_keys = load_org_keys(config)
        # discovered keys, and the ones the verdicts were made with (a revocation re-assesses)
        self.keys = UpstreamKeys(config, self._resolver)
        # accepted screening findings: the data dir's file, or PostgreSQL shared by replicas
        self._accepted: AcceptedFindings | PgAcceptedFindings = (
            accepted if accepted is not None else AcceptedFindings(config.screening_accepted_path)
        )
        self._screening = RefreshScreening(events)
        for name in config.servers:
            if config.verification_for(name) == "off":
                _logger.warning("verification is OFF for upstream %r: its tools are not checked", name)

    def reconfigure(self, config: Config) -> None:
        """A server was added at run time (discovery): its settings come from ``config``."""
        self._config = config
        self.keys.config = config

    def close(self) -> None:
        self.unsent.abandon()
        self.state.close()
        self.pins.close()

    # -- what the gateway polls to notice approvals made by the CLI --------------------------

    def fingerprint(self) -> tuple[Any, ...]:
        mtimes: list[int | None] = []
        for srv in self._config.servers.values():
            if srv.approved is not None:
                try:
                    mtimes.append(srv.approved.stat().st_mtime_ns)
                except OSError:
                    mtimes.append(None)
        try:
            pins_mtime = self._config.pins_path.stat().st_mtime_ns
        except OSError:
            pins_mtime = None
        try:
            version = self.state.version()
        except StateUnavailable:
            version = "unavailable"  # a change: the catalogue is re-assessed (and blocked) now
        return (version, tuple(mtimes), pins_mtime, self._accepted.mtime())

    # -- assessment ------------------------------------------------------------------------

    async def assess(
        self,
        tools: Iterable[ToolInfo],
        *,
        changed: str | None = None,
        previous: Mapping[str, ToolInfo] | None = None,
    ) -> dict[str, ToolInfo]:
        """Each tool with its verification verdict, by namespaced name (the catalogue's input).

        ``changed``: only that upstream's listing changed (its list_changed); the others keep their
        ``previous`` verdicts when every definition is the one assessed then (as if no rebuild had
        happened): one server's change costs its own tools. Screening runs over all (cached).
        """
        by_upstream: dict[str, list[ToolInfo]] = defaultdict(list)
        for tool in tools:
            by_upstream[tool.upstream].append(tool)
        infos: dict[str, ToolInfo] = {}
        for upstream, entries in by_upstream.items():
            if changed is not None and previous is not None and upstream not in self._builtins:
                kept = {
                    t.name: k
                    for t in entries
                    if (k := previous.get(t.name)) is not None
                    and k.upstream == t.upstream
                    and same_json(k.definition, t.definition)
                }
                if upstream != changed and len(kept) == len(entries):
                    infos.update(kept)
                    continue
                if upstream == changed:
                    # the changed server: only its new or redefined tools are assessed again
                    fresh = [t for t in entries if t.name not in kept]
                    present = {t.original_name for t in entries}
                    assessed = await self._assess_upstream(upstream, fresh, present=present)
                    if any(i.verification == "unavailable" for i in assessed) or self.keys.moved(upstream):
                        # shared approvals unreadable: none of this upstream's tools, old or new;
                        # its key was rotated or revoked: the kept verdicts were made with the old
                        assessed = await self._assess_upstream(upstream, entries)
                    else:
                        infos.update(kept)
                    for info in assessed:
                        infos[info.name] = info
                    continue
            if upstream in self._builtins:
                for t in entries:
                    info = _with(t, "verified", None, None, None, "strict")
                    infos[t.name] = replace(info, code_tool=upstream in self._code_builtins)
                continue
            for info in await self._assess_upstream(upstream, entries):
                infos[info.name] = info
        try:  # a PostgreSQL read with [state]: off the event loop
            accepted = await anyio.to_thread.run_sync(self._accepted.load)
        except StateUnavailable:
            accepted = {}  # fail closed: no finding counts as accepted while they cannot be read
        # prompts, resources and templates are screened with the catalogue (screen_listings)
        listed = {n: i for n, i in infos.items() if is_listed(n)}
        proper = {n: i for n, i in infos.items() if n not in listed}
        # queued ahead of the screening's, not waited for: a stalled disk must not hold the swap
        self.unsent.queue(self._events)
        return {**self._screening.tools(proper, self._builtins, accepted), **listed}

    def screen_listings(self, catalog: Listings) -> None:
        """Resources, templates and prompts screened on every refresh (audited as tools are)."""
        self._screening.listings(catalog, self._builtins)

    async def _assess_upstream(
        self, upstream: str, entries: list[ToolInfo], present: set[str] | None = None
    ) -> list[ToolInfo]:
        srv = self._config.servers[upstream]
        mode = self._config.verification_for(upstream)
        manifest: dict[str, dict[str, Any]] = {}
        manifest_error: str | None = None
        if srv.approved is not None:
            try:
                manifest = load_manifest(srv.approved, upstream=upstream)
            except ConfigError as e:
                manifest_error = e.message
        snapshot, snap_error = await self.keys.resolve(upstream, complete=present is None)
        trust = _UpstreamTrust(mode, srv.domain, manifest, manifest_error, snapshot, snap_error)
        # The tool state is PostgreSQL with [state] postgres_url: a server that does not answer
        # holds a worker thread for up to state.timeout_s per query, never the event loop (every
        # other call, /healthz). Its events are collected there and emitted here, on the loop.
        pending: list[tuple[Event, dict[str, Any]]] = []
        try:
            return await anyio.to_thread.run_sync(
                lambda: self._assess_with_state(upstream, entries, present, trust, pending)
            )
        finally:
            # held, queued when the rebuild is assessed (``assess``): a refused record must not
            # keep the new catalogue (a revocation) out
            for kind, details in pending:
                self.unsent.keep(kind, details)

    def _assess_with_state(
        self,
        upstream: str,
        entries: list[ToolInfo],
        present: set[str] | None,
        trust: _UpstreamTrust,
        pending: list[tuple[Event, dict[str, Any]]],
    ) -> list[ToolInfo]:
        """The blocking part of ``_assess_upstream`` (in a worker thread): reads and writes the
        tool state; events go to ``pending``."""
        out = []
        try:
            # once a listing of this upstream was approved, a tool it adds later waits for a person
            established = self.state.has_approved(upstream)
            # prompts, resources and templates: nothing signs them, strict pins them as tofu does
            as_listed = replace(trust, mode=listed_mode(trust.mode))
            for tool in entries:
                rules = as_listed if is_listed(tool.name) else trust
                out.append(self._assess_one(tool, rules, established, pending))
            listed = present if present is not None else {t.original_name for t in entries}
            for gone in self.state.mark_absent(upstream, listed):
                pending.append(
                    (
                        Event.TOOL_VANISHED,
                        {"tool": gone.namespaced, "upstream": upstream, "hash": gone.current_hash},
                    )
                )
        except StateUnavailable as e:
            # approvals shared by replicas cannot be read: no tool of this upstream is admitted
            _logger.error("upstream %s: %s", upstream, e.message)
            return [_with(t, "unavailable", e.message, None, None, trust.mode) for t in entries]
        return out

    def _assess_one(
        self,
        info: ToolInfo,
        trust: _UpstreamTrust,
        established: bool,
        pending: list[tuple[Event, dict[str, Any]]],
    ) -> ToolInfo:
        definition, signature = split_carrier(dict(info.definition))
        # The signature covers the definition without _meta (the carrier); the approved hash
        # covers everything a client is shown: _meta too, less exactly the signature key.
        approved_form = approved_definition(info.definition)
        mode = trust.mode
        try:
            h = definition_hash(approved_form)
        except SchemaPinError as e:
            return _with(info, "failed", f"definition cannot be canonicalised: {e}", None, None, mode)
        before = self.state.get(info.upstream, info.original_name)
        status, reason, fp, approve_now = self._verdict(
            info, trust, definition, signature, before, approved_form, h
        )
        late = (
            established
            and (before is None or before.approved_hash is None)
            and status in ("pinned", "verified")
        )
        if late and not _by_manifest(info, trust, signature):
            # added after the upstream's first approved listing: pending (an org-signed manifest
            # entry is a person's approval already)
            status, approve_now = "unverified", False
            what = kind_of(info.name) or "tool"
            reason = (
                f"new {what} since the upstream's first approved listing: pending until `symbi tools approve`"
            )
        self._record(info, mode, before, approved_form, h, status, reason, fp, approve_now, pending)
        return _with(info, status, reason if status != "verified" else None, fp, h, mode)

    def _verdict(
        self,
        info: ToolInfo,
        trust: _UpstreamTrust,
        definition: dict[str, Any],
        signature: str | None,
        before: ToolRecord | None,
        approved_form: dict[str, Any],
        h: str,
    ) -> tuple[str, str | None, str | None, bool]:
        """(status, reason, key fingerprint, approve now) of one definition under its
        upstream's mode, before the hold on tools added to an approved listing."""
        mode = trust.mode
        status: str
        reason: str | None
        fp: str | None
        status, reason, fp = "unverified", "no signature (in-band _meta or approved manifest)", None
        approve_now = False
        if mode == "off":
            status, reason = "off", "verification is off for this upstream"
        elif before is not None and before.revoked:
            status, reason = "revoked", REVOKED_REASON
        elif signature is not None and not _by_manifest(info, trust, signature):
            status, reason, fp = self._signed_status(
                info,
                definition,
                signature,
                mode,
                trust.domain,
                trust.snapshot,
                trust.snap_error,
                before,
                approved_form,
                h,
            )
            approve_now = status == "verified"
        elif info.original_name in trust.manifest:
            status, reason, fp = check_manifest(
                trust.manifest[info.original_name],
                h,
                trust.snapshot,
                org_keys=self._org_keys,
                config=self._config,
            )
            approve_now = status == "verified"
        elif trust.manifest_error is not None:
            status, reason = "failed", trust.manifest_error
        elif mode in ("tofu", "warn") and before is not None and before.approved_hash not in (None, h):
            # an approved definition that changed: blocked under tofu, marked (not blocked) under warn
            status, reason = "drifted", drift_reason(before.approved_hash, h)
        elif mode == "tofu":
            status, reason = "pinned", "definition pinned on first use"
        return status, reason, fp, approve_now

    def _signed_status(
        self,
        info: ToolInfo,
        definition: dict[str, Any],
        signature: str,
        mode: str,
        domain: str | None,
        snapshot: KeySnapshot | None,
        snap_error: str | None,
        before: ToolRecord | None,
        approved_form: dict[str, Any],
        h: str,
    ) -> tuple[str, str | None, str | None]:
        """A signed definition: its signature, then whether ``_meta`` (which the signature does
        not cover) changed since the approval."""
        status, reason, fp = check_signature(
            info,
            definition,
            signature,
            mode,
            domain,
            snapshot,
            snap_error,
            pins=self.pins,
            config=self._config,
        )
        approved_meta = (
            before.approved_definition.get(META_KEY) if before and before.approved_definition else None
        )
        if (
            status == "verified"
            and before
            and before.approved_hash
            and not same_json(approved_meta, approved_form.get(META_KEY))
        ):
            # the signature does not cover _meta: a change there needs a person
            status, reason = "drifted", drift_reason(before.approved_hash, h) + " (_meta changed)"
        return status, reason, fp

    def _record(
        self,
        info: ToolInfo,
        mode: str,
        before: ToolRecord | None,
        approved_form: dict[str, Any],
        h: str,
        status: str,
        reason: str | None,
        fp: str | None,
        approve_now: bool,
        pending: list[tuple[Event, dict[str, Any]]],
    ) -> None:
        """The assessment kept in the tool state (pinned or approved when it says so) and the
        drift and status-change events for the audit log (queued in ``pending``)."""
        _before, after = self.state.observe(
            info.upstream,
            info.original_name,
            info.name,
            approved_form,
            h,
            status=status,
            reason=reason,
            key_fingerprint=fp,
            pin_if_new=(mode == "tofu" and status == "pinned") or approve_now,
        )
        if approve_now and after.approved_hash != h:
            self.state.approve(info.upstream, info.original_name, h, approved_form)
        if before is not None and before.current_hash != h:
            pending.append(
                (
                    Event.TOOL_DRIFT,
                    {
                        "tool": info.name,
                        "upstream": info.upstream,
                        "old_hash": before.current_hash,
                        "new_hash": h,
                        "status": status,
                        "mode": mode,
                    },
                )
            )
            _logger.warning("tool %s changed (%s -> %s): now %s", info.name, before.current_hash, h, status)
        if before is None or before.status != status:
            pending.append(
                (
                    Event.TOOL_VERIFICATION,
                    {
                        "tool": info.name,
                        "upstream": info.upstream,
                        "status": status,
                        "reason": reason,
                        "key": fp,
                        "hash": h,
                        "mode": mode,
                        "blocked": is_blocked(mode, status),
                    },
                )
            )


def _by_manifest(info: ToolInfo, trust: _UpstreamTrust, signature: str | None) -> bool:
    """Whether the upstream's approved manifest decides this tool: it has an entry, and no
    in-band signature can be checked instead (none, or no domain key for it: an organisation
    key never counts in-band, see gateway.verify.signatures)."""
    return info.original_name in trust.manifest and (signature is None or trust.domain is None)


def _with(
    info: ToolInfo, status: str, reason: str | None, fp: str | None, h: str | None, mode: str
) -> ToolInfo:
    return replace(
        info,
        verification=status,  # type: ignore[arg-type]
        verification_reason=reason,
        key_fingerprint=fp,
        definition_hash=h,
        verification_mode=mode,
    )
