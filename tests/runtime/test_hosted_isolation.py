"""Attack: a hosted agent whose script lives beside the gateway's config (the layout of a
small deployment: ./symbi.toml, ./.symbi/, ./agent.py, so that folder is bound into the
sandbox) looks for the gateway's config, data dir and keys, dials every address of the host
and writes outside its /tmp -- in every tier, in-process.

The gateway's own files were bound in with the folder for hosted agents (only stdio servers
had them covered): found while closing issue 21's gVisor gap. Now they are an empty folder
and an empty file, as for stdio servers (tests/sandbox/test_hidden_paths.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import anyio
import pytest

from gateway.config.model import AgentConfig, Config, GatewaySection
from gateway.runtime.core import AgentRuntime
from gateway.runtime.gvisor_agent import NOBODY
from gateway.runtime.hosted import HostedAgents
from gateway.server.auth import ApiKeyStore
from tests.runtime.test_core import Recorder
from tests.runtime.test_hosted_supervisor import GUARD_S

pytestmark = pytest.mark.anyio


def _host(tmp_path: Path, tier: str, **agents: AgentConfig) -> HostedAgents:
    """A gateway whose config folder holds its data dir and the agent's files (the layout of
    `symbi init`: ./symbi.toml, ./.symbi/, ./agent.py): bound into the sandbox with the script."""
    from gateway.runtime.launch import AgentHost
    from gateway.sandbox.manager import SandboxManager
    from tests.sandbox.conftest import require_tier

    if tier == "gvisor" and os.geteuid() != 0:
        pytest.skip("the gVisor tier of hosted agents runs runsc as root")
    conf = tmp_path / "conf"
    (conf / "lib").mkdir(parents=True)
    for d in (tmp_path, conf, conf / "lib"):
        d.chmod(0o755)  # the sandbox's uid 65534 may walk to the agent's files
    source = conf / "symbi.toml"
    source.write_text("# the gateway's config\n")
    source.chmod(0o644)  # even a config others may read must not be shown
    data = conf / ".symbi"
    data.mkdir(mode=0o755)
    (data / "api-keys.json").write_text("{}")
    (data / "api-keys.json").chmod(0o644)
    config = Config(gateway=GatewaySection(data_dir=data), agents=agents).model_copy(
        update={"source": source}
    )
    manager = SandboxManager(config, sweep_orphans=False)
    require_tier(manager, "bwrap" if tier == "gvisor" else tier)  # gVisor: runsc straight
    sock = tmp_path / "gateway.sock"
    sock.touch()
    rec = Recorder()
    keys = ApiKeyStore(tmp_path / "keys.json")
    return HostedAgents(
        config, AgentRuntime(config, rec), rec, sandbox=manager, host=AgentHost(str(sock), keys)
    )


# Looks for the gateway's files, dials every host address, writes outside /tmp; prints JSON.
PROBE = """
import json, os, socket, sys
lines = open("/proc/net/dev").read().splitlines()[2:]  # the interfaces of its network namespace
out = {"uid": os.getuid(), "ifaces": sorted(x.split(":")[0].strip() for x in lines)}
def attempt(name, f):
    try:
        out[name] = ["ok", f()]
    except OSError as e:
        out[name] = ["refused", e.errno]
conf, port, addrs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
attempt("config", lambda: open(conf + "/symbi.toml").read())
attempt("data_dir", lambda: sorted(os.listdir(conf + "/.symbi")))
attempt("keys", lambda: open(conf + "/.symbi/api-keys.json").read())
for a in addrs:
    attempt("dial " + a, lambda: socket.create_connection((a, port), timeout=3).close())
