"""Suspended principals: a session agent's suspension is its principal's.

A session agent is one MCP session of a principal (an API key, a JWT subject). Suspended (a
budget breach, the policy's ``suspend_agent``, ``suspend_after_denials``, an operator), the
agent was the session's only: the same key's next session, or a stateless client declaring
another client name, got a fresh agent, so a suspended caller escaped by reconnecting. Now
the suspension is also recorded for the agent's qualified principal (a *hold*), and every
session agent of a held principal is refused (``AgentRuntime.begin``: it is suspended at its
next call, with the hold's reason and how to clear it), in every session and, with
``[state] redis_url``, on every replica. Hosted agents keep their own runs' lifecycle.

An operator clears it: ``symbi agents resume AGENT`` (any of the principal's session agents)
or ``symbi agents resume --principal P`` (``POST /api/principals/resume``); either clears the
hold and resumes the principal's suspended session agents, here and on the other replicas
(each resumes its own when it sees the hold gone). Both are on the audit record.

Where holds are kept:

- one gateway: in memory and in the data dir (``principals-suspended.db``), so a restart keeps
  them; a ``stdio:`` principal's in memory only (a ``symbi mcp`` process is its one session,
  and its principal is whoever runs it);
- ``[state] redis_url``: on Redis (``gateway.state.holdboard``), mirrored here. A change made
  here is in the mirror at once and written by the background task (``run``); others' changes
  arrive by pub/sub at once, or at the next renewal (``RENEW_S``). Fail closed: while the
  mirror has not been confirmed against Redis for ``STALE_S`` (Redis unreachable, or not read
  yet after a start), session agents' calls are refused (``StateUnavailable``); a suspension
  that cannot be written yet stays in force here and is retried; so is a clear (the other
  replicas keep refusing until it is written, never the other way round).

At most ``HOLDS_MAX`` principals are held (the oldest go first, logged).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from gateway.custody import PRIVATE_DIR
from gateway.errors import StateUnavailable
from gateway.sqlitetx import write_transaction
from gateway.state.leases import LEASE_TTL_MS, RENEW_S, RETRY_S

if TYPE_CHECKING:
    from gateway.state.holdboard import HoldBoard

_logger = logging.getLogger("symbi.runtime.holds")
_REDIS_ERRORS = (RedisError, OSError)

HOLDS_MAX = 10_000
STALE_S = LEASE_TTL_MS / 1000  # the mirror not confirmed for this long: session agents refused
REASON_MAX = 500


def held_here_only(principal: str) -> bool:
    """A principal whose hold stays in this process (not on disk, not shared): ``stdio:``."""
    return principal.startswith("stdio:")


@dataclass(frozen=True)
class Hold:
    """One principal's suspension."""

    principal: str  # qualified: key:alice, jwt:<issuer>#alice
    reason: str
    agent: str = ""  # the agent whose suspension it came from ("" : an operator's own)
    by: str = ""  # the operator who suspended the principal ("" : the runtime)
    at: float = 0.0  # epoch s

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, principal: str, doc: dict[str, Any]) -> Hold:
        def text(k: str) -> str:
            v = doc.get(k)
            return v[:REASON_MAX] if isinstance(v, str) else ""

        at = doc.get("at")
        when = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
        return cls(principal, text("reason") or "suspended", text("agent"), text("by"), when)


