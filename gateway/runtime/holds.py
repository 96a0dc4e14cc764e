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
  that cannot be written yet stays in force here and is retried.

At most ``HOLDS_MAX`` principals are held: past it a new suspension is refused (``HoldsFull``;
an agent's own suspension stands, logged), never made by dropping the oldest (that
un-suspended it). An operator's clear is written to Redis before it takes effect anywhere, and
is refused (``StateUnavailable``) when Redis does not answer.
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

from gateway.errors import HoldsFull, StateUnavailable
from gateway.sqlitetx import open_durable, write_transaction
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
        self._lock = threading.Lock()
        self._db = open_durable(
            path,
            "CREATE TABLE IF NOT EXISTS held (principal TEXT PRIMARY KEY, reason TEXT NOT NULL,"
            " agent TEXT NOT NULL, by TEXT NOT NULL, at REAL NOT NULL)",
        )

    def load(self, limit: int) -> list[Hold]:
        """The newest ``limit`` holds, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT principal, reason, agent, by, at FROM held ORDER BY at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Hold(*row) for row in reversed(rows)]

    def add(self, hold: Hold) -> None:
        with self._lock, write_transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO held (principal, reason, agent, by, at) VALUES (?,?,?,?,?)",
                (hold.principal, hold.reason, hold.agent, hold.by, hold.at),
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
Unshared = Callable[[Hold], None]  # Redis refused this hold (``limit`` held there): here only


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
        self.on_unshared: list[Unshared] = []
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

    def holding(self, principal: str) -> bool:
        """Whether ``principal`` is held in this process's view (never refused: an operator's
        check, not a caller's admission)."""
        return principal in self._view

    def all(self) -> list[Hold]:
        return list(self._view.values())

    def __len__(self) -> int:
        return len(self._view)

    @property
    def unshared(self) -> set[str]:
        """Of ``_local`` (held here only), those Redis refused (``limit`` held there)."""
        return {p for p in self._local if not held_here_only(p)}

    def bound_of(self, principal: str) -> int:
        """The bound that refused ``principal``'s suspension: Redis's (``HoldBoard.limit``) for
        one held in this process only (``unshared``), this process's ``limit`` otherwise."""
        if principal in self.unshared and self.board is not None:
            return self.board.limit
        return self.limit

    # -- changes --------------------------------------------------------------------------------

    def add(self, hold: Hold) -> bool:
        """Hold ``hold.principal`` unless it is held already (the first reason stays): new?"""
        if hold.principal in self._view:
            return False
        if len(self._view) >= self.limit:  # never evicted: that un-suspended the oldest
            raise HoldsFull(
                f"{self.limit} principals are suspended already: {hold.principal} could not be held",
                reasons=["clear suspensions that are no longer needed (symbi agents suspended)"],
            )
        if self.board is not None and held_here_only(hold.principal):
            self._local[hold.principal] = hold
        elif self.board is not None:
            self._changes.append(_Change(hold.principal, hold))
            self._wake()
        self._view[hold.principal] = hold  # in force first: a failed write must not undo it
        if self.board is None and self._file is not None and not held_here_only(hold.principal):
            try:
                self._file.add(hold)
            except sqlite3.Error:
                _logger.exception(
                    "principal %s: suspension in force here, but not written to the data dir "
                    "(a restart would forget it)",
                    hold.principal,
                )
        return True

    def drop(self, principal: str) -> Hold | None:
        """Clear ``principal``'s hold here at once (the runtime's resume of an agent of it): the
        hold it had here, if any. With a board the clear is queued for the background task when
        the hold is in force here (an operator's clear goes through ``clear``: Redis first)."""
        queued = next((c for c in reversed(self._changes) if c.principal == principal), None)
        cleared = queued is not None and queued.hold is None  # written first (``clear(here=False)``)
        if (
            self.board is not None
            and principal in self._view
            and not cleared
            and not held_here_only(principal)
        ):
            self._changes.append(_Change(principal, None))
            self._wake()
        return self._forget(principal)

    async def clear(self, principal: str, timeout_s: float, *, here: bool = True) -> Hold | None:
        """An operator clears ``principal``'s hold: with a board on Redis first (even when this
        process's view has no hold: it may be behind), then here (``here``; else the runtime's
        resume, called next, drops it); the hold it had here, if any.

        ``StateUnavailable`` when Redis does not take it within ``timeout_s``: nothing is
        cleared anywhere. Queued in memory, as a suspension is, a clear was lost if the process
        stopped before Redis came back, while the operator had been told it was done (202), and
        this process let the principal in while every other replica refused it (session 41)."""
        board = self.board
        if board is not None and not held_here_only(principal):
            # a hold of it still queued here would be written after the clear, and win: it goes
            # (put back if the clear fails); one being written now is older than the clear
            queued = [c for c in self._changes if c.principal == principal and c.version is None]
            self._changes = [c for c in self._changes if c not in queued]
            try:
                with anyio.fail_after(timeout_s):
                    _, version = await board.clear(principal)
            except (TimeoutError, *_REDIS_ERRORS) as e:
                self._changes[:0] = queued
                raise StateUnavailable(
                    f"principal {principal}'s suspension could not be cleared on the shared state (Redis)",
                    reasons=[f"nothing was cleared, here or elsewhere ({type(e).__name__}); retry"],
                ) from e
            self._changes.append(_Change(principal, None, version))  # an older read: not held again
        return self._forget(principal) if here else self._view.get(principal)

    def _forget(self, principal: str) -> Hold | None:
        """``principal``'s hold out of this process's view (and its data dir file)."""
        hold = self._view.pop(principal, None)
        self._local.pop(principal, None)
        if (
            self.board is None
            and self._file is not None
            and hold is not None
            and not held_here_only(principal)
        ):
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
                except Exception:  # what Redis holds (text where the version goes) is no fault here
                    # ended the task, and the gateway with it (session 42): the mirror goes
                    # unconfirmed instead, session agents refused (fail closed) until it reads
                    _logger.exception("the suspended principals could not be read from the shared state")
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
            except Exception:  # never the gateway's end: the renewal's poll reads the changes
                # (not redundant with ``_redis_only``: the pub/sub's close and ``wake`` are outside it)
                _logger.exception("the suspended principals' wake-up channel failed")
            await anyio.sleep(RENEW_S)

    async def _sync(self, board: HoldBoard) -> None:
        started = time.monotonic()
        for change in list(self._changes):
            if change.version is not None:
                continue
            if change.hold is not None:
                h = change.hold
                doc = {"reason": h.reason, "agent": h.agent, "by": h.by, "at": h.at}
                new, change.version = await board.hold(h.principal, doc, h.at)
                if new is None:  # Redis holds ``limit`` principals: in force here only
                    self._local[h.principal] = h  # unshared: the operator is told (507)
                    _logger.error(
                        "%d principals are suspended on the shared state: %s's suspension is in "
                        "force in this process only; clear suspensions no longer needed",
                        board.limit,
                        h.principal,
                    )
                    self._tell_unshared(h)
            else:
                _, change.version = await board.clear(change.principal)
        if self._written is not None and not self.unwritten:
            self._written.set()
            self._written = None
        version = await board.version()
        if version != self._version:
            self._apply(*await board.snapshot())
        self.confirmed = started  # what was read was read after this

    def _tell_unshared(self, hold: Hold) -> None:
        """``on_unshared``'s hooks (the audit record, ``symbi status``). One that raises (the
        audit log broken with ``on_failure = "deny"``: ``AuditError``) is logged: it ended this
        task before, and with it every write and read of the holds here (session 42)."""
        for hook in self.on_unshared:
            try:
                hook(hold)
            except Exception:
                _logger.exception("telling that %s is held in this process only failed", hold.principal)

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
