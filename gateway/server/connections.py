"""``http.max_connections``: how many connections the HTTP front holds open at once.

Nothing bounded them: uvicorn accepts every connection, and one without a request is closed
only by ``http.header_timeout_s`` (10 s) later. A client opening connections and sending nothing
held thousands at a time; at the open-file limit (4,096 here) the gateway could accept nothing
(a legitimate request was reset) and could open nothing either: the policy's reload thread died
on EMFILE, so policy changes stopped being picked up for the life of the process.

Past ``limit`` open connections, a new one takes the place of the one idle longest (no request
in progress: headers not complete, or a kept-alive connection between requests); with none
idle, of the oldest whose request is in progress but whose credential has not passed (a
request off the MCP endpoint and the admin API, or one still being authenticated). A request
whose credential passed (``trusted``: ``AuthGate``, an anonymous principal excepted) is never
cut; with every connection holding one, the new connection is answered 503 and closed. A
legitimate client is thus served whatever number of connections another holds without a
credential: a slow-body POST to the dashboard's login or to any unknown path counted as busy
until ``http.body_timeout_s``, and ``limit`` of them (one client) left every other caller
503 (session 41). At start
the open-file limit is raised to hold ``limit`` connections besides the gateway's own files
(``ensure_open_files``), or the gateway refuses to start, naming the key.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import sys
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_logger = logging.getLogger("symbi.http.connections")

CAP_SYS_RESOURCE = 24  # linux/capability.h

# the gateway's own descriptors besides its clients': upstream pipes, sandbox runs, stores,
# the audit log, listeners, Redis and PostgreSQL connections
FD_RESERVE = 1024

# the scope key of a request's ``trusted`` call (its protocol's; AuthGate calls it)
TRUST = "symbi.trust"

# the warnings (throttled: any caller causes them; gateway.server.lognoise)
CLOSED_IDLE = "open connections at http.max_connections (%d): closed the one idle longest"
CLOSED_UNTRUSTED = (
    "open connections at http.max_connections (%d), none idle: closed the oldest request without a credential"
)
NONE_IDLE = "open connections at http.max_connections (%d), none idle: refused"
REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: 34\r\n\r\ntoo many open connections: retry\r\n"
)


class OpenConnections:
    """The HTTP front's open connections: the idle ones by how long they have been idle, the
    ones whose request has not passed a credential by how long it has been in progress."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._idle: OrderedDict[HttpToolsProtocol, None] = OrderedDict()  # longest idle first
        self._pending: OrderedDict[HttpToolsProtocol, None] = OrderedDict()  # oldest first
        self._trusted: set[HttpToolsProtocol] = set()  # a request that passed, in progress

    def opened(self, conn: HttpToolsProtocol) -> bool:
        """Count ``conn`` (idle: no request yet); past the limit close the connection idle
        longest, or else the oldest untrusted request's. False when there is neither:
        ``conn`` is to be refused."""
        self.open += 1
        if self.open > self.limit and not self._make_room():
            _logger.warning(NONE_IDLE, self.limit)
            return False
        self._idle[conn] = None
        return True

    def _make_room(self) -> bool:
        """Close one connection for a new one: idle first, then untrusted in progress.
        O(1) a connection: each one looked at leaves its list."""
        while self._idle:
            other, _ = self._idle.popitem(last=False)
            if not _busy(other) and not other.transport.is_closing():
                _logger.warning(CLOSED_IDLE, self.limit)
                other.transport.close()
                return True
        while self._pending:
            other, _ = self._pending.popitem(last=False)
            if not other.transport.is_closing():
                _logger.warning(CLOSED_UNTRUSTED, self.limit)
                other.transport.close()
                return True
        return False

    def busy(self, conn: HttpToolsProtocol) -> None:
        """A request of ``conn`` is in progress: cut for another only until it is ``trusted``
        (one pipelined behind a trusted request is so until that one is answered)."""
        self._idle.pop(conn, None)
        if conn not in self._trusted:
            self._pending[conn] = None

    def trusted(self, conn: HttpToolsProtocol) -> None:
        """``conn``'s request passed a credential: never closed for another until answered."""
        if self._pending.pop(conn, False) is None:
            self._trusted.add(conn)

    def idle(self, conn: HttpToolsProtocol) -> None:
        """``conn``'s request was answered: idle from now (unless closing); a request
        pipelined behind it is untrusted until it passes."""
        self._trusted.discard(conn)
        if conn.transport.is_closing():
            self._pending.pop(conn, None)
        elif _busy(conn):
            self._pending[conn] = None
        else:
            self._pending.pop(conn, None)
            self._idle[conn] = None
            self._idle.move_to_end(conn)

    def closed(self, conn: HttpToolsProtocol) -> None:
        self.open -= 1
        self._idle.pop(conn, None)
        self._pending.pop(conn, None)
        self._trusted.discard(conn)


class ConnectionBounds:
    """The bound each listener's connections count against: ``http.max_connections`` for the
    TCP port, ``http.max_agent_connections`` for the hosted agents' Unix socket (one shared
    bound let a TCP flood of requests with credentials lock the agents out, and them it)."""

    def __init__(self, tcp: int, agents: int | None) -> None:
        self.tcp = OpenConnections(tcp)
        self.agents = OpenConnections(agents) if agents is not None else self.tcp

    def of(self, transport: asyncio.BaseTransport) -> OpenConnections:
        sock = transport.get_extra_info("socket")
        return self.agents if sock is not None and sock.family == socket.AF_UNIX else self.tcp


def _busy(conn: HttpToolsProtocol) -> bool:
    cycle = conn.cycle  # the latest request's (a pipelined one waiting included)
    return cycle is not None and not cycle.response_complete


def open_files_ceiling() -> int:
    """The most open files this process can have: the hard limit, or with CAP_SYS_RESOURCE
    (root outside most containers), which lets it raise that, the kernel's ``fs.nr_open``."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = sys.maxsize if hard == resource.RLIM_INFINITY else hard
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
        caps = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")), 16)
        if caps >> CAP_SYS_RESOURCE & 1:
            return max(hard, int(Path("/proc/sys/fs/nr_open").read_text(encoding="ascii")))
    except (OSError, ValueError, StopIteration):
        pass  # not Linux's /proc: the hard limit
    return hard


def ensure_open_files(limit: int, *, explicit: bool, besides: int = 0) -> int:
    """Raise this process's open-file limit to hold ``limit`` connections, ``besides`` more
    (the agents' socket's, ``http.max_agent_connections``) and ``FD_RESERVE`` files of its
    own; the bound to use. A default ``limit`` the machine cannot hold is lowered to what it
    can (warned): the gateway starts on any host.

    Raises:
        ConfigError: naming http.max_connections, when a value set in the config needs more
            open files than this process can have.
    """
    reserve = FD_RESERVE + besides
    need = limit + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return limit
    ceiling = open_files_ceiling()
    if ceiling < need:
        if explicit:
            raise ConfigError(
                f"http.max_connections = {limit} needs {need} open files (and {reserve} for "
                f"the gateway's own and http.max_agent_connections); the limit here is {ceiling}: "
                "lower http.max_connections or raise the open-file limit (ulimit -n)"
            )
        fitted = max(ceiling - reserve, ceiling // 2)
        _logger.warning(
            "http.max_connections lowered to %d from its default %d: this process can have %d "
            "open files (raise ulimit -n, or set the key)",
            fitted,
            limit,
            ceiling,
        )
        limit, need = fitted, ceiling
    hard = hard if hard == resource.RLIM_INFINITY else max(hard, need)
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return limit