class HoldFile:
    """The data dir's SQLite file of holds (one gateway without Redis): kept across restarts."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous = FULL")  # an operator's decision: on disk when answered
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS held (principal TEXT PRIMARY KEY, reason TEXT NOT NULL,"
            " agent TEXT NOT NULL, by TEXT NOT NULL, at REAL NOT NULL)"
        )

    def load(self, limit: int) -> list[Hold]:
        """The newest ``limit`` holds, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT principal, reason, agent, by, at FROM held ORDER BY at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Hold(*row) for row in reversed(rows)]

    def add(self, hold: Hold, limit: int) -> None:
        with self._lock, write_transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO held (principal, reason, agent, by, at) VALUES (?,?,?,?,?)",
                (hold.principal, hold.reason, hold.agent, hold.by, hold.at),
            )
            self._db.execute(
                "DELETE FROM held WHERE rowid NOT IN (SELECT rowid FROM held ORDER BY at DESC, rowid DESC LIMIT ?)",
                (limit,),
            )

    def remove(self, principal: str) -> None:
        with self._lock, write_transaction(self._db):
            self._db.execute("DELETE FROM held WHERE principal = ?", (principal,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class _Change:
    """A change made here, not yet read back from Redis: ``hold`` (None: a clear), and the
    version Redis gave it once written (None: not written yet)."""

    principal: str
    hold: Hold | None
    version: int | None = None


Released = Callable[[str, str], None]  # (principal, why): another process cleared its hold


class PrincipalHolds:
    """The held principals this process enforces (``get``), and how they are kept."""

    def __init__(self, *, file: HoldFile | None = None, limit: int = HOLDS_MAX) -> None:
        self.limit = limit
        self._file = file
        self._view: OrderedDict[str, Hold] = OrderedDict()  # what is enforced, oldest first
        if file is not None:
            for hold in file.load(limit):
                self._view[hold.principal] = hold
        self.board: HoldBoard | None = None
        self._shared: dict[str, Hold] = {}  # as last read from Redis
        self._version = -1  # of ``_shared`` (-1: never read)
        self._changes: list[_Change] = []  # made here, not yet in ``_shared``
        self._local: dict[str, Hold] = {}  # held here only (``held_here_only``), with a board
        self.confirmed: float | None = None  # monotonic: the mirror matched Redis then
        self.on_released: list[Released] = []
        self._poke: anyio.Event | None = None
        self._written: anyio.Event | None = None

    # -- what the runtime asks on every call --------------------------------------------------

    def get(self, principal: str) -> Hold | None:
        """``principal``'s hold; ``StateUnavailable`` when shared and not confirmed lately."""
        if self.board is not None and not held_here_only(principal):
            seen = self.confirmed
            if seen is None or time.monotonic() - seen > STALE_S:
                raise StateUnavailable(
                    "the suspended principals cannot be read from the shared state (Redis)"
                    + (" yet" if seen is None else f" for {time.monotonic() - seen:.0f} s"),
                    reasons=["calls of session agents are refused until they can; retry"],
                )
        return self._view.get(principal) if self._view else None

    def all(self) -> list[Hold]:
        return list(self._view.values())

    # -- changes --------------------------------------------------------------------------------

    def add(self, hold: Hold) -> bool:
        """Hold ``hold.principal`` unless it is held already (the first reason stays): new?"""
        if hold.principal in self._view:
            return False
        if self.board is not None and held_here_only(hold.principal):
            self._local[hold.principal] = hold
        elif self.board is not None:
            self._changes.append(_Change(hold.principal, hold))
            self._wake()
        self._view[hold.principal] = hold  # in force first: a failed write must not undo it
        if self.board is None and self._file is not None and not held_here_only(hold.principal):
            try:
                self._file.add(hold, self.limit)
            except sqlite3.Error:
                _logger.exception(
                    "principal %s: suspension in force here, but not written to the data dir "
                    "(a restart would forget it)",
                    hold.principal,
                )
        while len(self._view) > self.limit:
            old, _ = self._view.popitem(last=False)
            self._local.pop(old, None)
            _logger.warning("more than %d suspended principals: %s's suspension was dropped", self.limit, old)
        return True

    def drop(self, principal: str) -> Hold | None:
        """Clear ``principal``'s hold (here at once; on Redis by the background task): the hold
        it had here, if any. With a board the clear is written even when no hold was seen here
        (this process's view may be behind)."""
        hold = self._view.pop(principal, None)
        if self.board is not None and held_here_only(principal):
            self._local.pop(principal, None)
        elif self.board is not None:
            self._changes.append(_Change(principal, None))
            self._wake()
        elif self._file is not None and hold is not None and not held_here_only(principal):
            self._file.remove(principal)
        return hold

    @property
    def unwritten(self) -> int:
        """Changes made here that Redis does not have yet."""
        return sum(1 for c in self._changes if c.version is None)

    async def flush(self, timeout_s: float) -> bool:
        """Wait (up to ``timeout_s``) until every change made here is on Redis: whether it is."""
        if self.board is None:
            return True
        with anyio.move_on_after(timeout_s):
            while self.unwritten:
                self._wake()
                if self._written is None:
                    self._written = anyio.Event()
                await self._written.wait()
        return not self.unwritten

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    # -- the shared mirror (``[state] redis_url``) --------------------------------------------

    def _wake(self) -> None:
        if self._poke is not None:
            self._poke.set()

    async def run(self) -> None:
        """The background task: write the changes made here, read the others' (when the version
        moved: at once on a wake-up, else every ``RENEW_S``), confirm the mirror."""
        board = self.board
        assert board is not None
        self._poke = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen, board)
            while True:
                wait = RENEW_S
                try:
                    await self._sync(board)
                except _REDIS_ERRORS as e:
                    _logger.warning("the suspended principals could not be written or read: %s", e)
                    wait = RETRY_S
                with anyio.move_on_after(wait):
                    await self._poke.wait()
                self._poke = anyio.Event()

    async def _listen(self, board: HoldBoard) -> None:
        while True:
            try:
                await board.wakeups(self._wake)
            except _REDIS_ERRORS as e:
                _logger.debug("the suspended principals' wake-up channel was lost: %s", e)
            await anyio.sleep(RENEW_S)

    async def _sync(self, board: HoldBoard) -> None:
        started = time.monotonic()
        for change in list(self._changes):
            if change.version is not None:
                continue
            if change.hold is not None:
                h = change.hold
                doc = {"reason": h.reason, "agent": h.agent, "by": h.by, "at": h.at}
                _, change.version = await board.hold(h.principal, doc, h.at)
            else:
                _, change.version = await board.clear(change.principal)
        if self._written is not None and not self.unwritten:
            self._written.set()
            self._written = None
        version = await board.version()
        if version != self._version:
            self._apply(*await board.snapshot())
        self.confirmed = started  # what was read was read after this

    def _apply(self, version: int, docs: dict[str, dict[str, Any]]) -> None:
        """Redis's holds at ``version``, with the changes made here since laid over them; the
        principals whose hold went (another process cleared it) are released here."""
        if version < self._version:
            return  # older than what this process already saw (never from one task; kept safe)
        before = set(self._view)
        self._shared = {p: Hold.from_doc(p, d) for p, d in docs.items()}
        self._version = version
        self._changes = [c for c in self._changes if c.version is None or c.version > version]
        view: dict[str, Hold] = dict(self._shared)
        for change in self._changes:
            if change.hold is not None:
                view.setdefault(change.principal, change.hold)
            else:
                view.pop(change.principal, None)
        view.update(self._local)
        self._view = OrderedDict(sorted(view.items(), key=lambda kv: kv[1].at))
        for principal in before - set(self._view):
            for hook in self.on_released:
                try:
                    hook(principal, "its suspension was cleared on the shared state")
                except Exception:
                    _logger.exception("releasing %s failed", principal)
