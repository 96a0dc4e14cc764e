"""``symbi sandbox run|doctor|cleanup``: run a command in a tier, check the tiers, sweep orphans."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import HELP, whole_number
from gateway.errors import ConfigError

# the config and the sandbox tiers are imported as a command runs, not at `symbi sandbox`'s parse
if TYPE_CHECKING:
    from gateway.sandbox import SandboxManager

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]?)i?b?$", re.IGNORECASE)
_TIME_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m)?$", re.IGNORECASE)


def parse_memory_mb(raw: str) -> int:
    """'256m', '1g', '512' (MiB) -> MiB."""
    m = _SIZE_RE.match(raw.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad memory size {raw!r} (e.g. 256m, 1g)")
    n, unit = float(m.group(1)), m.group(2).lower()
    mb = n / 1024 if unit == "k" else n * 1024 if unit == "g" else n
    if mb < 16:
        raise argparse.ArgumentTypeError("memory must be at least 16m")
    return int(mb)


def parse_seconds(raw: str) -> float:
    """'10s', '500ms', '2m', '10' (seconds) -> seconds."""
    m = _TIME_RE.match(raw.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {raw!r} (e.g. 10s, 500ms)")
    n, unit = float(m.group(1)), (m.group(2) or "s").lower()
    s = n / 1000 if unit == "ms" else n * 60 if unit == "m" else n
    if s <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return s


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sandbox", help=HELP["sandbox"])
    ssub = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND", required=True)

    run = ssub.add_parser("run", help="run a command inside a tier (exit code = the command's)")
    run.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    run.add_argument("--tier", required=True, choices=("bwrap", "docker", "gvisor"))
    run.add_argument("--memory", type=parse_memory_mb, default=None, help="memory limit, e.g. 256m")
    run.add_argument("--timeout", type=parse_seconds, default=None, help="wall-time limit, e.g. 10s")
    run.add_argument("--pids", type=whole_number(1), default=None, help="max processes/threads")
    run.add_argument("--cpus", type=float, default=None, help="CPU quota, e.g. 0.5")
    run.add_argument("--output", type=whole_number(0), default=None, help="max bytes kept per output stream")
    run.add_argument("--stdin", action="store_true", help="pass this process's stdin to the command")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    run.set_defaults(func=_run)

    doctor = ssub.add_parser("doctor", help="table of tiers: available yes/no and why (exit 0 if all)")
    doctor.add_argument("--config", type=Path, default=None)
    doctor.set_defaults(func=_doctor)

    cleanup = ssub.add_parser("cleanup", help="remove leftovers of dead gateway processes")
    cleanup.add_argument("--config", type=Path, default=None)
    cleanup.set_defaults(func=_cleanup)


def _manager(args: argparse.Namespace, *, sweep: bool = True) -> SandboxManager:
    from gateway.config import load_config
    from gateway.sandbox import SandboxManager

    return SandboxManager(load_config(args.config, args.environ), sweep_orphans=sweep)


def _run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("symbi sandbox run: a command is required after --")
    from gateway.sandbox import SandboxRequest

    manager = _manager(args)
    try:
        limits = manager.limits(
            memory_mb=args.memory,
            timeout_s=args.timeout,
            pids=args.pids,
            cpus=args.cpus,
            output_bytes=args.output,
        )
        stdin = sys.stdin.buffer.read() if args.stdin else None
        result = manager.run(args.tier, SandboxRequest(command=tuple(cmd), stdin=stdin), limits)
    finally:
        manager.close()
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    if result.truncated:
        print("symbi: output truncated", file=sys.stderr)
    if result.killed != "none":
        print(f"symbi: stopped: {result.killed} limit exceeded (tier {result.tier})", file=sys.stderr)
        return 1
    return result.exit_code


def _doctor(args: argparse.Namespace) -> int:
    manager = _manager(args, sweep=False)
    try:
        table = manager.doctor()
    finally:
        manager.close()
    width = max(len(n) for n in table)
    print(f"{'tier':<{width}}  available  reason")
    for name, (ok, reason) in table.items():
        print(f"{name:<{width}}  {'yes' if ok else 'no':<9}  {reason}")
    return 0 if all(ok for ok, _ in table.values()) else 1


def _cleanup(args: argparse.Namespace) -> int:
    manager = _manager(args, sweep=False)
    try:
        removed = manager.cleanup_orphans()
    finally:
        manager.close()
    for r in removed:
        print(f"removed {r}")
    print(f"{len(removed)} leftover(s) removed")
    return 0
