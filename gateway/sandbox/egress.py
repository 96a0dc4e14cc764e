"""Egress-only network for sandboxed servers: the internet, never this host or private ranges.

A sandbox granted network does not share the host's network namespace (where it could
reach the gateway's own port and every loopback service). It runs in a network namespace of
its own (``ownnet.py``; not one shared by every networked sandbox, whose loopback services and
abstract sockets would be open to the others), joined to the host by a veth pair and NAT,
with packet filter rules that drop:

- everything addressed to the host itself (INPUT from the veth: 127.0.0.1 is not
  reachable from another namespace at all, and the host's other addresses, the Docker
  bridge's 172.17.0.1 included, are refused here);
- forwarded packets to loopback, private (RFC 1918: another sandbox's namespace too), carrier-grade NAT, link-local (cloud
  metadata), multicast and reserved ranges, unless the destination is on the allow-list.

With an allow-list (``sandbox.egress_allow``), only the listed hosts are reachable.
Setting up needs root (``ip``, ``iptables``); an unavailable set-up is a refusal
(``SandboxUnavailable``), never a fall back to the host's network.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence

from gateway.errors import SandboxUnavailable
from gateway.sandbox import ownnet

_logger = logging.getLogger("symbi.sandbox.egress")

HOST_IFS = f"{ownnet.IF_PREFIX}+"  # iptables' wildcard: every sandbox's host end
OWNNET = ownnet.__file__
CHAIN = "SYMBI-EGRESS"
LOCK_FILE = ownnet.LOCK_FILE
BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
_lock = threading.Lock()


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise SandboxUnavailable(f"egress network set-up failed: {' '.join(argv)}: {proc.stderr.strip()}")
    return proc


def _iptables_ensure(table: str, chain: str, rule: Sequence[str], *, insert: bool = False) -> None:
    """Add ``rule`` to ``chain`` unless it is there already (``-C`` checks)."""
    base = ["iptables", "-w", "-t", table]
    if _run(*base, "-C", chain, *rule, check=False).returncode == 0:
        return
    _run(*base, "-I" if insert else "-A", chain, *(["1"] if insert else []), *rule)


def _resolve(hosts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for host in hosts:
        try:
            ipaddress.ip_network(host, strict=False)
            out.append(host)
            continue
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET)
        except OSError as e:
            raise SandboxUnavailable(f"sandbox.egress_allow: cannot resolve {host!r}: {e}") from None
        out += sorted({str(i[4][0]) for i in infos})
    return out


def _chain_rules(allow: Sequence[str]) -> list[tuple[str, ...]]:
    """The filter chain's rules (``iptables -A CHAIN`` arguments), in order."""
    if allow:  # an allow-list: those hosts, nothing else
        accept = [
            ("-d", str(ipaddress.ip_network(ip, strict=False)), "-j", "ACCEPT") for ip in _resolve(allow)
        ]
        return [*accept, ("-j", "DROP")]
    return [*(("-d", net, "-j", "DROP") for net in BLOCKED), ("-j", "ACCEPT")]


def _current_rules() -> list[tuple[str, ...]]:
    listing = _run("iptables", "-w", "-S", CHAIN).stdout.splitlines()
    return [tuple(line.split()[2:]) for line in listing if line.startswith(f"-A {CHAIN} ")]


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """Gateways (and test runs) on one host set the namespace up one at a time."""
    with _lock, open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_egress(allow: Sequence[str] = ()) -> None:
    """Set up (once, idempotently) the host's side: forwarding, the filter chain and the rules
    that send every sandbox's veth (``symbi-e*``) through it, and the NAT."""
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            raise SandboxUnavailable(f"sandbox network needs {tool!r} (egress-only namespace); not installed")
    with _host_lock():
        # forwarding must be on for any egress (Docker turns it on too)
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            if f.read().strip() != "1":
                _run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        # the filter chain is rebuilt only when the allow-list changed: another gateway's
        # sandboxes may be using it, and a flushed chain filters nothing
        rules = _chain_rules(allow)
        if _run("iptables", "-w", "-N", CHAIN, check=False).returncode == 0 or _current_rules() != rules:
            _run("iptables", "-w", "-F", CHAIN)
            for rule in rules:
                _run("iptables", "-w", "-A", CHAIN, *rule)
        _iptables_ensure("filter", "INPUT", ["-i", HOST_IFS, "-j", "DROP"], insert=True)
        _iptables_ensure("filter", "FORWARD", ["-i", HOST_IFS, "-j", CHAIN], insert=True)
        _iptables_ensure(
            "filter",
            "FORWARD",
            ["-o", HOST_IFS, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            insert=True,
        )
        _iptables_ensure(
            "nat", "POSTROUTING", ["-s", str(ownnet.NET), "!", "-o", HOST_IFS, "-j", "MASQUERADE"]
        )


def in_egress_netns(argv: list[str], allow: Sequence[str] = ()) -> list[str]:
    """``argv`` run in an egress-only namespace of its own (``ownnet.py``: a sandbox's
    loopback and abstract sockets are its own, not every networked sandbox's)."""
    ensure_egress(allow)
    return [sys.executable, "-I", "-S", OWNNET, "--", *argv]
