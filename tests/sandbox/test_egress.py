"""A sandboxed upstream granted network gets egress only (issue 11 item 10).

The attack: a bwrap upstream with ``sandbox_network = true`` shared the host's network
namespace and reached the gateway's own port and other loopback services. The probe server
(tests/peers/net_probe.mjs, real Node MCP server) tries TCP connections from inside the
sandbox to listeners on the host's 127.0.0.1, the Docker bridge address, the host's other
addresses and the gateway's own HTTP port; the same probe unsandboxed is the control.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.sandbox import SandboxManager, ownnet
from tests.conftest import NODE_MODULES, ROOT, write_config
from tests.sandbox.conftest import require_tier
from tests.server.http.conftest import run_server

pytestmark = [pytest.mark.sandbox]
PROBE = ROOT / "tests/peers/net_probe.mjs"


@pytest.fixture
def listeners() -> Iterator[dict[str, int]]:
    """A TCP listener on 127.0.0.1 and one on every address (0.0.0.0), accepting."""
    socks = []
    ports = {}
    for name, host in (("loopback", "127.0.0.1"), ("any", "0.0.0.0")):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        s.listen(16)
        socks.append(s)
        ports[name] = s.getsockname()[1]
    yield ports
    for s in socks:
        s.close()


def _host_addresses() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    return [a for a in out if ":" not in a and not a.startswith(("10.231.77.", "10.232."))]


def _sandbox_host_ends() -> list[str]:
    """The host's ends of the sandboxes' veth pairs (one /30 each, in ``ownnet.NET``)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if f" {ownnet.IF_PREFIX}" in line]


def _config(tmp_path: Path) -> Path:
    sdk = (NODE_MODULES / "@modelcontextprotocol/sdk").resolve()
    return write_config(
        tmp_path,
        f"""
        [security]
        enforce_policies = false   # the network is what is under test, not the policy
        [http]
        anonymous_principal = "tester"
        [sandbox]
        code_tools = false
        [servers.probe]
        command = "/usr/bin/node"
        args = ["{PROBE}"]
        cwd = "{sdk.parent.parent.parent}"   # bound read-only: the SDK the probe imports
        env = {{ PROBE_SDK = "{sdk}" }}
        sandbox = "bwrap"
        sandbox_network = true
        verification = "warn"
        [servers.hostprobe]
        command = "/usr/bin/node"
        args = ["{PROBE}"]
        env = {{ PROBE_SDK = "{sdk}" }}
        verification = "warn"
        """,
    )


@pytest.mark.anyio
async def test_a_sandboxed_server_with_network_cannot_reach_this_host(
    tmp_path: Path, manager: SandboxManager, listeners: dict[str, int]
) -> None:
    require_tier(manager, "bwrap")
    cfg = _config(tmp_path)
    with run_server(cfg) as run:
        gateway_port = int(run.base.rsplit(":", 1)[1])
        targets = [("127.0.0.1", listeners["loopback"]), ("127.0.0.1", gateway_port)]
        targets += [(addr, listeners["any"]) for addr in ["172.17.0.1", *_host_addresses()]]
        async with (
            httpx2.AsyncClient() as hc,
            streamable_http_client(run.mcp, http_client=hc) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            await s.call_tool("probe__connect", {"host": "127.0.0.1", "port": 9})  # started
            ends = _sandbox_host_ends()
            assert ends, "no sandbox veth on the host"
            targets += [(addr, gateway_port) for addr in ["172.17.0.1", *ends]]
            # the control: the same probe outside any sandbox does reach the listeners
            for host, port in targets[:1]:
                ctl = await s.call_tool("hostprobe__connect", {"host": host, "port": port})
                assert ctl.content[0].text == "connected", (host, port)  # type: ignore[union-attr]
            reached = {}

            async def probe(host: str, port: int) -> None:
                res = await s.call_tool("probe__connect", {"host": host, "port": port})
                assert not res.is_error, res
                reached[(host, port)] = res.content[0].text  # type: ignore[union-attr]

            async with anyio.create_task_group() as tg:  # at once: a dropped probe waits 3 s
                for host, port in targets:
                    tg.start_soon(probe, host, port)
            assert len(reached) == len(set(targets))
    assert "connected" not in reached.values(), reached


def _two_probes(tmp_path: Path) -> Path:
    sdk = (NODE_MODULES / "@modelcontextprotocol/sdk").resolve()
    servers = "".join(
        f"""
        [servers.{name}]
        command = "/usr/bin/node"
        args = ["{PROBE}"]
        cwd = "{sdk.parent.parent.parent}"
        env = {{ PROBE_SDK = "{sdk}" }}
        sandbox = "bwrap"
        sandbox_network = true
        verification = "warn"
        """
        for name in ("a", "b")
    )
    return write_config(
        tmp_path,
        f"""
        [security]
        enforce_policies = false   # the network is what is under test, not the policy
        [http]
        anonymous_principal = "tester"
        [sandbox]
        code_tools = false
        {servers}
        """,
    )


@pytest.mark.anyio
async def test_networked_sandboxes_do_not_share_a_loopback(tmp_path: Path, manager: SandboxManager) -> None:
    """The attack: every networked bwrap server ran in the one egress namespace, so a service
    one of them listened on at 127.0.0.1 (a browser's debugging port, a kernel's sockets) was
    open to all the others, and so was every abstract Unix socket. Each now has its own."""
    require_tier(manager, "bwrap")
    with run_server(_two_probes(tmp_path)) as run:
        async with (
            httpx2.AsyncClient() as hc,
            streamable_http_client(run.mcp, http_client=hc) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            # both servers up before the listener opens (either may start first)
            for name in ("a", "b"):
                await s.call_tool(f"{name}__connect", {"host": "127.0.0.1", "port": 9})
            port = int((await s.call_tool("a__listen", {})).content[0].text)  # type: ignore[union-attr]
            # the control: a's own loopback reaches its listener
            own = await s.call_tool("a__connect", {"host": "127.0.0.1", "port": port})
            assert own.content[0].text == "connected"  # type: ignore[union-attr]
            other = await s.call_tool("b__connect", {"host": "127.0.0.1", "port": port})
            assert not other.is_error, other
            assert other.content[0].text != "connected"  # type: ignore[union-attr]
            # nor is a's end of its veth pair from b's namespace (through the host)
            ends = _sandbox_host_ends()
            assert len(ends) >= 2, ends  # a's and b's
            for end in ends:
                a_end = str(ipaddress.ip_address(end) + 1)
                peer = await s.call_tool("b__connect", {"host": a_end, "port": port})
                assert peer.content[0].text != "connected", a_end  # type: ignore[union-attr]
