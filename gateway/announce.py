"""Who hears about a catalogue change: handshake-era client connections and 2026-era listen
streams are told of the lists (and resources) that changed *for their principal*, asking the
policy only about the entries that changed."""

from __future__ import annotations

import contextlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from gateway.catalog import Catalog, CatalogTool, LiveCatalog
from gateway.context import Principal
from gateway.errors import CatalogError, ResourceAmbiguous
from gateway.events import Event, EventSink, record_acted
from gateway.listen import ListenHub
from gateway.upstream.session import Upstream

_logger = logging.getLogger("symbi.gateway")


class Announcer:
    """Pushes list_changed and resources/updated to whoever may see the change.

    It keeps the handshake-era client connections and who opened them (``remember``; weak:
    closed ones go away); ``visible`` and ``allowed_targets`` are the gateway's policy
    filters for listings and prompt/resource targets.
    """

    def __init__(
        self,
        listen: ListenHub,
        events: EventSink,
        live: LiveCatalog,
        visible: Callable[[Principal, list[CatalogTool]], Awaitable[list[CatalogTool]]],
        allowed_targets: Callable[[Principal, str, list[tuple[str, str]]], Awaitable[set[str]]],
    ) -> None:
        self._downstream: weakref.WeakKeyDictionary[Any, Principal] = weakref.WeakKeyDictionary()
        self.listen = listen
        self.events = events
        self._live = live
        self._visible = visible
        self._allowed_targets = allowed_targets

    @property
    def connections(self) -> int:
        """Handshake-era client connections remembered."""
        return len(self._downstream)

    def remember(self, conn: Any, who: Callable[[], Principal]) -> None:
        """Keep a handshake-era connection (and who opened it) for pushed notifications."""
        if conn in self._downstream:
            return
        if conn.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return  # 2026-era clients hear about changes through subscriptions/listen (self.listen)
        with contextlib.suppress(Exception):  # not authenticated: nothing to tell it
            self._downstream[conn] = who()

    async def announce(self, old: Catalog, new: Catalog, since: float | None = None) -> None:
        """Tell every open client connection and listen stream about the lists that changed
        *for its principal* (a change to a tool it cannot see is not its business)."""
        kinds = _changed_kinds(old, new)
        if not kinds:
            return
        principals = {p.qualified: p for p in self._downstream.values()} | self.listen.principals()
        if not principals:
            return  # nobody to tell (and nothing relayed to put on the record)
        told: dict[str, set[str]] = {}
        for pid, principal in principals.items():
            try:
                told[pid] = await self._changes_seen_by(principal, old, new, kinds)
            except Exception:
                _logger.warning(
                    "list_changed for %s not announced: visibility check failed", pid, exc_info=True
                )
        for conn, principal in list(self._downstream.items()):
            for kind in sorted(told.get(principal.qualified, ())):
                with contextlib.suppress(Exception):
                    await conn.outbound.notify(f"notifications/{kind}/list_changed", None)
        for kind, event in (
            ("tools", ToolsListChanged()),
            ("prompts", PromptsListChanged()),
            ("resources", ResourcesListChanged()),
        ):
            if kind in kinds:
                self.listen.push(event, to=[pid for pid, seen in told.items() if kind in seen])
        # after the catalogue is in force: a log refusing it must not end the refresh's task
        record_acted(
            self.events,
            Event.NOTIFY_LIST_CHANGED,
            {
                "kinds": sorted(kinds),
                "told": sorted(pid for pid, seen in told.items() if seen),
                "not_told": sorted(pid for pid in principals if not told.get(pid)),
                # from the upstream's notice to the pushes queued (catalogue refresh included)
                "after_ms": round((anyio.current_time() - since) * 1000, 1) if since is not None else None,
            },
        )

    async def _changes_seen_by(
        self, principal: Principal, old: Catalog, new: Catalog, kinds: set[str]
    ) -> set[str]:
        """Which of ``kinds`` changed in what ``principal`` may see (the policy's listing rule),
        asking the policy only about the entries that changed."""
        seen: set[str] = set()
        if "tools" in kinds:
            before, after = _tool_sig(old), _tool_sig(new)
            changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
            for cat in (old, new):
                entries = [e for n, e in cat.tools.items() if n in changed and not e.info.blocked]
                if entries and await self._visible(principal, entries):
                    seen.add("tools")
                    break
        for kind, action in (("prompts", "prompts/get"), ("resources", "resources/read")):
            if kind not in kinds:
                continue
            changed_pairs = _changed_targets(old, new, kind)
            if changed_pairs and await self._allowed_targets(principal, action, changed_pairs):
                seen.add(kind)
        return seen

    async def resource_updated(self, up: Upstream, uri: str) -> None:
        """An upstream's resource changed: tell the connections and listen streams whose
        principal may read it (handshake-era connections only if they subscribed upstream)."""
        try:
            owner = self._live.snapshot.subscription_owner(uri)
        except ResourceAmbiguous:
            return  # claimed by several upstreams: refused, so no one's updates are passed on
        except CatalogError:
            owner = up.name
        if owner != up.name:
            return  # an upstream speaking for a URI another one owns
        principals = {p.qualified: p for p in self._downstream.values()} | self.listen.principals()
        may: set[str] = set()
        for pid, principal in principals.items():
            with contextlib.suppress(Exception):  # unknown = not told
                if uri in await self._allowed_targets(principal, "resources/read", [(uri, owner)]):
                    may.add(pid)
        for conn, principal in list(self._downstream.items()):
            if principal.qualified in may:
                with contextlib.suppress(Exception):
                    await conn.outbound.notify("notifications/resources/updated", {"uri": uri})
        self.listen.push(ResourceUpdated(uri=uri), to=may)
        if may:
            record_acted(  # from an upstream's notice (a background task): not to end it
                self.events,
                Event.NOTIFY_RESOURCE_UPDATED,
                {"upstream": up.name, "uri": uri, "told": sorted(may)},
            )


def _changed_targets(old: Catalog, new: Catalog, kind: str) -> list[tuple[str, str]]:
    """(name or URI, upstream) of the prompts or resources added, removed or redefined."""
    before: dict[str, tuple[str, object]]
    after: dict[str, tuple[str, object]]
    if kind == "prompts":
        before = {n: (p.upstream, p.prompt) for n, p in old.prompts.items()}
        after = {n: (p.upstream, p.prompt) for n, p in new.prompts.items()}
    else:
        before = {u: (up, r) for u, (up, r) in old.resources.items()}
        after = {u: (up, r) for u, (up, r) in new.resources.items()}
    changed = {n for n in before.keys() | after.keys() if before.get(n) != after.get(n)}
    return sorted({(n, side[n][0]) for side in (before, after) for n in changed if n in side})


def _changed_kinds(old: Catalog, new: Catalog) -> set[str]:
    kinds = set()
    if _tool_sig(old) != _tool_sig(new):
        kinds.add("tools")
    if {n: p.prompt for n, p in old.prompts.items()} != {n: p.prompt for n, p in new.prompts.items()}:
        kinds.add("prompts")
    if {u: r for u, (_, r) in old.resources.items()} != {u: r for u, (_, r) in new.resources.items()}:
        kinds.add("resources")
    return kinds


def _tool_sig(c: Catalog) -> dict[str, Any]:
    return {
        n: (
            t.info.definition_hash or json.dumps(t.info.definition, sort_keys=True, default=str),
            t.info.verification,
        )
        for n, t in c.tools.items()
    }
