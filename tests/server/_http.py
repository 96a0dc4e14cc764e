"""Run a real ``symbi serve`` on a free 127.0.0.1 port for a test."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import SYMBI, free_port, symbi_env


@contextlib.contextmanager
def serve(config: Path, *, ready_path: str = "/readyz", timeout: float = 60.0) -> Iterator[str]:
    """Yield the base URL (http://127.0.0.1:PORT) once the gateway answers ``ready_path``."""
    port = free_port()
    log = open(config.parent / f"serve-{port}.log", "w")
    proc = subprocess.Popen(
        [str(SYMBI), "serve", "--config", str(config), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=symbi_env(),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"symbi serve exited {proc.returncode}: {(config.parent / log.name).read_text()}"
                )
            try:
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"symbi serve not ready: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
