"""``symbi discover list [--json]``: servers found by discovery (mcp.discovery_enabled), with
their state: quarantined (not started, until ``symbi tools approve SERVER --expect DIGEST``),
approved, removed; and each one's digest, which names the config shown in an approval."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gateway.cli import HELP


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("discover", help=HELP["discover"])
    dsub = p.add_subparsers(dest="discover_command", metavar="SUBCOMMAND", required=True)
    ls = dsub.add_parser("list", help="discovered servers")
    ls.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    from gateway.config import load_config  # here, not at the parse: ~0.2 s of CPU
    from gateway.onboard.discovery import discovery_store

    cfg = load_config(args.config, args.environ)
    entries = discovery_store(cfg).entries()
    if args.json:
        listed = [
            {**d.described(), "unresolved": d.unresolved(), "digest": d.digest()} for d in entries.values()
        ]
        print(json.dumps(listed, indent=2))
        return 0
    for d in sorted(entries.values(), key=lambda d: d.name):
        print(f"{d.name:32} {d.status:12} {d.original_name} ({d.source})")
        print(f"{'':32} launches: {d.launches()}")  # what approving it runs
        print(f"{'':32} digest:   {d.digest()}")  # an approval names it (--expect)
        if (why := d.unresolved()) is not None:  # why approving it is refused
            print(f"{'':32} cannot be approved: {why}")
    if not entries:
        print("nothing discovered" + ("" if cfg.mcp.discovery_enabled else " (mcp.discovery_enabled is off)"))
    return 0
