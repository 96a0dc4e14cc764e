"""``sandbox.warm_pool``: a gateway started with it keeps that many ready sandboxes per Docker
tier before any call (nothing started the pool before); 0 starts none."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TextIO

import anyio
import pytest

from gateway.config.model import Config
from gateway.sandbox import SandboxManager
from gateway.sandbox.docker_tier import docker_client
from gateway.sandbox.types import LABEL, LABEL_OWNER
from tests.conftest import write_config
from tests.sandbox.conftest import require_tier
from tests.server._clients import stdio_session

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox, pytest.mark.slow]


def _owned_by_gateway_of(config: Path) -> list[str]:
    """Running sandbox containers whose owner process is the gateway serving ``config``."""
    out = []
    for c in docker_client().containers.list(filters={"label": f"{LABEL}=1"}, ignore_removed=True):
        _, _, pid = (c.labels or {}).get(LABEL_OWNER, "").partition(":")
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(config) in cmdline:
            out.append(c.id)
    return out


async def _pooled_after_start(config: Path, expect_some: bool) -> list[str]:
    with (config.parent / "gateway.log").open("w") as errlog:
        return await _pooled_in(config, expect_some, errlog)


def _pool_log(config: Path) -> str:
    """The gateway's log lines about its warm pool (why a tier was not pooled)."""
    text = (config.parent / "gateway.log").read_text(errors="replace")
    return "\n".join(line for line in text.splitlines() if "warm pool" in line)


async def _pooled_in(config: Path, expect_some: bool, errlog: TextIO) -> list[str]:
    async with stdio_session(config, errlog=errlog) as s:
        await s.list_tools()
        deadline = time.monotonic() + 90
        found = _owned_by_gateway_of(config)
        while expect_some and len(found) < 2 and time.monotonic() < deadline:
            await anyio.sleep(0.5)
            found = _owned_by_gateway_of(config)
        if not expect_some:
            await anyio.sleep(3)  # a started pool would have shown by now
            found = _owned_by_gateway_of(config)
        return found


async def test_warm_pool_starts_with_the_gateway(tmp_path: Path) -> None:
    m = SandboxManager(Config(), sweep_orphans=False)
    require_tier(m, "docker")
    require_tier(m, "gvisor")
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = true\nwarm_pool = 1\n")
    pooled = await _pooled_after_start(cfg, expect_some=True)
    assert len(pooled) == 2, _pool_log(cfg)  # one per Docker tier


async def test_no_pool_without_the_setting(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = true\nwarm_pool = 0\n")
    assert await _pooled_after_start(cfg, expect_some=False) == []
