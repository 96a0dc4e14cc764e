"""Profile the default-config ``tools/call`` path: ``symbi mcp`` under py-spy while callers load it.

    .venv/bin/python bench/profile_call.py [--seconds 8] [--callers 8] [--top 25] [--raw FILE]

The gateway runs as in bench/speed.py's ``gateway_secure`` (the repo's ``policies.rego``, signed
audit log, ``tofu`` verification, server-everything ``echo`` upstream) and profiled with
``py-spy record -f raw --pid`` after 50 warm-up calls (400 Hz, non-blocking, idle samples
excluded), for ``--seconds`` of load (``--checks-off``: as ``gateway_off``, policy, audit and
verification off). Callers are SDK clients on one session. Prints a
Markdown summary: samples by thread, the top frames by self time and by inclusive time.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import collections
import os
import re
import shutil
import subprocess
import tempfile
import time

import anyio

from bench._common import (
    SYMBI,
    bench_policy_data,
    everything_toml,
    gateway_env,
    stdio_session,
    text_of,
    write_gateway_config,
)

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/gateway/", "python3.11/"):
        if marker in path:
            path = ("gateway/" if marker == "/gateway/" else "") + path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarise(raw: Path, top: int) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0].split(": ", 1)[-1]] += count  # "thread (tid): name"
        frames = [_short(f) for f in frames if not f.startswith(("thread", "process"))]
        if frames:
            self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"samples: {total}", "", "| thread | % |", "| --- | --- |"]
    out += [f"| {t} | {100 * c / total:.1f} |" for t, c in threads.most_common(6)]
    out += ["", "| self time | % |", "| --- | --- |"]
    out += [f"| `{f}` | {100 * c / total:.1f} |" for f, c in self_t.most_common(top)]
    out += ["", "| inclusive time (gateway frames) | % |", "| --- | --- |"]
    gw = [(f, c) for f, c in incl.most_common() if "gateway/" in f]
    out += [f"| `{f}` | {100 * c / total:.1f} |" for f, c in gw[:top]]
    return "\n".join(out)


def _pid_of(cfg: Path) -> int:
    """The gateway's pid: the process whose command line names this run's config."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(cfg).encode() in argv and any(a.endswith(b"symbi") for a in argv):
                return int(entry.name)
    raise RuntimeError("gateway process not found")


async def load(cfg: Path, raw: Path, args: argparse.Namespace) -> int:
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    calls = 0
    async with stdio_session(
        str(SYMBI), ["mcp", "--config", str(cfg)], gateway_env(), raw.with_suffix(".stderr")
    ) as s:
        for i in range(50):  # warm: start-up and first-call costs stay out of the profile
            assert text_of(await s.call_tool("everything__echo", {"message": f"warm{i}"})) == f"Echo: warm{i}"
        cmd = [
            pyspy,
            "record",
            "-r",
            "400",
            "-f",
            "raw",
            "--nonblocking",
            "--threads",
            "-o",
            str(raw),
            "-d",
            str(int(args.seconds)),
            "--pid",
            str(_pid_of(cfg)),
        ]
        # Popen returns at once; py-spy runs beside the load and is waited for in a thread
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        await anyio.sleep(0.5)  # py-spy attaches
        end = time.monotonic() + args.seconds

        async def caller(c: int) -> None:
            nonlocal calls
            i = 0
            while time.monotonic() < end:
                msg = f"c{c}-{i}"
                if text_of(await s.call_tool("everything__echo", {"message": msg})) != f"Echo: {msg}":
                    raise RuntimeError(f"bad reply to {msg}")
                calls += 1
                i += 1

        async with anyio.create_task_group() as tg:
            for c in range(args.callers):
                tg.start_soon(caller, c)
        await anyio.to_thread.run_sync(spy.wait)
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--raw", type=Path, default=None)
    ap.add_argument(
        "--sdk-front", action="store_true", help="the stdio fast lane off (mcp.stdio_fast_lane = false)"
    )
    ap.add_argument(
        "--checks-off",
        action="store_true",
        help="policy, audit and verification off (bench/speed.py's gateway_off): the forwarding core",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="symbi-profile-"))
    data = bench_policy_data(tmp, "bench", [])
    mcp = "[mcp]\n" + ("stdio_fast_lane = false\n" if args.sdk_front else "")
    if args.checks_off:
        mcp += 'tool_verification = "off"\n'
    cfg = write_gateway_config(
        tmp,
        everything_toml("off" if args.checks_off else "tofu"),
        security=not args.checks_off,
        principal="bench",
        policy_data=data,
        extra=mcp,
    )
    raw = args.raw or tmp / "profile.txt"
    t0 = time.monotonic()
    calls = anyio.run(load, cfg, raw, args)
    wall = time.monotonic() - t0
    print(
        f"calls: {calls} in {args.seconds:g} s of load ({calls / args.seconds:.0f}/s), {wall:.1f} s in all; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(summarise(raw, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
