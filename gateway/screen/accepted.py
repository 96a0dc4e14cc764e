"""Screening findings a person read and accepted (``symbi tools approve --accept-screening``):
per tool, the definition hash they were accepted for. A changed definition is screened again
and needs a new accept."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.custody import write_atomic


class AcceptedFindings:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: int | None = None
        self._cache: dict[str, str] = {}

    def load(self) -> dict[str, str]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            self._cache = {str(k): str(v) for k, v in doc.get("accepted", {}).items()}
            self._mtime = mtime
        return dict(self._cache)

    def mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def accept(self, tool: str, definition_hash: str) -> None:
        current = self.load()
        current[tool] = definition_hash
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # a random O_EXCL name: a link planted at ".NAME.tmp-PID" was written through
        doc = json.dumps({"accepted": current}, indent=2, sort_keys=True)
        write_atomic(self.path, doc.encode())
