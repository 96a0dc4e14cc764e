"""The MCP front's server object (gateway/server/front.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

from mcp.shared.exceptions import MCPDeprecationWarning

from gateway.config import load_config
from gateway.server.front import Front
from tests.conftest import write_config


def test_the_server_is_built_without_the_sdk_deprecation_warning(tmp_path: Path) -> None:
    """It printed at every start; the deprecated logging handler is still registered (2025 clients)."""
    front = Front(load_config(write_config(tmp_path, ""), {}), lambda hub: None)  # type: ignore[arg-type,return-value]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MCPDeprecationWarning)
        server = front.server()
    assert server is not None
    with warnings.catch_warnings(record=True) as seen:  # the guard is scoped: others still warn
        warnings.simplefilter("always", MCPDeprecationWarning)
        front._server()
    assert any(issubclass(w.category, MCPDeprecationWarning) for w in seen)
