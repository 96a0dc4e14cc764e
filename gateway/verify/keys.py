"""Upstreams' discovered keys, and noticing when one changes on a running gateway.

A verdict on a signed tool depends on its upstream's key as discovery gave it: its
fingerprint, whether ``.well-known`` revokes it, whether revocation could be checked. Kept
verdicts (a list_changed re-assesses only new or redefined tools) would otherwise trust a key
its developer has since revoked, until a restart; so the gateway re-resolves every domain in
the background (``gateway.tasks.watch_keys``) and re-assesses when one moved.
"""

from __future__ import annotations

from typing import Any

import anyio

from gateway.config.model import Config
from schemapin import KeySnapshot, SchemaPinError

# a key as far as verdicts go (see key_state); None: the upstream has no domain key
KeyState = tuple[str, ...] | None


def key_state(snapshot: KeySnapshot | None, error: Exception | None) -> KeyState:
    """What a verdict depends on in a discovered key: its fingerprint, whether it is revoked and
    whether revocation could be checked; or that discovery failed (its error code, not the
    message, which may vary from one try to the next)."""
    if snapshot is None:
        return ("unresolved", str(getattr(error, "code", type(error).__name__)))
    return (snapshot.fingerprint, str(snapshot.is_revoked()), snapshot.revocation)


class UpstreamKeys:
    """Resolves upstreams' domains and remembers, per upstream, the key state its verdicts were
    made with (all of its tools at once) and the one its latest assessment saw."""

    def __init__(self, config: Config, resolver: Any) -> None:
        self.config = config
        self._resolver = resolver
        self._assessed: dict[str, KeyState] = {}
        self._seen: dict[str, KeyState] = {}

    async def resolve(self, upstream: str, *, complete: bool) -> tuple[KeySnapshot | None, str | None]:
        """``upstream``'s key snapshot, or why there is none (no domain or mode off: neither).
        ``complete``: every tool of the upstream is assessed with it."""
        srv = self.config.servers[upstream]
        if not srv.domain or self.config.verification_for(upstream) == "off":
            state: KeyState = None
            snapshot, error = None, None
        else:
            snapshot, failure = await self._fetch(srv.domain)
            state = key_state(snapshot, failure)
            error = None if failure is None else f"key discovery for {srv.domain} failed: {failure}"
        self._seen[upstream] = state
        if complete:
            self._assessed[upstream] = state
        return snapshot, error

    def moved(self, upstream: str) -> bool:
        """The latest assessment of ``upstream`` saw another key state than its verdicts were
        made with (after a partial, list_changed assessment: its kept verdicts are stale)."""
        return self._seen.get(upstream) != self._assessed.get(upstream)

    async def changed(self) -> list[str]:
        """The upstreams whose discovered key differs now from the one their verdicts were made
        with. Each domain is fetched afresh (its cached snapshot dropped first)."""
        moved = []
        for upstream, srv in list(self.config.servers.items()):
            if upstream not in self._assessed or not srv.domain:
                continue  # not assessed yet (not connected): its first assessment resolves
            if self.config.verification_for(upstream) == "off":
                continue
            invalidate = getattr(self._resolver, "invalidate", None)
            if invalidate is not None:
                invalidate(srv.domain)
            if key_state(*await self._fetch(srv.domain)) != self._assessed[upstream]:
                moved.append(upstream)
        return moved

    async def _fetch(self, domain: str) -> tuple[KeySnapshot | None, Exception | None]:
        """``domain``'s key snapshot, or why discovery failed (within the connection timeout)."""
        try:
            with anyio.fail_after(self.config.mcp.connection_timeout_s):
                return await self._resolver.resolve(domain), None
        except (SchemaPinError, TimeoutError) as e:
            return None, e
