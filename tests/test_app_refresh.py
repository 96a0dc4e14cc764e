"""``Gateway.refresh_within``: an approval's catalogue rebuild, waited for a while. After the
gateway stopped (an approval recorded as it stopped) it rebuilt inline against closed
components, unbounded (the wait this was made to bound), and said "refreshed" for a gateway
that serves nothing. A real gateway with no upstreams, run and stopped."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway.assemble import make_gateway
from gateway.config.load import load_config
from tests.conftest import write_config

pytestmark = pytest.mark.anyio


async def test_a_refresh_asked_after_the_gateway_stopped_is_not_made(tmp_path: Path) -> None:
    gw = make_gateway(load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"), {}))
    async with gw.running():
        with anyio.fail_after(10):
            assert await gw.refresh_within(5.0)  # running: rebuilt in its task group
    rebuilt = False

    async def counted(*_args: object) -> None:
        nonlocal rebuilt
        rebuilt = True

    gw._rebuild = counted  # type: ignore[method-assign,assignment]  # (a seam: whether a rebuild is made)
    assert await gw.refresh_within(5.0) is False
    assert not rebuilt
