"""Shared helpers for the benchmarks: paths, percentiles, timed call loops, gateway configs.

Benchmarks compare against a baseline measured in the same run (a ratio survives a noisy
shared machine; an absolute time does not), so everything here returns raw latencies and
lets the caller pair them up.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SYMBI = VENV_BIN / "symbi"
EVERYTHING_JS = ROOT / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class CallStats:
    """What a timed loop saw: per-call latencies, wall time, and reply checking."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    ok: int = 0
    misrouted: int = 0  # a reply that belongs to another call
    errors: int = 0  # isError, exceptions, or a reply that matches no call

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s if self.wall_s > 0 else float("nan")

    def merge(self, other: CallStats) -> None:
        self.latencies += other.latencies
        self.ok += other.ok
        self.misrouted += other.misrouted
        self.errors += other.errors


Call = Callable[[str], Awaitable[str | None]]  # sends one unique message, returns the echoed text


async def timed_calls(
    call: Call, messages: list[str], expected: Callable[[str], str], sent: set[str]
) -> CallStats:
    """Call once per message, in order, timing each call and checking each reply."""
    stats = CallStats()
    for msg in messages:
        t0 = time.perf_counter()
        try:
            text = await call(msg)
        except Exception:  # noqa: BLE001 - counted, not fatal: a benchmark reports errors
            text = None
        stats.latencies.append(time.perf_counter() - t0)
        if text == expected(msg):
            stats.ok += 1
        elif text is not None and any(text == expected(m) for m in _candidates(text, sent)):
            stats.misrouted += 1
        else:
            stats.errors += 1
    return stats


def _candidates(text: str, sent: set[str]) -> list[str]:
    # Replies embed the message; find which other call's message this one carries.
    return [m for m in sent if m in text]


async def concurrent_calls(
    call: Call, callers: int, per_caller: int, tag: str, expected: Callable[[str], str]
) -> CallStats:
    """``callers`` tasks on one session, ``per_caller`` calls each, every message unique."""
    batches = [[f"{tag}-c{c}-{i}-{os.urandom(4).hex()}" for i in range(per_caller)] for c in range(callers)]
    sent = {m for b in batches for m in b}
    total = CallStats()

    async def run(batch: list[str]) -> None:
        total.merge(await timed_calls(call, batch, expected, sent))

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for batch in batches:
            tg.start_soon(run, batch)
    total.wall_s = time.perf_counter() - t0
    return total


async def sequential_calls(call: Call, n: int, tag: str, expected: Callable[[str], str]) -> CallStats:
    messages = [f"{tag}-{i}-{os.urandom(4).hex()}" for i in range(n)]
    t0 = time.perf_counter()
    stats = await timed_calls(call, messages, expected, set(messages))
    stats.wall_s = time.perf_counter() - t0
    return stats


async def interleaved_sequential_calls(
    calls: Mapping[str, Call], n: int, tag: str, expected: Callable[[str], str], slice_calls: int = 100
) -> dict[str, CallStats]:
    """``n`` sequential calls to each target in slices of ``slice_calls``, the targets taking
    turns slice by slice (in ``calls``' order), each slice opened by one untimed call: this
    machine's speed (``machine_speed``) flips within seconds, and slices a fraction of a second
    long spread each level over every target alike, where a block of all of one target's calls
    could fall in one level. The opening call keeps the timed ones back to back (a call after
    the other targets' turn wakes three idle processes: 0.4 ms more for direct alone here, so
    one call in a slice of 100 untreated would sit in the p99). Its reply is checked too."""
    messages = {name: [f"{tag}-{name}-{i}-{os.urandom(4).hex()}" for i in range(n)] for name in calls}
    sent = {name: set(msgs) for name, msgs in messages.items()}
    out = {name: CallStats() for name in calls}
    for start in range(0, n, slice_calls):
        for name, call in calls.items():
            opener = f"{tag}-{name}-open{start}-{os.urandom(4).hex()}"
            opened = await timed_calls(call, [opener], expected, {opener})
            out[name].misrouted += opened.misrouted
            out[name].errors += opened.errors
            t0 = time.perf_counter()
            out[name].merge(
                await timed_calls(call, messages[name][start : start + slice_calls], expected, sent[name])
            )
            out[name].wall_s += time.perf_counter() - t0
    return out


