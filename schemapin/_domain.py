"""Domain names as pin keys and discovery hosts: one spelling per domain."""

from __future__ import annotations

import ipaddress
import re

import idna

from ._errors import InvalidDomain

_PORT_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::(?P<port>[0-9]{1,5}))?$")


def normalize_domain(domain: str) -> str:
    """Lowercase, strip one trailing dot, IDNA (UTS #46) encode; keep an explicit ``:port``.

    ``Bücher.Example.`` and ``xn--bcher-kva.example`` normalise to the same string, so a pin
    made under one spelling is found under the other. IP literals are accepted (loopback test
    servers use them). Anything with a scheme, path, user info or whitespace is refused.
    """
    if not isinstance(domain, str) or not domain or len(domain) > 260:
        raise InvalidDomain(f"invalid domain {domain!r}")
    if any(c in domain for c in "/\\@?#% \t\r\n") or "://" in domain:
        raise InvalidDomain(f"invalid domain {domain!r}: give a bare host name", domain=domain)
    m = _PORT_RE.match(domain)
    if not m:
        raise InvalidDomain(f"invalid domain {domain!r}", domain=domain)
    host, port = m.group("host"), m.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise InvalidDomain(f"invalid port in {domain!r}", domain=domain)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidDomain(f"invalid IPv6 literal in {domain!r}", domain=domain) from None
        host = host.lower()
    else:
        host = host.removesuffix(".")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            try:
                host = idna.encode(host, uts46=True).decode("ascii")
            except idna.IDNAError as e:
                raise InvalidDomain(f"invalid domain {domain!r}: {e}", domain=domain) from None
    return f"{host}:{int(port)}" if port is not None else host