attempt("write /usr", lambda: open("/usr/symbi-probe", "w").close())
attempt("write conf", lambda: open(conf + "/symbi-probe", "w").close())
attempt("write /", lambda: open("/symbi-probe", "w").close())
attempt("write /tmp", lambda: open("/tmp/symbi-probe", "w").close())
print(json.dumps(out), flush=True)
"""


def _write_probe(script: Path) -> None:
    script.parent.mkdir(mode=0o755, exist_ok=True)
    script.write_text(PROBE)
    script.chmod(0o644)


def _written(*paths: Path) -> list[Path]:
    return [p for p in paths if p.exists()]


def _host_addresses() -> list[str]:
    text = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({line.split()[3].split("/")[0] for line in text.splitlines()})


@pytest.mark.parametrize("bound", ["script", "read_only_paths", "both"])
@pytest.mark.parametrize("tier", ["bwrap", "gvisor", "docker"])
async def test_a_real_run_sees_no_gateway_file_no_network_and_a_read_only_host(
    tmp_path: Path, tier: Literal["bwrap", "gvisor", "docker"], bound: str
) -> None:
    """``bound``: how the config folder gets into the sandbox: the agent's script lives in it,
    the config lists it in ``read_only_paths``, or both (one folder bound twice)."""
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))  # every host interface, loopback included
    listener.listen(8)
    addrs = _host_addresses()
    assert "127.0.0.1" in addrs and len(addrs) > 1
    conf = tmp_path / "conf"
    script = conf / "probe.py" if bound != "read_only_paths" else tmp_path / "agent" / "probe.py"
    ac = AgentConfig(
        command="/usr/bin/python3",
        args=(str(script), str(conf), str(listener.getsockname()[1]), ",".join(addrs)),
        read_only_paths=(".",) if bound != "script" else (),
        sandbox=tier,
        restart="never",
    )
    h = _host(tmp_path, tier, probe=ac)
    _write_probe(script)
    try:
        with anyio.fail_after(GUARD_S):
            outcome = await h._run_once("probe", ac)
    finally:
        listener.close()
    log = (h.config.data_dir / "agents" / "probe.log").read_text()
    assert outcome == "ok", log
    [out] = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert out["uid"] == NOBODY and out["ifaces"] == ["lo"]
    assert out["write /tmp"][0] == "ok"  # the probe ran its attempts
    refused = {k: v for k, v in out.items() if isinstance(v, list) and v and v[0] == "refused"}
    for attack in ("keys", *(f"dial {a}" for a in addrs), "write /usr", "write conf", "write /"):
        assert attack in refused, (attack, out[attack])
    # the config and the data dir, if seen at all, are empty stand-ins, never the gateway's own
    assert out["config"][0] == "refused" or out["config"] == ["ok", ""]
    assert out["data_dir"][0] == "refused" or out["data_dir"] == ["ok", []]
    assert not _written(conf / "symbi-probe", Path("/usr/symbi-probe"))
    assert isinstance(h.events, Recorder)
    assert [(d["exit_code"], d["oom"]) for t, d, _, _ in h.events.events if t == "agent.exited"] == [
        (0, False)
    ]


# Reads the needle from stdin (not its own command line) and every process's command line.
SCAN = """
import json, os, sys
needle = sys.stdin.read().strip()
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        line = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if needle in line:
        found.append(line[:200])