@contextlib.asynccontextmanager
async def stdio_session(
    command: str,
    args: list[str],
    env: dict[str, str] | None = None,
    errlog: Path | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[ClientSession]:
    """A handshake-era (2025-11-25) SDK client session over stdio, kept open (stderr to ``errlog``)."""
    params = StdioServerParameters(command=command, args=args, env=env, cwd=cwd)
    with open(errlog or os.devnull, "w") as err:  # noqa: ASYNC230 - opened once, before any I/O
        async with stdio_client(params, errlog=err) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            yield session


def gateway_env() -> dict[str, str]:
    """Environment for a ``symbi`` child: none of the caller's SYMBI_* overrides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}


# Prints the dotted config keys a checkout's ``gateway.config.model.Config`` accepts (tables
# too; a dict of tables such as ``servers`` as ``servers.*``), run with that checkout's code.
_KEYS_SCRIPT = """
import json, typing
from pydantic import BaseModel
from gateway.config.model import Config
out = []
def walk(model, prefix):
    for name, f in model.model_fields.items():
        key = prefix + name
        out.append(key)
        ann = f.annotation
        args = [a for a in typing.get_args(ann) if isinstance(a, type)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            walk(ann, key + ".")
        elif typing.get_origin(ann) is dict and args and issubclass(args[-1], BaseModel):
            out.append(key + ".*")
            walk(args[-1], key + ".*.")
walk(Config, "")
print(json.dumps(out))
"""
_ACCEPTED: dict[Path, frozenset[str]] = {}


def accepted_keys(tree: Path) -> frozenset[str]:
    """The config keys the gateway in checkout ``tree`` accepts (asked of that tree's code)."""
    tree = tree.resolve()
    if tree not in _ACCEPTED:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        out = subprocess.run(
            [sys.executable, "-c", _KEYS_SCRIPT],
            env=env,
            cwd=tree,
            capture_output=True,
            text=True,
            check=True,
        )
        _ACCEPTED[tree] = frozenset(json.loads(out.stdout))
    return _ACCEPTED[tree]


def keep_accepted(text: str, accepted: frozenset[str]) -> tuple[str, list[str]]:
    """``text`` (TOML of ``[table]`` headers and ``key = value`` lines) without the tables and
    keys outside ``accepted``; returns the text and the dotted keys it dropped. A table of a dict
    (``[servers.NAME]``) is checked as ``servers.*``."""
    kept, dropped, table, skip = [], [], "", False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            table = stripped.strip("[]").strip()
            parts = table.split(".")
            generic = ".".join(
                p if f"{'.'.join(parts[:i])}.*" not in accepted else "*" for i, p in enumerate(parts)
            )
            skip = table not in accepted and generic not in accepted
            table = generic
            if skip:
                dropped.append(table)
        elif "=" in stripped and not stripped.startswith("#") and not skip:
            key = stripped.split("=", 1)[0].strip()
            if f"{table}.{key}" not in accepted:
                dropped.append(f"{table}.{key}")
                continue
        if not skip:
            kept.append(line)
    return "\n".join(kept) + "\n", dropped


def write_gateway_config(
    folder: Path,
    servers: str,
    *,
    security: bool = False,
    log_level: str = "WARNING",
    principal: str = "local",
    policy_data: Path | None = None,
    extra: str = "",
    data_dir: Path | None = None,
    tree: Path | None = None,
) -> Path:
    """A ``symbi.toml`` in ``folder`` with ``servers`` (TOML text) as its only upstreams.

    ``security=False`` turns policy and audit off explicitly, to measure the forwarding core;
    ``security=True`` keeps the defaults (policy from ``policies.rego`` with ``policy_data``
    or the repo's ``policies/data.json``, signed audit log). ``principal`` is the stdio caller.
    ``tree``: the config is for the gateway of that checkout (``--baseline-tree``): keys its
    config refuses (newer than it, e.g. ``mcp.stdio_fast_lane``) are left out, and said on stderr.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "[gateway]",
        f'data_dir = "{data_dir or folder / "data"}"',
        f'log_level = "{log_level}"',
        "[gateway.stdio_principal]",
        f'id = "{principal}"',
        "[sandbox]",
        "code_tools = false",
    ]
    if security:
        data = policy_data or ROOT / "policies" / "data.json"
        lines += ["[policy]", f'path = "{ROOT / "policies.rego"}"', f'data = "{data}"']
    else:
        lines += ["[security]", "enforce_policies = false", "audit_enabled = false"]
    text = "\n".join(lines) + "\n" + extra + "\n" + servers + "\n"
    if tree is not None:
        text, dropped = keep_accepted(text, accepted_keys(tree))
        if dropped:
            print(f"{folder.name}: {tree} does not know {', '.join(dropped)}: left out", file=sys.stderr)
    path = folder / "symbi.toml"
    path.write_text(text)
    return path


def bench_policy_data(folder: Path, principal: str | Sequence[str], extra_tools: Sequence[str] = ()) -> Path:
    """The repo's policy data plus ``principal`` (one name or several) as developers without
    rate limits, over stdio and with an API key.

    The default data caps ``local`` at 120 calls a minute; a benchmark makes thousands,
    and measures the policy's cost, not its limit (the policy still decides every call).
    """
    data = json.loads((ROOT / "policies" / "data.json").read_text())
    cfg = data["symbi_data"]
    names = [principal] if isinstance(principal, str) else list(principal)
    for name in names:
        for ns in ("stdio", "keys"):  # the bench principal over stdio or with an API key
            cfg["principals"].setdefault(ns, {})[name] = {
                "roles": ["developer"],
                "rate_limit": 10**9,
                "max_calls_per_hour": 0,
            }
    cfg["roles"]["developer"]["tools"] += list(extra_tools)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy-data.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def baseline_policy_data(folder: Path, tree: Path) -> Path:
    """Checkout ``tree``'s own ``policies/data.json`` with the bench principal ``bench``
    unthrottled, for that tree's ``policies.rego`` (an older gateway may not give this tree's
    policy the input it reads). Both layouts of the principals are handled (flat, or by source)."""
    data = json.loads((tree / "policies" / "data.json").read_text())
    principals = data["symbi_data"]["principals"]
    entry = {"roles": ["developer"], "rate_limit": 10**9, "max_calls_per_hour": 0}
    (principals["stdio"] if "stdio" in principals else principals)["bench"] = entry
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy-data.json"
    path.write_text(json.dumps(data))
    return path


def write_http_gateway_config(
    folder: Path,
    port: int,
    servers: str,
    principals: Sequence[str],
    *,
    json_response: bool = False,
    max_sessions: int | None = None,
    max_connections: int | None = None,
    data_dir: Path | None = None,
    http_fast_lane: bool = True,
) -> Path:
    """The ``symbi serve`` config of the HTTP benchmarks (``folder/symbi.toml``): the repo's
    ``policies.rego`` with ``principals`` (API key names) unthrottled, the signed audit log,
    ``servers`` (TOML text) as upstreams, no access log. ``data_dir`` defaults to
    ``folder/data`` (where the API keys file must be)."""
    http = [f"port = {port}", f"json_response = {str(json_response).lower()}", "access_log = false"]
    if max_sessions is not None:
        http.append(f"max_sessions = {max_sessions}")
    extra = "[http]\n" + "\n".join(http) + "\n"
    mcp = [] if http_fast_lane else ["http_fast_lane = false"]  # unset: the default (on)
    if max_connections is not None:
        mcp.append(f"max_concurrent_connections = {max_connections}")
    if mcp:
        extra += "[mcp]\n" + "\n".join(mcp) + "\n"
    data = bench_policy_data(folder, principals)
    return write_gateway_config(
        folder, servers, security=True, policy_data=data, extra=extra, data_dir=data_dir
    )


def everything_toml(verification: str, url: str | None = None) -> str:
    """server-everything as the ``everything`` upstream: over stdio, or at ``url``."""
    where = f'url = "{url}"' if url else f'command = "node"\nargs = ["{EVERYTHING_JS}", "stdio"]'
    return f'[servers.everything]\n{where}\nverification = "{verification}"\n'


@contextlib.asynccontextmanager
async def echo_gateway(
    tmp: Path, principal: str, *, security: bool = True, policy_data: Path | None = None
) -> AsyncIterator[Any]:
    """The gateway as ``make_gateway`` assembles it, in this process, in front of server-everything
    over stdio (``tofu``; ``off`` and no policy or audit without ``security``), once its echo tool
    is listed: the in-process benches' gateway. Imports this tree's gateway only when entered."""
    from gateway.assemble import make_gateway
    from gateway.config.load import load_config

    mode = "tofu" if security else "off"
    cfg = write_gateway_config(
        tmp, everything_toml(mode), security=security, principal=principal, policy_data=policy_data
    )
    gw = make_gateway(load_config(cfg))
    async with gw.running():
        for _ in range(600):  # the upstream's tools arrive once it has started
            if "everything__echo" in gw.catalog.tools:
                break
            await anyio.sleep(0.05)
        yield gw


def echo_caller(gw: Any, principal: str) -> tuple[Any, Callable[[int], Awaitable[None]]]:
    """``principal`` as the stdio front makes a caller (a developer, its agent for session
    ``s1``) and its ``tools/call`` of ``everything__echo`` number i through ``gw``, in this process:
    the in-process benches' unit of work. Imports this tree's gateway only when called."""
    import dataclasses

    from gateway.context import CallContext, Principal

    base = Principal(id=principal, roles=("developer",), source="stdio")
    agent = gw.agents.for_session(base, "bench-client", "s1")
    who = dataclasses.replace(base, agent=agent.id)

    async def call(i: int) -> None:
        ctx = CallContext(
            principal=who,
            agent=gw.agents.info(who.agent),
            kind="tools/call",
            target="everything__echo",
            arguments={"message": f"m{i}"},
            session_id="s1",
        )
        result = await gw.call(ctx)
        assert not result.is_error, result

    return who, call


def loaded_gateway_tree() -> str:
    """The checkout whose ``gateway`` package this process imported (a baseline tree's or this
    one): a result says which code it measured."""
    return str(Path(sys.modules["gateway"].__file__ or "").resolve().parent.parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with output to ``log``, terminated (by its pid) on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def text_of(result: Any) -> str | None:
    """The first text block of a CallToolResult, or None when it is an error or has none."""
    if getattr(result, "is_error", False):
        return None
    for block in getattr(result, "content", None) or []:
        text = getattr(block, "text", None)
        if text is not None:
            return str(text)
    return None
