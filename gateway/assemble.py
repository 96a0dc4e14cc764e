"""Build a ``Gateway`` from the config with every component the config turns on.

This is the one place that decides which steps run and which built-ins exist, so the
fronts (stdio, HTTP) and the tests get the same gateway.
"""

from __future__ import annotations

import logging

from mcp.server.subscriptions import InMemorySubscriptionBus

from gateway.app import Gateway
from gateway.config.model import Config
from gateway.events import LoggingSink

_logger = logging.getLogger("symbi.assemble")


def make_gateway(config: Config, bus: InMemorySubscriptionBus | None = None) -> Gateway:
    return Gateway(config, events=LoggingSink(), bus=bus)
