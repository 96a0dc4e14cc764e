"""What an import would write: server names made valid and unique, secrets moved out.

Every ``env`` and ``headers`` value is treated as a secret (a client config does not say
which are): it moves to the environment file and ``symbi.toml`` holds a ``${VAR}`` reference.
Values that already are references (``${NAME}``, VS Code's ``${input:..}``) stay references.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config.model import SERVER_NAME_RE
from gateway.onboard.clients import FoundServer

# Built-in upstreams own these names (their tools are NAME__tool).
RESERVED = frozenset({"sandbox", "bus", "memory", "knowledge", "agents", "symbi"})
_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


@dataclass(frozen=True)
class PlannedServer:
    found: FoundServer
    name: str  # the name in symbi.toml
    table: Mapping[str, Any]  # the [servers.NAME] table, values as references
    secrets: Mapping[str, str] = field(default_factory=dict)  # env-file variable -> value


@dataclass(frozen=True)
class ImportPlan:
    servers: tuple[PlannedServer, ...]

    @property
    def secrets(self) -> dict[str, str]:
        return {k: v for s in self.servers for k, v in s.secrets.items()}


def make_plan(found: Iterable[FoundServer], taken: Iterable[str] = ()) -> ImportPlan:
    used = set(taken) | RESERVED
    planned = []
    for f in found:
        name = unique_name(f.name, used)
        used.add(name)
        planned.append(_plan_one(f, name))
    return ImportPlan(tuple(planned))


def valid_name(raw: str) -> str:
    """A server name symbi accepts: [A-Za-z0-9][A-Za-z0-9_-]{0,31}, no '__', no trailing '_'."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", raw.strip())
    name = re.sub(r"_{2,}", "_", name).strip("-_")[:32].rstrip("-_")
    if not name or not name[0].isalnum():
        name = ("s-" + name)[:32].rstrip("-_") if name else "server"
    assert SERVER_NAME_RE.match(name) and "__" not in name, name
    return name


def unique_name(raw: str, used: set[str]) -> str:
    base = valid_name(raw)
    name, n = base, 1
    while name.lower() in {u.lower() for u in used}:
        n += 1
        suffix = f"-{n}"
        name = base[: 32 - len(suffix)].rstrip("-_") + suffix
    return name


def _plan_one(f: FoundServer, name: str) -> PlannedServer:
    secrets: dict[str, str] = {}

    def ref(kind: str, key: str, value: str) -> str:
        if _REF.match(value):
            return value
        var = "SYMBI_" + re.sub(r"[^A-Za-z0-9]", "_", f"{name}_{key}").upper()
        secrets[var] = value
        return "${" + var + "}"

    table: dict[str, Any] = {}
    if f.transport == "stdio":
        table["command"] = f.command
        if f.args:
            table["args"] = list(f.args)
        if f.env:
            table["env"] = {k: ref("env", k, v) for k, v in f.env.items()}
        if f.cwd:
            table["cwd"] = f.cwd
    else:
        table["url"] = f.url
        if f.headers:
            table["headers"] = {k: ref("header", k, v) for k, v in f.headers.items()}
    # imported servers are pending until a person approves their tools
    table["verification"] = "strict"
    return PlannedServer(f, name, table, secrets)
