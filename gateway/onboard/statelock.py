"""The discovery state's one-writer lock: an exclusive ``flock`` on ``<state>.lock`` held
around each read-modify-write of ``discovered.json``. The gateway's discovery pass (its own
thread), the admin API's approval (another thread) and ``symbi tools approve`` (another
process) each read the whole file and wrote it back: one's update was lost to the other (an
approval answered 200 dropped, a changed server's re-quarantine undone)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.errors import ConfigError


@contextmanager
def state_locked(state: Path) -> Iterator[None]:
    """Holds the lock of ``state`` (blocking until the other writer is done). Per open file
    description, so two threads of one process exclude each other as two processes do."""
    lock = state.with_name(state.name + ".lock")
    try:
        state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # never through a link planted at its name; 0600 as the state is
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:  # fail closed: no write without the lock
        raise ConfigError(f"{lock}: cannot open the discovery state's lock: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
