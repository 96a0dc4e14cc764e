"""What ``symbi mcp`` (stdio) cannot run is refused at start, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.server.stdio import check_stdio_config
from tests.conftest import run_symbi, write_config

AGENT = '[agents.clock]\ncommand = "/bin/true"\nsandbox = "bwrap"\n'
PLAIN = "[sandbox]\ncode_tools = false\n[context]\nenabled = false\n"


@pytest.mark.parametrize("start", ["with-gateway", "on-demand", "30s"])
def test_hosted_agents_are_refused_under_symbi_mcp(tmp_path: Path, start: str) -> None:
    """A hosted agent reaches the gateway over the HTTP front's Unix socket with a key made for
    its run; a stdio gateway has neither. It started anyway and every run of the agent failed
    ("invalid config: hosted agents need `symbi serve`"), exit 0: now exit 2 naming the agent."""
    config = write_config(
        tmp_path, f'{PLAIN}{AGENT}start = "{start}"\n[agents.other]\ncommand = "/bin/true"\n'
    )
    with pytest.raises(ConfigError, match=r"agents\.clock, agents\.other"):
        check_stdio_config(load_config(config, {}))
    proc = run_symbi("mcp", "--config", config)
    assert proc.returncode == 2, proc.stderr
    assert "agents.clock" in proc.stderr
    assert not (load_config(config, {}).data_dir / "audit.db").exists()  # nothing started


def test_a_disabled_hosted_agent_is_no_reason_to_refuse(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"{PLAIN}{AGENT}enabled = false\n")
    check_stdio_config(load_config(config, {}))
    assert run_symbi("mcp", "--config", config).returncode == 0  # stdin closed: the client left
