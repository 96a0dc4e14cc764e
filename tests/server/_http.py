"""Run a real ``symbi serve`` on a free 127.0.0.1 port for a test."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import SYMBI, free_port, port_owner, symbi_env


@contextlib.contextmanager
def serve(config: Path, *, ready_path: str = "/readyz", timeout: float = 60.0) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) once the gateway answers ``ready_path``."""
    with serve_process(config, ready_path=ready_path, ready_s=timeout) as (base, _):
        yield base


class PortTaken(Exception):
    """The gateway could not have the port: another process listens there."""


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
    """``symbi serve --config config --port <free> *extra``, ready (``ready_path`` answers 200
    and the process started here is the one listening on the port), with its process;
    terminated (then killed after ``stop_s``) on exit. Its output goes to
    ``<config's folder>/<log_name>-<port>.log``, quoted when it exits or is not ready in time.
    A free port another process took first is given up for another (a given ``port``: an
    error naming it). ``pass_fds``: descriptors the gateway inherits (as from a supervisor);
    ``host`` and ``port``: where the caller's config says it listens (default: its host, a free
    port on 127.0.0.1)."""
    for _ in range(3):
        chosen = port or free_port()
        try:
            with _launch(
                config, extra, log_name, ready_path, ready_s, stop_s, pass_fds, host, chosen
            ) as served:
                yield served
            return
        except PortTaken:
            if port is not None:
                raise
    raise PortTaken("three free ports in a row were taken by other processes")


@contextlib.contextmanager
def _launch(
    config: Path,
    extra: tuple[str, ...],
    log_name: str,
    ready_path: str,
    ready_s: float,
    stop_s: float,
    pass_fds: tuple[int, ...],
    host: str | None,
    port: int,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
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
            _wait_ready(proc, port, base + ready_path, ready_s, Path(log.name))
            yield base, proc
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(stop_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, url: str, ready_s: float, log: Path) -> None:
    """Until ``url`` answers 200 from a port ``proc`` listens on (another test's gateway on that
    port answers too: its 200 is not this one's)."""
    deadline = time.monotonic() + ready_s  # the bound of the wait, not a timing assertion
    while True:
        if proc.poll() is not None:
            if port_owner(proc.pid, port) is False:
                raise PortTaken(f"port {port} is another process's; symbi serve exited {proc.returncode}")
            raise RuntimeError(f"symbi serve exited {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200 and port_owner(proc.pid, port):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"symbi serve not ready: {log.read_text()[-3000:]}")
        time.sleep(0.1)


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
