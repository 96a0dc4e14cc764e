"""Fetching discovery documents over HTTPS with httpx: no redirects, size cap, timeout, TTL cache."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Protocol

import httpx

from ._discovery import (
    KeySnapshot,
    check_revocation_endpoint,
    load_discovery_text,
    parse_discovery,
    snapshot_from_documents,
    well_known_url,
)
from ._domain import normalize_domain
from ._errors import (
    DiscoveryFailed,
    DiscoveryInvalid,
    DiscoveryRedirect,
    DiscoveryTooLarge,
    InsecureTransport,
    SchemaPinError,
)

log = logging.getLogger("schemapin")

MAX_DISCOVERY_BYTES = 64 * 1024  # a discovery document is a PEM and a few fields: ~1 KiB


class KeyResolver(Protocol):
    """Anything that turns a domain into a :class:`KeySnapshot` (well-known, bundle, static)."""

    async def resolve(self, domain: str) -> KeySnapshot:
        """Return the domain's key snapshot or raise a ``SchemaPinError``."""
        ...


class WellKnownResolver:
    """Resolve ``https://<domain>/.well-known/schemapin.json`` (and its revocation endpoint).

    Args:
        timeout: seconds for each request (connect, read, whole).
        max_bytes: size cap of each response body.
        ttl: seconds a complete snapshot is cached; 0 disables caching. Snapshots whose
            revocation state is unavailable are never cached.
        allow_insecure_http: use ``http://`` (tests only). Logged as a warning.
        verify: TLS verification: ``True`` (system CAs), a CA bundle path or an ``SSLContext``.
        trust_env: honour proxy environment variables (off: discovery goes direct).
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        max_bytes: int = MAX_DISCOVERY_BYTES,
        ttl: float = 300.0,
        allow_insecure_http: bool = False,
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = False,
    ) -> None:
        if verify is False:
            raise ValueError("TLS verification cannot be turned off; pass a CA bundle instead")
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._insecure = allow_insecure_http
        self._verify = verify
        self._trust_env = trust_env
        self._cache: dict[str, tuple[float, KeySnapshot]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        if allow_insecure_http:
            log.warning("schemapin: INSECURE discovery over plain http:// is enabled (tests only)")

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            verify=self._verify,
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=False,
            trust_env=self._trust_env,
            headers={"Accept": "application/json"},
        )

    async def _get(self, client: httpx.AsyncClient, url: str) -> bytes:
        scheme = url.split(":", 1)[0].lower()
        if scheme != "https" and not (scheme == "http" and self._insecure):
            raise InsecureTransport(f"refusing non-HTTPS URL {url}", url=url)
        try:
            async with client.stream("GET", url) as resp:
                if resp.is_redirect or 300 <= resp.status_code < 400:
                    raise DiscoveryRedirect(
                        f"{url} answered {resp.status_code} redirect to {resp.headers.get('location')!r}; "
                        "redirects are not followed",
                        url=url,
                        status=resp.status_code,
                    )
                if resp.status_code != 200:
                    raise DiscoveryFailed(
                        f"{url} answered HTTP {resp.status_code}", url=url, status=resp.status_code
                    )
                declared = resp.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
                    raise DiscoveryTooLarge(
                        f"{url} declares {declared} bytes, over {self._max_bytes}", url=url
                    )
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype and not (ctype == "application/json" or ctype.endswith("+json")):
                    raise DiscoveryInvalid(f"{url} has content type {ctype!r}, not JSON", url=url)
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise DiscoveryTooLarge(f"{url} body is over {self._max_bytes} bytes", url=url)
                return bytes(body)
        except SchemaPinError:
            raise
        except httpx.HTTPError as e:
            raise DiscoveryFailed(f"cannot fetch {url}: {type(e).__name__}: {e}", url=url) from None
        except (OSError, ssl.SSLError) as e:
            raise DiscoveryFailed(f"cannot fetch {url}: {e}", url=url) from None

    async def fetch_url(self, url: str, *, domain: str) -> KeySnapshot:
        """Fetch the discovery document at ``url`` (and its revocation document) for ``domain``."""
        dom = normalize_domain(domain)
        async with self._client() as client:
            body = await self._get(client, url)
            discovery = load_discovery_text(body, max_bytes=self._max_bytes)
            doc = parse_discovery(discovery, domain=dom)
            revocation: Any = None
            error: str | None = None
            if doc.revocation_endpoint:
                try:
                    check_revocation_endpoint(
                        doc.revocation_endpoint, domain=dom, allow_insecure_http=self._insecure
                    )
                    rbody = await self._get(client, doc.revocation_endpoint)
                    revocation = load_discovery_text(rbody, max_bytes=self._max_bytes)
                except SchemaPinError as e:
                    # Not raised here: the verifier decides (strict refuses, tofu warns).
                    error = f"{e.code}: {e.message}"
                    log.warning("schemapin: revocation for %s unavailable: %s", dom, error)
        return snapshot_from_documents(
            discovery, domain=dom, revocation=revocation, revocation_error=error, source=url
        )

    async def resolve(self, domain: str) -> KeySnapshot:
        """The domain's snapshot from the TTL cache or one fresh fetch."""
        dom = normalize_domain(domain)
        lock = self._locks.setdefault(dom, asyncio.Lock())
        async with lock:  # one fetch per domain at a time; waiters reuse its result
            hit = self._cache.get(dom)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
            url = well_known_url(dom, scheme="http" if self._insecure else "https")
            snap = await self.fetch_url(url, domain=dom)
            if self._ttl > 0 and snap.revocation == "checked":
                self._cache[dom] = (time.monotonic() + self._ttl, snap)
            return snap

    def invalidate(self, domain: str | None = None) -> None:
        """Drop one domain (or every domain) from the cache."""
        if domain is None:
            self._cache.clear()
        else:
            self._cache.pop(normalize_domain(domain), None)


class StaticKeyResolver:
    """A fixed key for every domain (e.g. an organisation key that signs approved manifests)."""

    def __init__(self, snapshot: KeySnapshot) -> None:
        self._snapshot = snapshot

    async def resolve(self, domain: str) -> KeySnapshot:
        """The configured snapshot, whatever the domain."""
        normalize_domain(domain)
        return self._snapshot
