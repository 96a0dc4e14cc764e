"""``symbi import --undo``: the client's config as it was before the import, without losing
what the client wrote to it since.

Claude Code writes ``~/.claude.json`` all the time (history, projects, counters): putting back
the bytes from before the import would take all of that back with it. So the import records
the digest of what it wrote (``record_path``); the undo

- puts the original back byte for byte when the file is still what the import wrote;
- else restores only what the import changed (in each table it rewrote: the imported entries
  back, its ``symbi`` entry out), keeping everything else as it is now;
- refuses (``ConfigError`` naming the file) when that would overwrite a later change of those
  entries too, or when there is no record; ``force`` then puts the original back whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Literal

from gateway.custody import write_atomic
from gateway.errors import ConfigError
from gateway.onboard.apply import backup_path, record_path

Undone = Literal["restored", "merged"]


def undo_client(path: Path, force: bool = False) -> Undone | None:
    """Undo the import's rewrite of ``path``: "restored" (the original bytes), "merged" (only
    the import's entries put back), None when there is nothing to undo."""
    backup = backup_path(path)
    if not _ours(backup):
        return None
    record = _record(path)
    now = path.read_bytes() if path.exists() else None
    if force or now is None or (record is not None and _sha256(now) == record.get("sha256")):
        os.replace(backup, path)
        record_path(path).unlink(missing_ok=True)
        return "restored"
    if record is None:
        raise ConfigError(
            f"{path}: no record of what the import wrote, and the file may have changed since: "
            f"not undone (`symbi import --undo --force` puts {backup} back, losing later changes)"
        )
    merged = _merge(path, now, backup.read_bytes(), record)
    write_atomic(path, merged, mode=os.stat(path).st_mode & 0o777)
    backup.unlink()
    record_path(path).unlink(missing_ok=True)
    return "merged"


def _merge(path: Path, now: bytes, original: bytes, record: dict[str, Any]) -> bytes:
    """The file as it is now, with each rewritten table's imported entries back as they were
    and the import's ``symbi`` entry gone."""
    later = f"not undone (`symbi import --undo --force` puts {backup_path(path)} back, losing later changes)"
    try:
        doc, before = json.loads(now), json.loads(original)
    except (ValueError, RecursionError):
        raise ConfigError(f"{path}: not JSON any more: {later}") from None
    for table in record.get("tables") or []:
        section, names = table.get("section"), table.get("names")
        if not isinstance(section, list) or not isinstance(names, list):
            raise ConfigError(f"{record_path(path)}: not a record symbi wrote: {later}")
        current, old = _table(doc, section), _table(before, section) or {}
        if current is None:
            raise ConfigError(f"{path}: {'.'.join(map(str, section))} is gone since the import: {later}")
        for name in [*names, "symbi"]:
            if name not in old:
                current.pop(name, None)
            elif name != "symbi" and name in current and current[name] != old[name]:
                # the user (or the client) set this server again since: keep theirs, ask
                raise ConfigError(f"{path}: {name!r} changed since the import: {later}")
            else:
                current[name] = old[name]
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def _table(doc: Any, section: list[Any]) -> dict[str, Any] | None:
    for key in section:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return doc if isinstance(doc, dict) else None


def _ours(p: Path) -> bool:
    """Whether ``p`` exists; only a regular file of this user counts: a symlink or someone
    else's file put there would become the client's config (the servers it launches)."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(f"{p}: not a regular file of this user: not restored (look at it)")
    return True


def _record(path: Path) -> dict[str, Any] | None:
    p = record_path(path)
    if not _ours(p):
        return None
    try:
        doc = json.loads(p.read_bytes())
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
