"""Run a real ``symbi serve`` on a free 127.0.0.1 port for a test."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import SYMBI, free_port, symbi_env


@contextlib.contextmanager
def serve(config: Path, *, ready_path: str = "/readyz", timeout: float = 60.0) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) once the gateway answers ``ready_path``."""
    with serve_process(config, ready_path=ready_path, ready_s=timeout) as (base, _):
        yield base


@contextlib.contextmanager
def serve_process(
    config: Path,
    *extra: str,
    log_name: str = "serve",
    ready_path: str = "/readyz",
    ready_s: float = 90,
    stop_s: float = 10,
    pass_fds: tuple[int, ...] = (),
    host: str | None = None,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``symbi serve --config config --port <free> *extra``, ready (``ready_path`` answers 200),
    with its process; terminated (then killed after ``stop_s``) on exit. Its output goes to
    ``<config's folder>/<log_name>-<port>.log``, quoted when it exits or is not ready in time.
    ``pass_fds``: descriptors the gateway inherits (as from a supervisor); ``host`` and
    ``port``: where the caller's config says it listens (default: its host, a free port on
    127.0.0.1)."""
    port = port or free_port()
    with open(config.parent / f"{log_name}-{port}.log", "w") as log:
        proc = subprocess.Popen(
            [str(SYMBI), "serve", "--config", str(config), "--port", str(port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=symbi_env(),
            pass_fds=pass_fds,
        )
        host = host or "127.0.0.1"
        base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        try:
            deadline = time.monotonic() + ready_s  # the bound of the wait, not a timing assertion
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"symbi serve exited {proc.returncode}: {Path(log.name).read_text()[-3000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(base + ready_path, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"symbi serve not ready: {Path(log.name).read_text()[-3000:]}")
                time.sleep(0.1)
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def trickle_until_closed(s: socket.socket, closing: tuple[bytes, ...] = ()) -> bool:
    """Send a request's headers one byte at a time (0.3 s apart at most): whether the server
    closed the connection (or answered one of ``closing``) before they were complete."""
    for ch in b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 40:
        try:
            s.sendall(bytes([ch]))
            s.settimeout(0.3)
            answer = s.recv(4096)
            if answer == b"" or (closing and answer.startswith(closing)):
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False
