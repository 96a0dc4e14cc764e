"""The MCP client config files on this machine, and their server entries.

Formats (as each client documents them):
- Claude Desktop ``claude_desktop_config.json``: ``{"mcpServers": {name: {command, args, env}}}``;
  macOS ``~/Library/Application Support/Claude/``, Windows ``%APPDATA%\\Claude\\``, Linux
  ``~/.config/Claude/``.
- Claude Code: project ``.mcp.json`` (``mcpServers``), user ``~/.claude.json`` (``mcpServers``
  at the top: user scope; ``projects[<dir>].mcpServers``: local scope); remote entries are
  ``{"type": "http" | "sse", "url", "headers"}``.
- VS Code ``.vscode/mcp.json``: ``{"servers": {...}, "inputs": [...]}``, entries with ``type``
  ``stdio`` | ``http`` | ``sse``; ``${input:id}`` and ``${env:NAME}`` references.
- Cursor ``~/.cursor/mcp.json`` and project ``.cursor/mcp.json``: ``mcpServers``, stdio or
  ``{url, headers}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ConfigError
from gateway.filestamp import Stamp, file_stamp
from gateway.textcheck import not_utf8_at

# ~/.claude.json keeps Claude Code's history too (megabytes); no client config is near this
MAX_CLIENT_FILE_BYTES = 64 * 1024 * 1024
ClientName = Literal["claude-desktop", "claude-code", "vscode", "cursor", "file"]
CLIENTS: tuple[ClientName, ...] = ("claude-desktop", "claude-code", "vscode", "cursor")


@dataclass(frozen=True)
class ClientFile:
    """One client config file; ``section`` is where its server table lives in the JSON."""

    client: ClientName
    path: Path
    scope: str  # "user" | "project" | "local" | "file"
    section: tuple[str, ...] = ("mcpServers",)


@dataclass(frozen=True)
class FoundServer:
    """One server entry as the client wrote it (no renaming, no secrets moved yet)."""

    source: ClientFile
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    transport: Literal["stdio", "http", "sse"] = "stdio"


def client_file_candidates(
    home: Path, cwd: Path, environ: Mapping[str, str], platform: str = sys.platform
) -> list[ClientFile]:
    """Every known client config file that exists for this user and project folder, read or not
    (``has_servers`` tells which hold a servers table)."""
    candidates = [
        ClientFile("claude-desktop", _claude_desktop_path(home, environ, platform), "user"),
        ClientFile("claude-code", cwd / ".mcp.json", "project"),
        ClientFile("claude-code", home / ".claude.json", "user"),
        ClientFile("claude-code", home / ".claude.json", "local", ("projects", str(cwd), "mcpServers")),
        ClientFile("vscode", cwd / ".vscode" / "mcp.json", "project", ("servers",)),
        ClientFile("cursor", home / ".cursor" / "mcp.json", "user"),
        ClientFile("cursor", cwd / ".cursor" / "mcp.json", "project"),
    ]
    return [c for c in candidates if c.path.is_file()]


def has_servers(source: ClientFile) -> bool:
    """Whether the file holds the client's servers table. Raises ``ConfigError`` when it cannot
    be read or is not JSON (a file being written, or a broken one)."""
    return _section(_load(source.path), source.section) is not None


def find_client_files(
    home: Path, cwd: Path, environ: Mapping[str, str], platform: str = sys.platform
) -> list[ClientFile]:
    """Every known client config file of this user and project folder that holds servers; a
    file that cannot be read raises ``ConfigError`` naming it (``symbi import``)."""
    return [c for c in client_file_candidates(home, cwd, environ, platform) if has_servers(c)]


def file_source(path: Path) -> ClientFile:
    """``symbi import --from FILE``: the format is told by its keys."""
    doc = _load(path)
    if "mcpServers" in doc:
        return ClientFile("file", path, "file")
    if "servers" in doc:
        return ClientFile("file", path, "file", ("servers",))
    raise ConfigError(f"{path}: no 'mcpServers' or 'servers' table: not an MCP client config")


def read_client_file(source: ClientFile) -> list[FoundServer]:
    """The server entries of one client file, each checked for a usable shape."""
    return servers_in(source, _load(source.path))


def servers_in(source: ClientFile, doc: Mapping[str, Any]) -> list[FoundServer]:
    """The server entries of ``source``'s section of ``doc`` (its file, parsed)."""
    table = _section(doc, source.section) or {}
    inputs = {i.get("id"): i for i in doc.get("inputs", []) if isinstance(i, dict)}
    where = f"{source.path}: {'.'.join(source.section)}"
    out = []
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}.{name}: must be an object")
        out.append(_entry(source, str(name), entry, inputs, f"{where}.{name}"))
    return out


class ReadWhenChanged:
    """The server entries of client files, a file parsed again only when it changed
    (``gateway.filestamp``), and once for all its scopes: discovery reads them every pass, and
    ``json.loads`` of a 24 MB ``~/.claude.json`` (Claude Code keeps its history there; its user
    and local scopes are both in it) holds the interpreter lock about a second, stalling the
    gateway's event loop. A file that cannot be read raises ``ConfigError`` every time.
    ``load`` parses a file (the bounded ``_load``; a test counts with its own)."""

    def __init__(self, load: Callable[[Path], dict[str, Any]] | None = None) -> None:
        self._load = load if load is not None else _load
        self._seen: dict[Path, tuple[Stamp, dict[ClientFile, list[FoundServer]]]] = {}

    def servers(self, sources: Sequence[ClientFile]) -> dict[ClientFile, list[FoundServer]]:
        """The server entries of each of ``sources``, the scopes of one file (one path)."""
        path = sources[0].path
        key = file_stamp(path)
        if key is None:
            raise ConfigError(f"{path}: cannot read: missing or not ours to look at")
        seen = self._seen.get(path)
        if seen is not None and seen[0] == key and all(s in seen[1] for s in sources):
            return {s: seen[1][s] for s in sources}
        self._seen.pop(path, None)
        doc = self._load(path)  # once for every scope (no servers table: none)
        servers = {s: servers_in(s, doc) for s in sources}
        self._seen[path] = (key, servers)
        return servers


