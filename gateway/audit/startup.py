"""Opening an audit log: the writer's lock, the signing key the log's head expects, and the
checks that refuse a log that was truncated, replaced, or is signed by an unpinned key."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit import keys as keyfiles
from gateway.audit import store
from gateway.audit.record import ROTATION_EVENT, key_id_of, public_pem
from gateway.errors import AuditError, AuditLogBusy

_logger = logging.getLogger("symbi.audit")


def expected_key_id(last: Any) -> str | None:
    """The key id that signs after the log's last record (a rotation names the next key)."""
    if last is None:
        return None
    if last.type == ROTATION_EVENT:
        return str(last.details.get("new_key_id"))
    return str(last.key_id)


def load_key(key_path: Path, log_path: Path, expected: str | None) -> Ed25519PrivateKey:
    """The key the log's head says signs next: the key file, or a rotation's pending key.

    A pending key is never deleted here: after a rotation cut short, chains that already
    recorded the hand-over sign with it, the others with the old key, until
    ``symbi audit rotate-key`` is run again and completes the rotation.
    """
    if expected is None:
        return keyfiles.load_or_create_key(key_path)
    pending = keyfiles.pending_key_path(key_path)
    found = []
    for candidate in (key_path, pending):
        if candidate.exists():
            key = keyfiles.load_private_key(candidate)
            if key_id_of(key.public_key()) == expected:
                if candidate == key_path and not keyfiles.public_key_path(key_path).exists():
                    keyfiles.write_public_key(keyfiles.public_key_path(key_path), key.public_key())
                return key
            found.append(key_id_of(key.public_key()))
    raise AuditError(
        f"audit key {key_path} ({', '.join(found) or 'missing'}) is not the key the log {log_path} "
        f"is signed with ({expected}); restore that key or start a new log"
    )


def check_export(
    conn: sqlite3.Connection,
    log_path: Path,
    export: Path | None,
    *,
    archive_dir: Path,
    key_path: Path,
    pinned: tuple[str, ...],
) -> None:
    """Refuse a log that is behind (or forks from) its own exported checkpoints: it was
    emptied, truncated or replaced while the gateway was down."""
    if export is None or not export.exists():
        return
    try:
        anchors = store.read_exported(export, log_path.name)
    except (OSError, ValueError) as e:
        raise AuditError(f"audit.checkpoint_export {export} cannot be read: {e}") from None
    # not filtered by signature: the export's place is trusted, and a data-dir writer who
    # deleted the keys could otherwise make every exported checkpoint look foreign
    if not anchors:
        return
    last = max(anchors, key=lambda a: a.seq)
    row = conn.execute("SELECT chain_hash FROM events WHERE seq = ?", (last.seq,)).fetchone()
    if row is None and _archived(conn, log_path, last, anchors, archive_dir, key_path, pinned):
        return  # this log's own retention took it out of the live log (proved, signed)
    if row is None or row[0] != last.chain_hash:
        raise AuditError(
            f"audit log {log_path} does not contain the checkpoint exported to {export} "
            f"(seq {last.seq}): it was emptied, truncated or replaced; keep it for investigation and "
            "start a new log elsewhere"
        )


def _archived(
    conn: sqlite3.Connection,
    log_path: Path,
    last: store.Anchor,
    anchors: list[store.Anchor],
    archive_dir: Path,
    key_path: Path,
    pinned: tuple[str, ...],
) -> bool:
    """Whether the hand-off or the archive, signed by a key the checkpoints name or the
    config pins (a key id is a hash of the key), proves ``last`` was archived unchanged."""
    # imported here: both import (via verify) the log module, which imports this one
    from gateway.audit.archives import proves_checkpoint
    from gateway.audit.trust import keys_in_logs

    trusted = set(pinned) | {a.key_id for a in anchors}
    try:
        candidates = {**keys_in_logs([log_path]), **keyfiles.exported_public_keys(key_path)}
    except AuditError:  # an unreadable public key file: nothing proves the checkpoint
        return False
    keys = {k: v for k, v in candidates.items() if k in trusted}
    return proves_checkpoint(conn, last, archive_dir, log_path.name, keys)


def check_pinned(
    conn: sqlite3.Connection, log_path: Path, key_path: Path, key_id: str, pinned: tuple[str, ...]
) -> None:
    """The signing key must be pinned in the config, or handed over by a rotation in this log."""
    if not pinned:
        _logger.warning(
            "audit verification is not anchored: pin the signing key in the config "
            '([audit] pinned_keys = ["%s"]) and keep a copy of the checkpoints elsewhere '
            "([audit] checkpoint_export)",
            key_id,
        )
        return
    if key_id in pinned:
        return
    handed = conn.execute(
        "SELECT 1 FROM events WHERE type = ? AND json_extract(details, '$.new_key_id') = ? LIMIT 1",
        (ROTATION_EVENT, key_id),
    ).fetchone()
    if handed is None:
        raise AuditError(
            f"audit key {key_path} ({key_id}) is not pinned in audit.pinned_keys "
            f"({', '.join(pinned)}) and no rotation in {log_path} hands over to it"
        )


def register_key(conn: sqlite3.Connection, log_path: Path, pub: Ed25519PublicKey) -> None:
    try:
        conn.execute(
            "INSERT OR IGNORE INTO keys (key_id, public_pem, created_ns) VALUES (?,?,?)",
            (key_id_of(pub), public_pem(pub), time.time_ns()),
        )
    except sqlite3.Error as e:
        raise AuditError(f"cannot write audit log {log_path}: {e}") from None


def take_lock(log_path: Path) -> int:
    """The one-writer lock (an exclusive ``flock`` on ``<log>.lock``); its file descriptor."""
    lock = log_path.with_name(log_path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AuditLogBusy(f"audit log {log_path} is in use by another process (lock {lock})") from None
    return fd
