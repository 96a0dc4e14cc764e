"""Capped capture of a sandbox's stdout/stderr.

Each stream keeps at most ``cap`` bytes; the first byte beyond the cap marks it truncated
and fires ``on_overflow`` once (the tier then stops the run: an output flood is a limit).
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable

from .types import KilledReason, SandboxResult, Tier


class CappedBuffer:
    """Bytes up to a cap; remembers whether more was offered."""

    def __init__(self, cap: int, on_overflow: Callable[[], None]) -> None:
        self._cap = cap
        self._buf = bytearray()
        self._on_overflow = on_overflow
        self.truncated = False

    def feed(self, data: bytes) -> None:
        room = self._cap - len(self._buf)
        if len(data) > room:
            self._buf += data[: max(room, 0)]
            if not self.truncated:
                self.truncated = True
                self._on_overflow()
        else:
            self._buf += data

    def value(self) -> bytes:
        return bytes(self._buf)


class TrailerBuffer(CappedBuffer):
    """stdout/stderr of a warm-pool runner: the runner appends ``\\0symbi-exit:N\\0`` after the
    payload exits, so the exit code arrives with the stream's EOF (no Docker wait).
    The payload could forge one, but only the *last* counts and the runner writes it
    after the payload is gone: a forged code only lies about the payload itself."""

    MAX = 32
    _RE = re.compile(rb"\x00symbi-exit:(-?\d+)\x00$")

    def __init__(self, cap: int, on_overflow: Callable[[], None]) -> None:
        super().__init__(cap + self.MAX, on_overflow)
        self._user_cap = cap
        self._tail = b""

    def feed(self, data: bytes) -> None:
        self._tail = (self._tail + data)[-self.MAX :]
        super().feed(data)

    def exit_code(self) -> int | None:
        m = self._RE.search(self._tail)
        return int(m.group(1)) if m else None

    def value(self) -> bytes:
        raw = super().value()
        m = self._RE.search(raw)
        body = raw[: m.start()] if m else raw
        if len(body) > self._user_cap:
            self.truncated = True
        return body[: self._user_cap]


def captured(
    out: CappedBuffer, err: CappedBuffer, *, exit_code: int, killed: KilledReason, tier: Tier, start: float
) -> SandboxResult:
    """A run's result from its two capped buffers (``start``: its ``time.monotonic()``)."""
    return SandboxResult(
        exit_code=exit_code,
        stdout=out.value(),
        stderr=err.value(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        killed=killed,
        tier=tier,
        duration_s=time.monotonic() - start,
    )


def pump_fd(fd: int, buf: CappedBuffer) -> threading.Thread:
    """Read ``fd`` to EOF into ``buf`` on a daemon thread (closes the fd at the end)."""

    def run() -> None:
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf.feed(chunk)
        except OSError:
            pass
        finally:
            os.close(fd)

    t = threading.Thread(target=run, name="sandbox-pump", daemon=True)
    t.start()
    return t


def feed_stdin(fd: int, data: bytes | None) -> threading.Thread:
    """Write ``data`` to ``fd`` and close it, on a thread (the child may not read it all)."""

    def run() -> None:
        try:
            if data:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
        except OSError:
            pass  # child exited or closed stdin: not an error of ours
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    t = threading.Thread(target=run, name="sandbox-stdin", daemon=True)
    t.start()
    return t


def pump_docker_socket(
    sock: socket.socket, out: CappedBuffer, err: CappedBuffer, stdin: bytes | None
) -> threading.Thread:
    """Demultiplex a Docker attach stream (8-byte frame headers) into two buffers.

    Writes ``stdin`` first and half-closes the socket so the container sees EOF
    (the container is created with ``stdin_once``).
    """

    def recv_exact(n: int) -> bytes | None:
        parts: list[bytes] = []
        while n:
            chunk = sock.recv(min(n, 65536))
            if not chunk:
                return None
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def run() -> None:
        try:
            if stdin is not None:
                try:
                    sock.sendall(stdin)
                except OSError:
                    pass
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            while not (
                isinstance(out, TrailerBuffer)
                and isinstance(err, TrailerBuffer)
                and out.exit_code() is not None
                and err.exit_code() is not None
            ):
                # (pool runs) both streams ended with the runner's trailer: the payload has
                # exited and everything it wrote before is here; the rest is teardown
                header = recv_exact(8)
                if header is None:
                    break
                kind, size = struct.unpack(">BxxxL", header)
                payload = recv_exact(size) if size else b""
                if payload is None:
                    break
                (err if kind == 2 else out).feed(payload)
        except OSError:
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    t = threading.Thread(target=run, name="sandbox-attach", daemon=True)
    t.start()
    return t
