"""Write an import: ``[servers.*]`` into symbi.toml, secrets into the env file, and the
client's config rewritten to launch ``symbi mcp`` (the original kept for ``--undo``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomlkit
from dotenv import dotenv_values, set_key

from gateway.custody import write_atomic
from gateway.errors import ConfigError
from gateway.onboard.clients import ClientFile
from gateway.onboard.plan import ImportPlan

BACKUP_SUFFIX = ".symbi-backup"
RECORD_SUFFIX = ".symbi-import"


def render_toml(config: Path, plan: ImportPlan, env_file: Path) -> str:
    """symbi.toml as it would be after the import (existing content kept as written)."""
    doc = tomlkit.parse(config.read_text(encoding="utf-8")) if config.exists() else tomlkit.document()
    if plan.secrets:
        gw = doc.setdefault("gateway", tomlkit.table())
        gw.setdefault("env_file", _relative(env_file, config.parent))
    servers = doc.setdefault("servers", tomlkit.table(is_super_table=True))
    for s in plan.servers:
        if s.name in servers:
            raise ConfigError(f"{config}: servers.{s.name} exists already")
        table = tomlkit.table()
        # repr: a folder named with a line break or a control character is no TOML comment
        table.comment(
            f"imported from {s.found.source.client} ({str(s.found.source.path)!r}) as {s.found.name!r}"
        )
        for k, v in s.table.items():
            table[k] = _inline(v) if isinstance(v, dict) else v
        servers[s.name] = table
    return tomlkit.dumps(doc)


def apply_plan(config: Path, plan: ImportPlan, env_file: Path) -> None:
    """Secrets first (0600), then symbi.toml: a failure never leaves references to nothing."""
    text = render_toml(config, plan, env_file)
    if plan.secrets:
        write_secrets(env_file, plan.secrets)
    write_atomic(config, text.encode(), mode=0o600)


def write_secrets(env_file: Path, secrets: dict[str, str]) -> None:
    if not env_file.exists():
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    os.chmod(env_file, 0o600)
    existing = dotenv_values(env_file)
    for key, value in secrets.items():
        if key in existing and existing[key] != value:
            raise ConfigError(f"{env_file}: {key} is set already to another value")
        set_key(str(env_file), key, value, quote_mode="always")


def client_entry(symbi: str, config: Path, source: ClientFile) -> dict[str, Any]:
    # the config path travels in env (every client format has it), not as --config
    entry: dict[str, Any] = {
        "command": symbi,
        "args": ["mcp"],
        "env": {"SYMBI_CONFIG_PATH": str(config.resolve())},
    }
    if source.section == ("servers",):  # VS Code entries carry their type
        entry = {"type": "stdio", **entry}
    return entry


def rewrite_client(
    sources: Sequence[tuple[ClientFile, Sequence[str]]], symbi: str, config: Path
) -> tuple[str, str]:
    """One client config file launches ``symbi mcp`` in place of the imported servers, in each
    of its server tables given (``~/.claude.json`` has a user and a project-local one).
    Returns (before, after) texts; the original bytes are kept beside it, and a record of what was written, for ``--undo``."""
    paths = {s.path for s, _ in sources}
    if len(paths) != 1:
        raise ValueError(f"rewrite_client: one file at a time, not {sorted(map(str, paths))}")
    path = paths.pop()
    backup = backup_path(path)
    if os.path.lexists(backup) or os.path.lexists(record_path(path)):  # a dangling symlink too
        raise ConfigError(f"{path}: already rewritten by symbi (run `symbi import --undo` first)")
    raw = path.read_bytes()
    doc = json.loads(raw)
    for source, imported in sources:
        node = doc
        for key in source.section[:-1]:
            node = node[key]
        table = node[source.section[-1]]
        for name in imported:
            table.pop(name, None)
        table["symbi"] = client_entry(symbi, config, source)
    after = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    mode = os.stat(path).st_mode & 0o777
    record = {
        "sha256": hashlib.sha256(after.encode()).hexdigest(),
        "tables": [{"section": list(s.section), "names": list(names)} for s, names in sources],
    }
    write_atomic(backup, raw, mode=mode)  # the original first: never a rewrite without it
    write_atomic(record_path(path), json.dumps(record).encode())
    write_atomic(path, after.encode(), mode=mode)
    return raw.decode("utf-8", errors="replace"), after


def backup_path(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def record_path(path: Path) -> Path:
    """What the import wrote to the client's file (its digest, the tables and names it
    changed): ``--undo`` tells from it whether the client wrote to its file since."""
    return path.with_name(path.name + RECORD_SUFFIX)


def _inline(d: dict[str, Any]) -> Any:
    t = tomlkit.inline_table()
    t.update(d)
    return t


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())