print(json.dumps(found))
"""


@pytest.mark.parametrize("tier", ["bwrap", "docker"])
async def test_a_running_agents_credential_is_in_no_command_line(
    tmp_path: Path, tier: Literal["bwrap", "docker"]
) -> None:
    """Attack: an unsandboxed upstream (as ``symbi-upstream``, in its Landlock domain, the way
    the gateway starts one) reads every ``/proc/PID/cmdline`` while a hosted agent runs. The
    agent's credential (``SYMBI_AGENT_TOKEN``, an API key of its principal) was on bwrap's and
    the docker CLI's command line for the whole run: with it, the upstream called the gateway
    as the agent (over HTTP, or the agents' socket in /tmp)."""
    if os.geteuid() != 0:
        pytest.skip("the reader runs as symbi-upstream: root switches to it")
    from gateway.config import build_config
    from gateway.upstream.runas import resolve_run_as

    run_as = resolve_run_as(build_config({}))
    assert run_as is not None
    ac = AgentConfig(
        command="/usr/bin/sh",
        args=("-c", 'echo "token=$SYMBI_AGENT_TOKEN"; exec sleep 8'),
        sandbox=tier,
        restart="never",
    )
    h = _host(tmp_path, tier, sleeper=ac)
    log = h.config.data_dir / "agents" / "sleeper.log"
    found: list[str] = []

    async def scan_while_it_runs() -> None:
        with anyio.fail_after(GUARD_S):
            while not (log.exists() and "token=" in log.read_text()):
                await anyio.sleep(0.1)
        [token] = [x[len("token=") :] for x in log.read_text().splitlines() if x.startswith("token=")]
        assert token  # the agent has its credential
        home = run_as.make_home("cmdline-reader")
        cmd, args = run_as.argv("cmdline-reader", "/usr/bin/python3", ["-I", "-c", SCAN])
        r = await anyio.run_process(
            [cmd, *args], input=token.encode(), env=run_as.env("cmdline-reader", {}), cwd=home, check=True
        )
        found.extend(json.loads(r.stdout))

    async with anyio.create_task_group() as tg:
        tg.start_soon(scan_while_it_runs)
        with anyio.fail_after(GUARD_S):
            outcome = await h._run_once("sleeper", ac)
    assert outcome == "ok", log.read_text()
    assert found == [], found


# Every process's environment it can read (bwrap itself is pid 1 of its sandbox, of its uid).
ENVIRONS = """
import json, os
seen = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        seen[pid] = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        continue
print(json.dumps(seen))
"""


@pytest.mark.parametrize("tier", ["bwrap", "gvisor", "docker"])
async def test_a_hosted_agent_reads_none_of_the_gateways_environment(
    tmp_path: Path, tier: Literal["bwrap", "gvisor", "docker"], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the agent reads ``/proc/*/environ`` inside its sandbox. bwrap (pid 1 there, uid
    65534 like the agent) was started with the gateway's whole environment, so the agent read
    the gateway's secrets (here ``OPENAI_API_KEY``; a database URL with its password likewise)."""
    secret = f"sk-never-in-a-sandbox-{os.urandom(6).hex()}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    ac = AgentConfig(command="/usr/bin/python3", args=("-c", ENVIRONS), sandbox=tier, restart="never")
    h = _host(tmp_path, tier, reader=ac)
    with anyio.fail_after(GUARD_S):
        outcome = await h._run_once("reader", ac)
    log = (h.config.data_dir / "agents" / "reader.log").read_text()
    assert outcome == "ok", log
    [seen] = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert len(seen) >= 1  # it read its own at least
    assert [pid for pid, env in seen.items() if secret in env] == []


LIST_TMP = "import os; print(sorted(os.listdir('/tmp')))"


@pytest.fixture
def right_in_tmp() -> Iterator[tuple[Path, Path]]:
    """A file another user left in /tmp, and an agent's script right in /tmp (removed after)."""
    marker = Path(tempfile.mkstemp(prefix="symbi-rt-left-by-another-", dir="/tmp")[1])
    script = Path(tempfile.mkstemp(prefix="symbi-rt-agent-", suffix=".py", dir="/tmp")[1])
    script.write_text(LIST_TMP + "\n")
    script.chmod(0o644)
    yield marker, script
    marker.unlink()
    script.unlink()


@pytest.mark.parametrize("bound", ["script", "read_only_paths"])
async def test_a_hosted_agent_never_gets_the_hosts_tmp_whole(
    tmp_path: Path, bound: str, right_in_tmp: tuple[Path, Path]
) -> None:
    """Attack: the agent's script lies right in /tmp (or the config lists /tmp to read). Its
    folder was bound: the agent listed the host's /tmp and read what others left there, and
    could dial every Unix socket in it (each gateway's agents' socket included). Such a run
    is now refused as invalid config, as one exposing /etc or /home was."""
    marker, script = right_in_tmp
    args = (str(script),) if bound == "script" else ("-c", LIST_TMP)
    ro = ("/tmp",) if bound == "read_only_paths" else ()
    ac = AgentConfig(
        command="/usr/bin/python3", args=args, read_only_paths=ro, sandbox="bwrap", restart="never"
    )
    h = _host(tmp_path, "bwrap", lister=ac)
    with anyio.fail_after(GUARD_S):
        outcome = await h._run_once("lister", ac)
    log = h.config.data_dir / "agents" / "lister.log"
    assert not (log.exists() and marker.name in log.read_text())
    assert outcome == "invalid"
