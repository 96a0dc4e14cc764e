"""The admin client of ``symbi status`` / ``symbi agents`` / ``symbi policy reload|status``
(``gateway/cli/admin_client.py``) finds a real ``symbi serve`` where its config says it is."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import SYMBI, symbi_env, write_config
from tests.server._http import serve_process


def _free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


def test_status_reaches_a_gateway_on_an_ipv6_loopback(tmp_path: Path) -> None:
    """``[http] host = "::1"`` (a loopback the server accepts without a warning): the default
    URL is ``http://[::1]:PORT`` (it was ``http://::1:PORT``, which httpx refuses to parse)."""
    port = _free_port_v6()
    cfg = write_config(
        tmp_path,
        f'[sandbox]\ncode_tools = false\n[context]\nenabled = false\n[http]\nhost = "::1"\nport = {port}\n',
    )
    key, _ = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("ops", ("admin",))
    with serve_process(cfg, host="::1", port=port):  # where the config says: [::1]:port
        res = subprocess.run(
            [str(SYMBI), "status", "--config", str(cfg), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=symbi_env(SYMBI_API_KEY=key),
        )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "overall_status" in json.loads(res.stdout)


def test_the_cli_waits_longer_than_the_gateway_waits_for_an_action_s_record() -> None:
    """Both were 30 s: on a stalled disk the CLI said it could not reach the gateway for an
    action the gateway carried out, before its 503 ``action_unrecorded`` (done) came."""
    from gateway.cli import admin_client
    from gateway.server import oprecord

    assert admin_client.TIMEOUT_S > oprecord.RECORD_WAIT_S
