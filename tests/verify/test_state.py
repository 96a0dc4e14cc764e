"""The tool state store (gateway/verify/state.py) shared by gateways on one data dir."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from gateway.verify.state import ToolStateStore


class _PauseBeforeInsert:
    """Wraps a store's connection: on the first INSERT, let ``other`` run, then go on. This is
    the interleaving of two gateways pinning the same new tool at once."""

    def __init__(self, db: sqlite3.Connection, other: threading.Thread) -> None:
        self._db, self._other = db, other

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.startswith("INSERT INTO tools") and not self._other.is_alive() and self._other.ident is None:
            self._other.start()
            time.sleep(0.5)  # the other is at its first statement now (or waiting for our lock)
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_two_gateways_pinning_one_new_tool_at_once_pin_it_once(tmp_path: Path) -> None:
    """The first definition seen is pinned; the other gateway sees that pin and its different
    definition as drift. Without one transaction around read-then-insert both read "new" and the
    second insert failed (sqlite3.IntegrityError: UNIQUE), which failed that gateway's catalogue."""
    path = tmp_path / "tools.db"
    first, second = ToolStateStore(path), ToolStateStore(path)
    results: dict[str, Any] = {}

    def observe(store: ToolStateStore, who: str, definition: dict[str, Any], h: str) -> None:
        try:
            results[who] = store.observe(
                "up",
                "t",
                "up__t",
                definition,
                h,
                status="ok",
                reason=None,
                key_fingerprint=None,
                pin_if_new=True,
            )
        except Exception as e:  # noqa: BLE001 - the assertion below names it
            results[who] = e

    other = threading.Thread(target=observe, args=(second, "second", {"d": 2}, "h2"))
    first._db = _PauseBeforeInsert(first._db, other)  # type: ignore[assignment]
    observe(first, "first", {"d": 1}, "h1")
    other.join(30)
    assert not isinstance(results["first"], Exception), results["first"]
    assert not isinstance(results["second"], Exception), results["second"]
    before, after = results["second"]
    assert before is not None and before.approved_hash == "h1"  # the first pin holds
    assert after.approved_hash == "h1" and after.current_hash == "h2"  # its own definition: drift
    first.close()
    second.close()
