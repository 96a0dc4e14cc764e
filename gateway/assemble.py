"""Build a ``Gateway`` from the config with every component the config turns on.

This is the one place that decides which steps run and which built-ins exist, so the
fronts (stdio, HTTP) and the tests get the same gateway.
"""

from __future__ import annotations

import logging

import anyio
from mcp.server.subscriptions import InMemorySubscriptionBus

from gateway.app import Gateway
from gateway.config.model import Config
from gateway.events import LoggingSink
from gateway.steps.verify import VerifyTool
from gateway.verify import ToolVerifier

_logger = logging.getLogger("symbi.assemble")


def make_gateway(config: Config, bus: InMemorySubscriptionBus | None = None) -> Gateway:
    events = LoggingSink()
    verifier = ToolVerifier(config, events)
    gw = Gateway(config, events=events, bus=bus, tool_infos=verifier.assess)
    gw.verify_step = VerifyTool()
    gw.background.append(_poll_approvals(verifier, config.mcp.recheck_interval_s))
    gw.closers.append(verifier.close)
    return gw


def _poll_approvals(verifier: ToolVerifier, interval: float):  # type: ignore[no-untyped-def]
    """Re-assess the catalogue when the CLI approves/revokes or a manifest changes."""

    async def run(gw: Gateway) -> None:
        seen = verifier.fingerprint()
        while True:
            await anyio.sleep(interval)
            now = verifier.fingerprint()
            if now != seen:
                seen = now
                _logger.info("approvals or manifests changed: re-verifying the catalogue")
                await gw.refresh()

    return run
