"""Which upstream handed out which resource URI in a result or request the gateway relayed.

An upstream may hand a client a URI it does not list (a ``resource_link`` made per call,
``a://reports/8f3c?token=...``, or an embedded resource's URI), in a tool result, in a prompt's
messages, or as the contents of a read of another URI; or hand it to the client's model in its
own sampling request (``note_sampling``: before ``gateway.upstream.relay`` relays it, or a 2026
upstream's input-required result is asked of the client). An elicitation carries none in this
SDK (a form's message and schema, or a URL for the user's browser, not read through us).
Read through the gateway, that URI would otherwise go to whichever upstream's template matches
it: a hostile upstream's catch-all (``{+uri}``) would receive it, and any secret in it, and
answer for the other. So a hand-out is a claim, counted as a template match is
(``Catalog.resource_owner``): with one claimant the read goes to it, with several it is
refused as ambiguous.

The memory is bounded per upstream (oldest forgotten first, a URI handed out again is new
again), so one upstream's hand-outs never push out another's; each URI is kept as its digest,
so a long URI costs no more than a short one. It lives in ``LiveCatalog`` and every snapshot
sees it: a catalogue rebuild forgets nothing. It is also kept beyond the process (``shared``,
``gateway.state.handouts``): replicas share theirs in Redis, so a link handed out through one
is read through any; one gateway keeps its own in its data dir, so a restart forgets none.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from mcp.types import (
    CallToolResult,
    CreateMessageRequest,
    CreateMessageRequestParams,
    EmbeddedResource,
    GetPromptResult,
    InputRequiredResult,
    ReadResourceResult,
    ResourceLink,
)

# URIs remembered per upstream: at ~150 bytes each (a 16-byte digest in an ordered dict),
# about 1.5 MB for an upstream that hands out a new URI on every call
PER_UPSTREAM = 10_000
_LINKED = frozenset({"resource_link", "resource"})


def _digest(uri: str) -> bytes:
    # surrogatepass: a URI from parsed JSON may hold a lone surrogate; it is still one URI
    return hashlib.blake2b(uri.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class SharedHandOuts(Protocol):
    """Hand-outs kept beyond this process (``gateway.state.handouts``: Redis, the data dir)."""

    async def note(self, upstream: str, digests: Sequence[bytes]) -> None: ...

    async def claimants(self, digest: bytes, upstreams: Iterable[str]) -> set[str]: ...


def _sampled(params: CreateMessageRequestParams) -> Iterator[Any]:
    """A sampling request's content items: its messages' (one or a list each) and, inside
    each ``tool_result``, its content, where this SDK's sampling types carry links."""
    for message in params.messages:
        for block in message.content_as_list:
            if block.type == "tool_result":
                yield from block.content
            else:  # no link among these types now; noted if a later SDK allows one
                yield block


class HandedOut:
    """The URIs each upstream handed out in a relayed result or sampling request,
    ``per_upstream`` each at most; with ``shared`` also those noted before a restart, or by
    another replica."""

    def __init__(self, per_upstream: int = PER_UPSTREAM, shared: SharedHandOuts | None = None) -> None:
        self._per_upstream = per_upstream
        self._by_upstream: dict[str, collections.OrderedDict[bytes, None]] = {}
        self.shared = shared

    def note(self, upstream: str, uri: str) -> bytes:
        """``upstream`` handed out ``uri`` (now: it is its newest); the URI's digest."""
        key = _digest(uri)
        self._keep(upstream, key)
        return key

    def _keep(self, upstream: str, key: bytes) -> None:
        kept = self._by_upstream.get(upstream)
        if kept is None:
            kept = self._by_upstream[upstream] = collections.OrderedDict()
        if key in kept:
            kept.move_to_end(key)
            return
        kept[key] = None
        if len(kept) > self._per_upstream:
            kept.popitem(last=False)

    def note_result(self, upstream: str, result: Any, target: str | None = None) -> Sequence[bytes]:
        """Every URI ``upstream``'s result hands out: a tool result's or a prompt's
        ``resource_link`` items and embedded resources, a read's contents of a URI other than
        the one read (``target``, the call's), and those of a sampling request (``note_sampling``)
        or of each in a 2026 upstream's input-required result. Any kind of result, so the one
        place that relays them notes them all, with the one rule of which items are links; one
        attribute compare per content item without a link. The digests noted (for ``share``),
        empty for a result that hands out nothing."""
        items: Iterable[Any]
        noted: list[bytes] = []
        if isinstance(result, CallToolResult):  # first: the hot path, no frame of its own
            items = result.content
        elif isinstance(result, GetPromptResult):
            items = (m.content for m in result.messages)
        elif isinstance(result, ReadResourceResult):
            for contents in result.contents:
                if contents.uri != target:  # the URI read is routed already: no claim of its own
                    noted.append(self.note(upstream, contents.uri))
            return noted
        elif isinstance(result, CreateMessageRequestParams):
            items = _sampled(result)
        elif isinstance(result, InputRequiredResult):  # its questions go on to the client
            items = (
                item
                for request in (result.input_requests or {}).values()
                if isinstance(request, CreateMessageRequest)
                for item in _sampled(request.params)
            )
        else:
            return noted
        for item in items:
            if item.type in _LINKED:  # the one check an item without a link costs
                if isinstance(item, ResourceLink):
                    noted.append(self.note(upstream, item.uri))
                elif isinstance(item, EmbeddedResource):
                    noted.append(self.note(upstream, item.resource.uri))
        return noted

    def note_sampling(self, upstream: str, params: CreateMessageRequestParams) -> Sequence[bytes]:
        """Every URI ``upstream``'s ``sampling/createMessage`` request hands the client's model,
        which may read it through the gateway as it may a tool result's link: noted (then
        ``share``d) before the request is relayed (``gateway.upstream.relay``). The digests."""
        return self.note_result(upstream, params)

    async def share(self, upstream: str, digests: Sequence[bytes]) -> None:
        """What ``note_result`` noted, for every replica (before the result reaches the client:
        it may read the link through another); ``StateUnavailable`` when that cannot be done."""
        if self.shared is not None and digests:
            await self.shared.note(upstream, digests)

    async def recall(self, uri: str, upstreams: Iterable[str]) -> None:
        """Before a read of ``uri`` that no upstream lists: which of ``upstreams`` handed it out
        through any replica, noted here (``StateUnavailable`` when that cannot be known)."""
        if self.shared is None:
            return
        key = _digest(uri)
        for upstream in await self.shared.claimants(key, upstreams):
            self._keep(upstream, key)

    def claimants(self, uri: str) -> set[str]:
        """The upstreams that handed out ``uri`` (and have not forgotten it)."""
        if not self._by_upstream:
            return set()
        key = _digest(uri)
        return {up for up, kept in self._by_upstream.items() if key in kept}
