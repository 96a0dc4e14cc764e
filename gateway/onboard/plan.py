"""What an import would write: server names made valid and unique, secrets moved out.

Every ``env`` and ``headers`` value is treated as a secret (a client config does not say
which are): it moves to the environment file and ``symbi.toml`` holds a ``${VAR}`` reference.
References the client wrote (``${NAME}``, ``${NAME:-default}``, VS Code's ``${input:..}``) stay
references; in a value that mixes them with text (``Bearer ${TOKEN}``) the text stays unless it
looks like a secret itself. In ``args`` and the ``url``, what is recognisably a secret (a
provider key, a token after ``--api-key``, a ``?token=`` query value, a URL password) moves too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from gateway.config.model import SERVER_NAME_RE
from gateway.onboard.clients import FoundServer
from gateway.policy.redact import holds_secret, scrub_secrets

# Built-in upstreams own these names (their tools are NAME__tool).
RESERVED = frozenset({"sandbox", "bus", "memory", "knowledge", "agents", "symbi"})
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
# text around references that is no secret: "Bearer ", "Basic ", "postgres://app:", "@db:5432/x"
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 ._:/@?&=#%+-]{0,63}|[ ._:/@?&=#%+-]{1,8}")
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_+/=-]{16,}")
_SECRET_WORD = re.compile(r"(?i)(?:key|token|secret|passw(?:or)?d|pwd|auth|credential|sig(?:nature)?)")
_FLAG = re.compile(r"^(--?[A-Za-z0-9][A-Za-z0-9_-]*)(=(.*))?$", re.DOTALL)
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$", re.DOTALL)  # docker -e NAME=VALUE


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

    @property
    def needed(self) -> list[str]:
        """Variables its references name that the import does not provide (the user sets them
        in the env file or the environment; a reference to nothing is refused at start)."""
        out: set[str] = set()
        for s in self.servers:
            for m in _REF.finditer(repr(dict(s.table))):
                if m.group(1) not in s.secrets and ":-" not in m.group(0):
                    out.add(m.group(1))
        return sorted(out)


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

    def move(key: str, value: str) -> str:
        var = "SYMBI_" + re.sub(r"[^A-Za-z0-9]", "_", f"{name}_{key}").upper()
        n = 1
        while var in secrets and secrets[var] != value:
            n += 1
            var = re.sub(r"_\d+$", "", var) + f"_{n}"
        secrets[var] = value
        return "${" + var + "}"

    def ref(key: str, value: str) -> str:
        """An env or header value: a reference, or text with references, or a secret."""
        if not _REF.search(value):
            return move(key, value)
        out, pos, n = [], 0, 0
        for n, m in enumerate(_REF.finditer(value)):
            out.append(_text(value[pos : m.start()], f"{key}_{n}", move))
            out.append(m.group(0))
            pos = m.end()
        out.append(_text(value[pos:], f"{key}_{n + 1}", move))
        return "".join(out)

    table: dict[str, Any] = {}
    if f.transport == "stdio":
        table["command"] = f.command
        if f.args:
            table["args"] = _args(list(f.args), move)
        if f.env:
            table["env"] = {k: ref(k, v) for k, v in f.env.items()}
        if f.cwd:
            table["cwd"] = f.cwd
    else:
        table["url"] = _url(str(f.url), move)
        if f.headers:
            table["headers"] = {k: ref(k, v) for k, v in f.headers.items()}
    # imported servers are pending until a person approves their tools: under strict that is an
    # organisation key signing them into this manifest (``symbi tools approve --key``)
    table["verification"] = "strict"
    table["approved"] = f"approved-{name}.json"
    return PlannedServer(f, name, table, secrets)


def _text(chunk: str, key: str, move: Callable[[str, str], str]) -> str:
    """Literal text between references: kept when it is plainly no secret."""
    if not chunk or (_PLAIN.fullmatch(chunk) and not _LONG_TOKEN.search(chunk) and not holds_secret(chunk)):
        return chunk
    return move(key, chunk)


def masked_args(args: list[str]) -> list[str]:
    """A command line to show: what ``symbi import`` would move to the env file is ``***``;
    in an argument that holds more than a key (``sh -c 'curl ...|sh # AKIA...'``) only the key
    is: the rest is what the server runs, for the person deciding to see."""
    return _args(args, lambda _key, _value: "***", inside=secrets_masked)


def secret_named(name: str) -> bool:
    """Whether a variable or flag name says it holds a secret (``API_KEY``, ``--token``)."""
    return _SECRET_WORD.search(name) is not None


def secrets_masked(text: str) -> str:
    """``text`` with each recognisable secret in it (a provider key, a token) ``***``."""
    return scrub_secrets(text, replacement="***")[0]


def _args(
    args: list[str], move: Callable[[str, str], str], inside: Callable[[str], str] | None = None
) -> list[str]:
    """Recognisable secrets in a command line: provider keys anywhere, and the value of a
    ``--api-key``/``--token``-like flag (``--token X`` or ``--token=X``); ``inside``, when
    given, makes an argument that holds a key among other text (the key is moved otherwise)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        prev = _FLAG.match(args[i - 1]) if i else None
        flag = _FLAG.match(arg)
        if _REF.fullmatch(arg):
            out.append(arg)
        elif flag and flag.group(3) and _SECRET_WORD.search(flag.group(1)) and not _REF.search(flag.group(3)):
            out.append(f"{flag.group(1)}={move('arg_' + flag.group(1).lstrip('-'), flag.group(3))}")
        elif prev and not prev.group(2) and _SECRET_WORD.search(prev.group(1)) and not flag:
            out.append(move("arg_" + prev.group(1).lstrip("-"), arg))
        elif (a := _ASSIGN.match(arg)) and _SECRET_WORD.search(a.group(1)) and not _REF.search(a.group(2)):
            out.append(f"{a.group(1)}={move('arg_' + a.group(1), a.group(2))}")
        elif holds_secret(arg):
            out.append(move(f"arg_{i}", arg) if inside is None else inside(arg))
        else:
            out.append(arg)
    return out


def _url(url: str, move: Callable[[str, str], str]) -> str:
    """A URL's password and its secret-named query values move to the env file."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password and not _REF.fullmatch(parts.password):
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:{move('url_password', parts.password)}@{host}"
    query, moved = [], False
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if v and (_SECRET_WORD.search(k) or holds_secret(v)) and not _REF.fullmatch(v):
            query.append(f"{quote(k, safe='')}={move(f'url_{k}', v)}")
            moved = True
        else:
            query.append(f"{quote(k, safe='')}={quote(v, safe='${}:-')}")
    if moved or netloc != parts.netloc:
        return urlunsplit(
            (parts.scheme, netloc, parts.path, "&".join(query) if moved else parts.query, parts.fragment)
        )
    return url
