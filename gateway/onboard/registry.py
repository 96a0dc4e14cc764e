"""MCP registry ``server.json`` documents (``mcp.discovery_registry_dir``): the launch config
each one describes, for discovery to quarantine. Package names are checked as their registry
names them: they become one argument of npx/uvx/docker, never an option."""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.filestamp import Stamp, file_stamp
from gateway.onboard.clients import MAX_CLIENT_FILE_BYTES
from gateway.textcheck import not_utf8_at, shown

_logger = logging.getLogger("symbi.discovery")


# (source, name, table) of one server.json
Entry = tuple[str, str, dict[str, Any]]


class RegistryFolder:
    """The servers of a folder of ``server.json`` documents, each file parsed again only when
    it changed (``gateway.filestamp``), as discovery's client files are: discovery lists the
    folder every pass, and parsed every document of it each time."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[Stamp, Entry | None]] = {}

    def servers(self, folder: Path) -> tuple[list[Entry], set[str]]:
        """(source, name, table) of each ``server.json`` (MCP registry format) in ``folder``, and
        the files that could not be read this pass (half-written: what they hold is unknown,
        not gone; left out, their running server was stopped as removed, then restarted).

        A folder that is not there (or no folder) holds none.

        Raises:
            ConfigError: the folder cannot be listed this pass (its mode, or its parent's:
                glob listed it as empty, every server of it marked removed and an approved one
                stopped; ``is_dir`` raised out of the pass).
        """
        try:
            paths = sorted(p for p in folder.iterdir() if p.name.endswith(".json"))
        except (FileNotFoundError, NotADirectoryError):
            return [], set()
        except OSError as e:
            raise ConfigError(f"{shown(str(folder))}: the registry folder cannot be listed: {e}") from None
        out: list[Entry] = []
        unread: set[str] = set()
        seen: dict[Path, tuple[Stamp, Entry | None]] = {}  # the files gone are forgotten
        for path in paths:
            stamp = file_stamp(path)
            if stamp is None or not path.is_file():  # a FIFO named x.json held the pass forever
                continue
            kept = self._seen.get(path)
            if kept is not None and kept[0] == stamp:
                entry = kept[1]
            else:
                try:
                    entry = _entry(path)
                except _NotYet:  # a half-written file is read on the next pass
                    unread.add(str(path))
                    continue
            seen[path] = (stamp, entry)
            if entry is not None:  # a copy: the table is the caller's to keep
                out.append((entry[0], entry[1], copy.deepcopy(entry[2])))
        self._seen = seen
        return out, unread


class _NotYet(Exception):
    """A file that could not be read or parsed now (being written): not remembered."""


def _entry(path: Path) -> Entry | None:
    """The server ``path`` describes (None: none; skipped for good until it changes)."""
    try:
        with path.open("rb") as f:  # bounded as the client files are: read on every change
            raw = f.read(MAX_CLIENT_FILE_BYTES + 1)
        if len(raw) > MAX_CLIENT_FILE_BYTES:
            _logger.warning(
                "discovery: %s skipped: more than %d bytes", shown(str(path)), MAX_CLIENT_FILE_BYTES
            )
            return None
        doc = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        raise _NotYet from None
    except RecursionError:  # nested a thousand deep: no registry document
        _logger.warning("discovery: %s skipped: nested too deeply", shown(str(path)))
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        return None
    if (bad := not_utf8_at(doc)) is not None:  # json.loads made a lone surrogate of "\\ud800"
        # its name would go into the audit record and the config, which cannot hold it
        _logger.warning("discovery: %s skipped: the text at %s is not valid UTF-8", shown(str(path)), bad)
        return None
    table = _registry_table(doc)
    return None if table is None else (str(path), doc["name"].rsplit("/", 1)[-1], table)


def _registry_table(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    for remote in doc.get("remotes") or []:
        if isinstance(remote, Mapping) and str(remote.get("url", "")).startswith(("http://", "https://")):
            return {"url": remote["url"]}
    for pkg in doc.get("packages") or []:
        if not isinstance(pkg, Mapping) or not pkg.get("identifier"):
            continue
        ident, version = str(pkg["identifier"]), pkg.get("version")
        kind = pkg.get("registryType") or pkg.get("registry_type")
        pattern = _PACKAGE.get(str(kind))
        if pattern is None:
            continue
        if not pattern.fullmatch(ident) or (version is not None and not _VERSION.fullmatch(str(version))):
            # they become one argument of npx/uvx/docker: "--call=sh -c ..." was an option
            # (npx ran it), and nothing shows the arguments to the person approving the server
            _logger.warning("discovery: %r is not a %s package name: skipped", shown(ident), kind)
            continue
        if kind == "npm":
            return {"command": "npx", "args": ["-y", f"{ident}@{version}" if version else ident]}
        if kind == "pypi":
            return {"command": "uvx", "args": [f"{ident}=={version}" if version else ident]}
        if kind == "oci":
            return {
                "command": "docker",
                "args": ["run", "-i", "--rm", f"{ident}:{version}" if version else ident],
            }
    return None


# The registry's package identifiers, as each registry names packages (never an option: no
# leading '-', no spaces, no URL or path for npx/uvx to fetch instead)
_PACKAGE = {
    "npm": re.compile(r"^(?:@[a-z0-9~][a-z0-9._~-]*/)?[a-z0-9~][a-z0-9._~-]{0,213}$"),
    "pypi": re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?$"),
    "oci": re.compile(
        r"^[a-z0-9][a-z0-9._-]*(?::[0-9]{1,5})?(?:/[a-z0-9][a-z0-9._-]*)+$|^[a-z0-9][a-z0-9._-]*$"
    ),
}
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