def _entry(
    source: ClientFile, name: str, e: dict[str, Any], inputs: Mapping[Any, Any], where: str
) -> FoundServer:
    kind = str(e.get("type") or ("stdio" if "command" in e else "http"))
    if kind in ("streamable-http", "streamableHttp"):
        kind = "http"
    if kind not in ("stdio", "http", "sse"):
        raise ConfigError(f"{where}.type: {kind!r} is not stdio, http or sse")
    known = _predefined(source)

    def ref(v: object, at: str) -> str:
        # a number or null where the client wants text: written as "None" it became a secret
        if not isinstance(v, str):
            raise ConfigError(f"{where}.{at}: must be a string")
        return _ref(v, inputs, known, f"{where}.{at}")

    for key in ("env", "headers"):
        if not isinstance(e.get(key) or {}, dict):
            raise ConfigError(f"{where}.{key}: must be an object")
    env = {str(k): ref(v, f"env.{k}") for k, v in (e.get("env") or {}).items()}
    headers = {str(k): ref(v, f"headers.{k}") for k, v in (e.get("headers") or {}).items()}
    if kind == "stdio":
        if not isinstance(e.get("command"), str) or not e["command"]:
            raise ConfigError(f"{where}.command: a stdio server needs a command")
        args = e.get("args") or []
        if not isinstance(args, list):
            raise ConfigError(f"{where}.args: must be a list")
        return FoundServer(
            source,
            name,
            command=ref(e["command"], "command"),
            args=tuple(ref(a, f"args[{i}]") for i, a in enumerate(args)),
            env=env,
            cwd=ref(e["cwd"], "cwd") if e.get("cwd") else None,
            transport="stdio",
        )
    url = e.get("url") or e.get("serverUrl")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: a remote server needs an http(s) url")
    return FoundServer(
        source, name, url=ref(url, "url"), headers=headers, transport="sse" if kind == "sse" else "http"
    )


def launches_symbi(s: FoundServer) -> bool:
    """An entry that starts this gateway (what ``--apply`` writes, or a teammate's): importing
    it would make the gateway its own upstream, a process starting itself without end."""
    if s.name == "symbi" or "SYMBI_CONFIG_PATH" in s.env:
        return True
    return s.command is not None and Path(s.command).name in ("symbi", "symbi.exe") and "mcp" in s.args


def _predefined(source: ClientFile) -> dict[str, str]:
    """VS Code's predefined variables (``${workspaceFolder}``...): known at import time, and no
    secrets, so they are written out (symbi has no workspace)."""
    if source.section != ("servers",):
        return {}
    folder = source.path.parent
    if folder.name == ".vscode":
        folder = folder.parent
    return {
        "workspaceFolder": str(folder),
        "workspaceRoot": str(folder),
        "workspaceFolderBasename": folder.name,
        "userHome": str(Path.home()),
        "pathSeparator": "/",
        "/": "/",
    }


def _ref(
    value: str, inputs: Mapping[Any, Any], known: Mapping[str, str] | None = None, where: str = ""
) -> str:
    """VS Code's ``${input:id}`` / ``${env:NAME}`` become ``${NAME}`` references (never values);
    its predefined variables (``known``) are written out."""
    for var, text in (known or {}).items():
        value = value.replace("${" + var + "}", text)
    out = value
    for prefix in ("${input:", "${env:"):
        while prefix in out:
            start = out.index(prefix)
            end = out.find("}", start)
            if end < 0:  # a ValueError here ended the import, and every discovery pass, raw
                raise ConfigError(f"{where}: {prefix}... is not closed with '}}'")
            ident = out[start + len(prefix) : end]
            var = "".join(ch if ch.isalnum() else "_" for ch in ident).upper()
            out = out[:start] + "${" + var + "}" + out[end + 1 :]
    return out


def _section(doc: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = doc
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def _load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:  # bounded: discovery reads these files on every pass
            raw = f.read(MAX_CLIENT_FILE_BYTES + 1)
        if len(raw) > MAX_CLIENT_FILE_BYTES:
            raise ConfigError(f"{path}: more than {MAX_CLIENT_FILE_BYTES} bytes: not an MCP client config")
        doc = json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: byte {e.start} is not UTF-8") from None
    except RecursionError:  # [[[[... a few thousand deep: no client writes that
        raise ConfigError(f"{path}: nested too deeply to be an MCP client config") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be an object")
    # json.loads makes a lone surrogate of the escape "\\ud800": symbi.toml, symbi.env and the
    # client's rewritten file could not be written with it (a traceback, half an import)
    if (bad := not_utf8_at(doc)) is not None:
        raise ConfigError(f"{path}: the text at {bad} is not valid UTF-8")
    return doc


load_json = _load  # the same bounded read for Claude Code's settings files (claude_trust)


def _claude_desktop_path(home: Path, environ: Mapping[str, str], platform: str) -> Path:
    if platform == "darwin":
        return home / "Library" / "Application Support" / "Claude" / "claude_desktop_config.json"
    if platform.startswith("win"):
        return (
            Path(environ.get("APPDATA", str(home / "AppData" / "Roaming")))
            / "Claude"
            / "claude_desktop_config.json"
        )
    return home / ".config" / "Claude" / "claude_desktop_config.json"
