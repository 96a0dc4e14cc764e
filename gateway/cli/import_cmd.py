"""``symbi import``: bring the MCP servers of Claude Desktop, Claude Code, VS Code or Cursor
under the gateway.

- ``symbi import``: the client configs found here and what an import would write (nothing is
  written).
- ``symbi import CLIENT --apply``: writes their servers into symbi.toml (strict verification:
  pending until approved), their env/header values into the 0600 env file, and rewrites the
  client's config to launch ``symbi mcp`` (the original kept beside it).
- ``symbi import --from FILE [--dry-run | --apply]``: the same for one file.
- ``symbi import [CLIENT | --from FILE] --undo [--force]``: puts the client's original config
  back; what the client wrote to it since is kept (only the import's entries go back), and an
  undo that would lose some of it is refused unless ``--force``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import HELP
from gateway.errors import ConfigError
from gateway.onboard.clients import CLIENTS

# gateway.onboard's plan, apply and undo (the config models and the policy redaction: ~0.8 s
# of CPU) are imported as the command runs, not at `symbi import`'s parse
if TYPE_CHECKING:
    from gateway.onboard.claude_managed import ClaudeCodeManaged
    from gateway.onboard.clients import ClientFile, FoundServer
    from gateway.onboard.plan import ImportPlan, PlannedServer


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("import", help=HELP["import"])
    p.add_argument("client", nargs="?", choices=CLIENTS, help="the client whose servers to import")
    p.add_argument("--from", dest="from_file", type=Path, default=None, help="an MCP client config file")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="symbi.toml to write (default $SYMBI_CONFIG_PATH or ./symbi.toml)",
    )
    p.add_argument(
        "--env-file", type=Path, default=None, help="where secrets go (default symbi.env beside it)"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="write symbi.toml and rewrite the client's config")
    mode.add_argument("--dry-run", action="store_true", help="show what would be written (the default)")
    mode.add_argument("--undo", action="store_true", help="restore the client's original config")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --undo: put the original back whole even when that loses the client's later changes",
    )
    p.add_argument("--symbi", default=None, help="the symbi executable the client should launch")
    p.add_argument("--json", action="store_true", help="machine-readable listing")
    p.add_argument(
        "--include-unapproved",
        action="store_true",
        help="also import Claude Code servers its managed policy blocks, and a project .mcp.json's"
        " servers rejected or never approved in Claude Code",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from gateway.onboard.apply import render_toml
    from gateway.onboard.claude_managed import ClaudeCodeManaged
    from gateway.onboard.clients import file_source, find_client_files, launches_symbi, read_client_file
    from gateway.onboard.plan import make_plan

    env = args.environ
    home = Path(env.get("HOME", str(Path.home())))
    config = args.config or Path(env.get("SYMBI_CONFIG_PATH") or "symbi.toml")
    env_file = args.env_file or config.with_name("symbi.env")
    if args.from_file is not None:
        files = [file_source(args.from_file)]
    else:
        files = [f for f in find_client_files(home, Path.cwd(), env) if args.client in (None, f.client)]
    if args.force and not args.undo:
        raise ConfigError("--force goes with --undo only")
    if args.undo:
        return _undo(files, args.force)
    if not files:
        print("no MCP client configs found" + (f" for {args.client}" if args.client else ""), file=sys.stderr)
        return 1
    found = [s for f in files for s in read_client_file(f)]
    for s in [s for s in found if launches_symbi(s)]:
        print(f"skipped {s.name!r} in {s.source.path}: it launches symbi itself", file=sys.stderr)
    found = [s for s in found if not launches_symbi(s)]
    if not args.include_unapproved:
        found = _approved_in_claude_code(found, home, ClaudeCodeManaged(home))
    found = _reachable_safely(found)
    plan = make_plan(found, taken=_existing_servers(config))
    if args.json:
        print(_plan_json(plan.servers))
    else:
        _show_plan(files, plan.servers)
    if plan.needed:
        print(
            f"to set in {env_file} or the environment before the gateway starts (the client "
            f"asked for them or read them from its environment): {', '.join(plan.needed)}",
            file=sys.stderr,
        )
    after = render_toml(config, plan, env_file)
    before = config.read_text(encoding="utf-8") if config.exists() else ""
    _diff(str(config), before, after)
    if not args.apply:
        print("\n(nothing written: add --apply, with a client name or --from FILE)", file=sys.stderr)
        return 0
    if args.client is None and args.from_file is None:
        raise ConfigError("--apply needs a client name or --from FILE (which configs to rewrite)")
    _apply(args, files, plan, config, env_file)
    return 0


def _approved_in_claude_code(
    found: list[FoundServer], home: Path, managed: ClaudeCodeManaged
) -> list[FoundServer]:
    """Claude Code starts only the servers its administrator's managed policy lets run and, of a
    project ``.mcp.json`` (it comes with the repository), those the user approved in its prompt;
    so does the import (the gateway would start the others' processes). The skipped ones are
    named with the reason."""
    from gateway.onboard.claude_trust import ClaudeCodeApprovals

    approvals: dict[Path, ClaudeCodeApprovals] = {}
    kept = []
    for s in found:
        if s.source.client != "claude-code":
            kept.append(s)
            continue
        why = managed.skipped(s)
        if why is None and s.source.scope == "project":
            folder = s.source.path.parent
            if folder not in approvals:
                approvals[folder] = ClaudeCodeApprovals(home, folder)
            why = approvals[folder].skipped(s.name)
        if why is None:
            kept.append(s)
        else:
            print(
                f"skipped {s.name!r} in {s.source.path}: {why} (--include-unapproved imports it)",
                file=sys.stderr,
            )
    return kept


def _reachable_safely(found: list[FoundServer]) -> list[FoundServer]:
    """A remote over plain http:// to another host is left with its client: the gateway refuses
    it at load (``servers.NAME.unsafe_plain_http``), and a config it cannot load would take the
    imported servers' place in the client along with the others."""
    from gateway.config.urls import https_or_loopback

    kept = []
    for s in found:
        if s.url is not None and not https_or_loopback(s.url):
            print(
                f"skipped {s.name!r} in {s.source.path}: plain http:// to another host (the gateway "
                "refuses it: use https://, or add it by hand with unsafe_plain_http = true)",
                file=sys.stderr,
            )
        else:
            kept.append(s)
    return kept


def _plan_json(servers: tuple[PlannedServer, ...]) -> str:
    """The plan for ``--json``: each server found, where, the name it gets, its secrets' names."""
    return json.dumps(
        [
            {
                "client": s.found.source.client,
                "file": str(s.found.source.path),
                "scope": s.found.source.scope,
                "name": s.found.name,
                "as": s.name,
                "transport": s.found.transport,
                "secrets": sorted(s.secrets),
            }
            for s in servers
        ],
        indent=2,
    )


def _apply(
    args: argparse.Namespace, files: list[ClientFile], plan: ImportPlan, config: Path, env_file: Path
) -> None:
    """``--apply``: symbi.toml and the env file written, then each client file rewritten once
    (its original kept). A file rewritten before is refused before anything is written."""
    from gateway.onboard.apply import apply_plan, backup_path, record_path, rewrite_client

    by_path: dict[Path, list[tuple[ClientFile, list[str]]]] = {}
    for f in files:  # one rewrite per file: ~/.claude.json holds two of Claude Code's tables
        names = [s.found.name for s in plan.servers if s.found.source == f]
        by_path.setdefault(f.path, []).append((f, names))
    for path in by_path:  # refuse before writing anything
        if os.path.lexists(backup_path(path)) or os.path.lexists(record_path(path)):
            raise ConfigError(f"{path}: already rewritten by symbi (run `symbi import --undo` first)")
    apply_plan(config, plan, env_file)
    symbi = args.symbi or str(Path(sys.executable).with_name("symbi"))
    for path, sections in by_path.items():
        old, new = rewrite_client(sections, symbi, config)
        _diff(str(path), old, new)
        print(f"{path}: now launches symbi (original kept at {backup_path(path)})", file=sys.stderr)
    print(
        f"imported {len(plan.servers)} server(s) into {config} with strict verification: their tools are "
        "pending until an organisation key signs them into servers.NAME.approved:\n"
        '  symbi schemapin keygen --out keys        # once; then [mcp] org_keys = ["keys/public_key.pem"]\n'
        f"  symbi scan --config {config}             # read what the tools say first\n"
        f"  symbi tools approve SERVER__TOOL --key keys/private_key.pem --config {config}",
        file=sys.stderr,
    )


def _undo(files: list[ClientFile], force: bool) -> int:
    from gateway.onboard.undo import undo_client

    done = 0
    for path in {f.path for f in files}:
        how = undo_client(path, force)
        if how == "restored":
            print(f"{path}: original restored", file=sys.stderr)
        elif how == "merged":
            print(f"{path}: changed since the import: only the import's entries put back", file=sys.stderr)
        done += how is not None
    if done == 0:
        print("nothing to undo", file=sys.stderr)
        return 1
    return 0


def _existing_servers(config: Path) -> list[str]:
    if not config.exists():
        return []
    import tomllib

    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{config}: not valid TOML: {e}") from None
    return list(doc.get("servers", {}))


def _show_plan(files: list[ClientFile], servers: tuple[PlannedServer, ...]) -> None:
    for f in files:
        print(f"{f.client} ({f.scope}): {f.path}")
    for s in servers:
        secret = f", {len(s.secrets)} secret(s) to the env file" if s.secrets else ""
        note = " (SSE: imported as streamable HTTP)" if s.found.transport == "sse" else ""
        print(f"  {s.found.name!r} -> servers.{s.name} ({s.found.transport}{secret}){note}")


def _diff(name: str, before: str, after: str) -> None:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"{name} (before)",
        tofile=f"{name} (after)",
    )
    sys.stdout.writelines(lines)
