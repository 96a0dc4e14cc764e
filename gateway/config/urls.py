"""The two URL checks config sections share: who may answer a URL, and a proxy's address."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def proxy_address(url: str) -> tuple[str, int]:
    """The host and port of an ``http://host:port`` proxy; ``ValueError`` naming what is wrong
    for anything else (another scheme, a path, credentials: a Basic header would be sent in
    clear text to whoever answers the proxy's address)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"proxy {url!r} has no valid port") from None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise ValueError(f"proxy {url!r} is not http://host:port")
    if parts.username is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"proxy {url!r} must be http://host:port only (no credentials or path)")
    return parts.hostname, port


def https_or_loopback(url: str) -> bool:
    """https://, or http:// to this host (a loopback address or ``localhost``): a URL no one on
    the network path can read or answer in the peer's place."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False
