"""An upstream's lists (tools, resources, templates, prompts), page by page and bounded.

Each list may hold at most ``mcp.max_listed_per_upstream`` items. Every item listed is assessed
(a state write and an audit event for each new tool) while the catalogue's rebuild holds every
other upstream's change, and a revocation, waiting: one hostile server listing 20,000 tools
(1.6 MB, within one page's size limit) held a revocation of another server's tool for 101 s. A
list over the limit is refused whole (fail closed: none of it is served, not the first N) and
reported once, naming the key, until the upstream lists no more than the limit again (once,
also when a broken log refused the record: it refuses every later one too).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mcp import ClientSession, types

from gateway.events import Event, EventSink, record_acted

_logger = logging.getLogger("symbi.upstream")

# cursor requests per list: an endless cursor stops here (its repeated names collide)
MAX_PAGES = 100


async def all_pages(
    method: Callable[..., Awaitable[Any]], attr: str, limit: int, max_pages: int = MAX_PAGES
) -> list[Any] | None:
    """Every item of a paginated list; None once it holds more than ``limit`` (the pages
    after are not asked for)."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(max_pages):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await method(params=params)
        items.extend(getattr(page, attr))
        if len(items) > limit:
            return None
        cursor = page.next_cursor
        if not cursor:
            break
    return items


@dataclass
class Listing:
    """What an upstream offers, as of its last refresh."""

    tools: list[types.Tool] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)


class BoundedLists:
    """One upstream's lists, each refused whole when it is over ``mcp.max_listed_per_upstream``."""

    def __init__(self, upstream: str, limit: int, events: EventSink) -> None:
        self._upstream = upstream
        self._limit = limit
        self._events = events
        self._oversized: set[str] = set()  # lists refused at their last fetch (reported once)

    async def fetch(self, method: Callable[..., Awaitable[Any]], attr: str) -> list[Any]:
        """All of the list ``attr`` (``tools``, ``resources``...), or nothing of it when too long."""
        items = await all_pages(method, attr, self._limit)
        if items is not None:
            if attr in self._oversized:
                self._oversized.discard(attr)
                _logger.warning("upstream %s: its %s are within the limit again", self._upstream, attr)
            return items
        if attr not in self._oversized:
            self._oversized.add(attr)
            reason = (
                f"listed more than mcp.max_listed_per_upstream ({self._limit}) {attr}: "
                f"none of its {attr} is served"
            )
            _logger.error("upstream %s %s", self._upstream, reason)
            # refused (a broken log): the list is refused all the same (raised, it left a
            # refresh's old list served, and failed a connect); not tried again at the next
            # fetch (``events.refused_for_good``): the spell is kept for its "within" line
            record_acted(
                self._events,
                Event.UPSTREAM_MISBEHAVED,
                {"upstream": self._upstream, "reason": reason, "list": attr, "limit": self._limit},
            )
        return []

    async def offered(self, session: ClientSession, old: Listing, kinds: set[str] | None) -> Listing:
        """What the server offers now; ``kinds`` (tools, prompts, resources) narrows it to the
        lists a list_changed named, keeping ``old``'s others (one request instead of four)."""
        caps = session.server_capabilities
        listing = (
            Listing() if kinds is None else Listing(old.tools, old.resources, old.templates, old.prompts)
        )
        if (kinds is None or "tools" in kinds) and (caps is None or caps.tools is not None):
            listing.tools = await self.fetch(session.list_tools, "tools")
        if (kinds is None or "resources" in kinds) and caps is not None and caps.resources is not None:
            listing.resources = await self.fetch(session.list_resources, "resources")
            listing.templates = await self.fetch(session.list_resource_templates, "resource_templates")
        if (kinds is None or "prompts" in kinds) and caps is not None and caps.prompts is not None:
            listing.prompts = await self.fetch(session.list_prompts, "prompts")
        return listing
