"""Discovery (``mcp.discovery_enabled`` / ``MCP_SERVER_DISCOVERY``): watch the client config
files and a folder of MCP registry ``server.json`` documents; a server seen for the first
time is quarantined (not started: no process, no network, no secrets, nothing callable) until
a person approves it (``symbi tools approve SERVER``); removed servers are reported, and
stopped if they run (``gateway.tasks.discover``). The approval is for the launch config the
person saw: a removed server that comes back unchanged is approved again, changed it is
quarantined again. A server whose config holds a client's ``${...}`` reference (a prompt, the
client's environment: never filled in from the gateway's) cannot be approved; the listing says
why. Every discovery is on the audit record. State: ``<data_dir>/discovered.json`` (0600).

A server found in a Claude Code config follows its administrator's managed MCP policy
(``gateway.onboard.claude_managed``, applied by ``gateway.onboard.discovery_managed``), as
``symbi import claude-code`` does: approving one the policy blocks is refused with the reason,
and an approved one it blocks (a policy deployed since) is not started, or is stopped if it
runs. Which client a server came from and whose home it was found in are recorded when it is
found: an approval made under another ``HOME`` (``sudo``, a service account) applies the same
policy."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.model import Config, ServerConfig
from gateway.custody import write_atomic
from gateway.errors import ApprovalError, ConfigError, DefinitionChanged, ReviewedHashRequired
from gateway.events import Event, EventSink, LoggingSink
from gateway.logs import Outage
from gateway.onboard.clients import (
    ClientFile,
    FoundServer,
    ReadWhenChanged,
    client_file_candidates,
    launches_symbi,
)
from gateway.onboard.discovery_managed import ManagedPolicy
from gateway.onboard.plan import RESERVED, masked_args, secret_named, secrets_masked, unique_name
from gateway.onboard.registry import RegistryFolder
from gateway.onboard.statelock import state_locked
from gateway.verify import MIN_HASH_HEX, hash_prefix

_logger = logging.getLogger("symbi.discovery")


@dataclass(frozen=True)
class Discovered:
    name: str
    source: str  # the file it came from
    original_name: str
    table: Mapping[str, Any]  # the [servers.NAME] table it would run with
    status: str  # "quarantined" | "approved" | "removed"
    first_seen: float
    approved_by: str | None = None
    client: str | None = None  # the client whose file held it ("registry": the registry folder)
    home: str | None = None  # the home folder it was found through (its user's Claude Code settings)
    was: str | None = None  # a removed one's status before (its approval stands if it returns unchanged)
    salt: str | None = None  # keys its ``digest`` (a listing's digest is no test of a guessed secret)

    def digest(self) -> str:
        """What the person approving saw: a digest of the launch config (env and headers
        included), keyed with the entry's own random salt. An approval names it (``expect``):
        the file rewritten between the listing and the approval is refused, not approved."""
        config = json.dumps(self.table, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(f"{self.salt or ''}\0{config}".encode()).hexdigest()

    def from_claude_code(self) -> bool:
        """Whether Claude Code's managed policy rules it; an entry recorded before ``client``
        was is told by its file's name (Claude Code's are ``.claude.json`` and ``.mcp.json``)."""
        if self.client is not None:
            return self.client == "claude-code"
        return Path(self.source).name in (".claude.json", ".mcp.json")

    def as_dict(self) -> dict[str, Any]:
        """Its record in the discovery state."""
        return {**self.described(), "salt": self.salt}

    def described(self) -> dict[str, Any]:
        """Everything but its salt (``symbi discover list --json``: the operator's own listing)."""
        return {
            "name": self.name,
            "source": self.source,
            "original_name": self.original_name,
            "table": dict(self.table),
            "status": self.status,
            "first_seen": self.first_seen,
            "approved_by": self.approved_by,
            "client": self.client,
            "home": self.home,
            "was": self.was,
        }

    def unresolved(self) -> str | None:
        """Why it cannot run as its client would run it: a ``${...}`` reference (VS Code's
        ``${input:id}`` / ``${env:NAME}``, Claude Code's ``${NAME}``) is the client's to fill in
        (a prompt, the client's environment); the gateway never fills it from its own
        environment, and started with the literal text the server would lack its secret."""
        refs = [
            f"{at} ({secrets_masked(_reference_named(m))})"
            for at, text in _launch_values(self.table)
            for m in _REFERENCE.findall(text)
        ]
        if not refs:
            return None
        return (
            "unresolved references the client fills in and the gateway does not: "
            + ", ".join(refs)
            + "; write the values into the client's config (or import it with `symbi import`)"
        )

    def launches(self) -> str:
        """What approving it runs, for the person deciding, as a shell line: its folder, its
        environment and its command line (recognisable secrets in it masked, as ``symbi
        import`` would move them), or the URL without its query. Every variable is named; the
        values shown are those that change what runs or where it is fetched from
        (``NODE_OPTIONS``, ``LD_PRELOAD``, ``PATH``, a package index...), the others ``***``."""
        if "command" not in self.table:
            return str(self.table.get("url", "")).split("?", 1)[0]
        env = self.table.get("env") or {}
        shown_env = [f"{k}={_env_shown(str(k), str(v))}" for k, v in sorted(env.items())]
        args = masked_args([str(a) for a in self.table.get("args") or []])
        line = shlex.join([*shown_env, str(self.table["command"]), *args])
        cwd = self.table.get("cwd")
        return f"cd {shlex.quote(str(cwd))} && {line}" if cwd else line

    def public(self) -> dict[str, Any]:
        """For the admin API and the dashboard: what approving it runs, as ``symbi discover
        list`` shows it (``launches``: recognisable secrets in the arguments masked, a URL
        without its query); its env's values only where they change what runs, never its
        headers (a client config keeps secrets there)."""
        return {
            "name": self.name,
            "source": self.source,
            "original_name": self.original_name,
            "status": self.status,
            "transport": "stdio" if "command" in self.table else "http",
            "launches": self.launches(),  # the approver sees the arguments too: one masking
            "first_seen": self.first_seen,
            "approved_by": self.approved_by,
            "unresolved": self.unresolved(),  # why approving it is refused (None: it is not for that)
            "digest": self.digest(),  # an approval names it: the config shown, not one swapped in since
        }


# a client's variable reference as the table holds it (clients._ref wrote VS Code's as ${NAME})
_REFERENCE = re.compile(r"\$\{[^}]*\}")


# the variable a reference names: ${NAME}, ${env:NAME}, ${input:api-key}; not what follows it
_REFERENCE_NAME = re.compile(r"[A-Za-z_]\w*(?::[\w.][\w.-]*)?")


def _reference_named(ref: str) -> str:
    """``ref`` as a listing shows it: the variable it names, never the rest (Claude Code's
    ``${DB_PASSWORD:-hunter2}`` holds a default, often the secret itself: ``${DB_PASSWORD...}``)."""
    inner = ref[2:-1]
    name = m.group(0) if (m := _REFERENCE_NAME.match(inner)) else ""
    return f"${{{name}}}" if name == inner else f"${{{name}...}}"


def _launch_values(table: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(where, text) of every value of ``table`` that reaches the server or its launch."""
    out = [(k, str(table[k])) for k in ("command", "url", "cwd") if table.get(k) is not None]
    out += [(f"args[{i}]", str(a)) for i, a in enumerate(table.get("args") or [])]
    for part in ("env", "headers"):
        out += [(f"{part}.{k}", str(v)) for k, v in (table.get(part) or {}).items()]
    return out


# variables that change what a process runs, loads or fetches: a repository's .mcp.json with
# NODE_OPTIONS="--require ./.x.js" beside an ordinary npx line ran its own code once approved,
# and the approver saw only the npx line
_RUNS = re.compile(
    r"LD_\w+|DYLD_\w+|\w*PATH|NODE_\w+|NPM_CONFIG_\w+|PYTHON\w+|PIP_\w+|UV_\w+|BASH_ENV|ENV|PERL\w*"
    r"|RUBY\w+|\w*JAVA\w*_OPTIONS|CLASSPATH|DOCKER_\w+|GIT_\w+|\w*_PROXY|SSL_CERT_\w+|\w*CA_BUNDLE"
    # where tools read their own config (HOME=./.x with an .npmrc there setting node-options)
    r"|HOME|XDG_\w+|USERPROFILE|\w*APPDATA|TMPDIR|LUA_\w+|BUN_\w+|DENO_\w+",
    re.IGNORECASE,
)
# git's config from the environment: "KEY" here names a setting (core.sshCommand), not a secret
_GIT_CONFIG = re.compile(r"GIT_CONFIG_(KEY_\d+|COUNT)", re.IGNORECASE)


def _env_shown(name: str, value: str) -> str:
    if _GIT_CONFIG.fullmatch(name) or (_RUNS.fullmatch(name) and not secret_named(name)):
        return secrets_masked(value)
    if value.startswith(("./", "../", ".\\", "..\\")):  # a file of the folder it was found in
        return secrets_masked(value)
    return "***"


def _client_table(f: FoundServer) -> dict[str, Any]:
    if f.transport == "stdio":
        table: dict[str, Any] = {"command": f.command, "args": list(f.args)}
        if f.env:
            table["env"] = dict(f.env)
        if f.cwd:
            table["cwd"] = f.cwd
        return table
    return {"url": f.url, **({"headers": dict(f.headers)} if f.headers else {})}


def _seen_again(d: Discovered, table: dict[str, Any]) -> Discovered | None:
    """What a known server becomes when its file holds it (None: unchanged). A removed one
    that comes back is approved again only when it was and its launch config is the one
    approved; otherwise it is quarantined with the config its file holds now. So is an approved
    one whose config changed in its file: the approval was for the config the person saw (it is
    stopped if it runs, ``gateway.tasks.discover``), and its file no longer says to run that."""
    if d.status in ("approved", "quarantined") and table == d.table:
        return None
    if d.status == "removed" and d.was == "approved" and table == d.table:
        return replace(d, status="approved", was=None)
    return replace(d, table=table, status="quarantined", approved_by=None, was=None)


def _check_seen(d: Discovered, expect: str) -> None:
    """``ReviewedHashRequired`` unless ``expect`` is a digest (a prefix of one, at least
    ``MIN_HASH_HEX`` hex digits), ``DefinitionChanged`` unless it is ``d``'s. Neither message
    prints the current digest: copied from a refusal, it would approve a config unseen."""
    want = hash_prefix(expect)
    where = f"`symbi discover list` (the admin API's or the dashboard's listing) for {d.name!r}"
    if want is None:
        raise ReviewedHashRequired(
            f"discovered server {d.name!r}: an approval names the digest of the config you saw "
            f"({MIN_HASH_HEX} to 64 hex digits from {where})"
        )
    if not d.digest().startswith(want):
        raise DefinitionChanged(
            f"discovered server {d.name!r}: its config is not the one you saw ({want[:16]}...): "
            f"its file changed since; nothing approved, look again with {where}"
        )


def _discovered(d: Discovered, *, was: str | None = None) -> dict[str, Any]:
    """The ``server.discovered`` record of ``d``; ``was``: its status before, when it was known
    (back, or changed: "approved" is an approval its file's change took back)."""
    return {
        "server": d.name,
        "source": d.source,
        "original_name": d.original_name,
        "transport": "stdio" if "command" in d.table else "http",
        "status": d.status,
        **({"again": True, "was": was} if was is not None else {}),
    }


# which scope's entry a client runs when one name is in several scopes of one file
_SCOPE_FIRST = {"local": 0, "project": 1, "user": 2}


class Discovery:
    def __init__(
        self,
        state: Path,
        events: EventSink,
        *,
        home: Path,
        cwd: Path,
        environ: Mapping[str, str],
        registry_dir: Path | None,
        configured: frozenset[str],
        claude_managed: Path | None = None,
        files: ReadWhenChanged | None = None,
    ) -> None:
        self.state = state
        self._events = events
        self._home, self._cwd, self._environ = home, cwd, dict(environ)
        self._registry = registry_dir
        self._configured = configured
        self._claude_managed = claude_managed  # Claude Code's managed settings (None: this system's)
        # each pass parses only the client files that changed, each once for all its scopes
        self._files = files if files is not None else ReadWhenChanged()
        self._registry_files = RegistryFolder()  # and only the registry documents that changed
        # a folder that stays unlistable holds its servers as they were: said, not silent
        self._registry_outage = Outage(_logger, "registry folder listed again")

    def entries(self) -> dict[str, Discovered]:
        try:
            doc = json.loads(self.state.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{self.state}: unreadable discovery state: {e}") from None
        return {k: Discovered(**v) for k, v in doc.get("servers", {}).items()}

    def seen_now(self) -> tuple[list[tuple[str, str, str, dict[str, Any]]], set[str]]:
        """(client, source, name, table) of every server the client files and the registry
        folder hold now, and the files (client or registry) that could not be read this pass (a
        file being written, a broken one: what they held is unknown, not gone), or the registry
        folder when it cannot be listed (then so are all its files)."""
        found: list[tuple[str, str, str, dict[str, Any]]] = []
        unread: set[str] = set()
        scopes: dict[Path, list[ClientFile]] = {}  # ~/.claude.json: the user and local scopes
        for cf in client_file_candidates(self._home, self._cwd, self._environ):
            scopes.setdefault(cf.path, []).append(cf)
        for path, files in scopes.items():
            try:
                read = self._files.servers(files)  # one parse of a changed file, for every scope
            except ConfigError as e:
                unread.add(str(path))
                _logger.debug("client file %s not read this pass: %s", path, e.message)
                continue
            # a name in two scopes of one file is one server, the one its client runs (Claude
            # Code: local over project over user); both kept, each pass put the other's config
            # in the one entry (a flip-flop: an audit record and a rewrite every pass)
            files = sorted(files, key=lambda cf: _SCOPE_FIRST.get(cf.scope, len(_SCOPE_FIRST)))
            names: set[str] = set()
            for cf in files:
                for s in read[cf]:
                    if s.name not in names and not launches_symbi(s):
                        found.append((cf.client, str(path), s.name, _client_table(s)))
                    names.add(s.name)
        if self._registry is not None:
            try:
                entries, half_read = self._registry_files.servers(self._registry)
            except ConfigError as e:  # every file of it unread (``_removed``: by their folder)
                unread.add(str(self._registry))
                self._registry_outage.failed(
                    "registry folder not read, its servers kept as they were: %s", e.message
                )
                return found, unread
            self._registry_outage.worked()
            found += [("registry", *seen) for seen in entries]
            unread |= half_read  # an entry's source is its file's path
        return found, unread

    def poll(self) -> tuple[list[Discovered], list[Discovered]]:
        """One pass: returns (newly quarantined or back, newly removed); both are audited. A
        server of a client file that cannot be read this pass keeps its status (the next pass
        decides). One that comes back after its removal is approved again only with the launch
        config that was approved; a quarantined one's config follows its file."""
        with state_locked(self.state):  # an approval meanwhile is neither lost nor undoes the pass
            return self._poll()

    def _poll(self) -> tuple[list[Discovered], list[Discovered]]:
        known = self.entries()
        by_origin: dict[tuple[str, str], Discovered] = {}
        for d in sorted(known.values(), key=lambda d: (d.status == "removed", d.first_seen)):
            by_origin.setdefault((d.source, d.original_name), d)  # two of one origin: the first
        now, unread = self.seen_now()
        added: list[Discovered] = []
        used = set(known) | set(self._configured) | RESERVED
        handled: set[tuple[str, str]] = set()  # one origin twice in a pass: the first stands
        for client, src, original, table in now:
            if (src, original) in handled:
                continue
            handled.add((src, original))
            if (src, original) in by_origin:
                before = by_origin[(src, original)]
                if (again := _seen_again(before, table)) is not None:
                    known[again.name] = by_origin[(src, original)] = again
                    added.append(again)
                    self._events.emit(Event.SERVER_DISCOVERED, _discovered(again, was=before.status))
                continue
            name = unique_name(original, used)
            used.add(name)
            d = Discovered(
                name,
                src,
                original,
                table,
                "quarantined",
                time.time(),
                client=client,
                home=str(self._home),
                salt=secrets.token_hex(16),
            )
            known[name] = by_origin[(src, original)] = d
            added.append(d)
            self._events.emit(Event.SERVER_DISCOVERED, _discovered(d))
        removed = self._removed(known, {o: d.name for o, d in by_origin.items() if o in handled}, unread)
        unsalted = {n: replace(d, salt=secrets.token_hex(16)) for n, d in known.items() if d.salt is None}
        known.update(unsalted)  # an entry of an earlier gateway: its digest keyed from now on
        if added or removed or unsalted:
            self._save(known)
        return added, removed

    def _removed(
        self, known: dict[str, Discovered], seen: dict[tuple[str, str], str], unread: set[str]
    ) -> list[Discovered]:
        """Marks (in ``known``) and audits the servers gone from a file read this pass (``seen``:
        the entry of each origin found, by name): another entry of a found origin is gone too
        (an earlier gateway made two of one name in two scopes of a file)."""
        removed: list[Discovered] = []
        for name, d in list(known.items()):
            if (
                d.status != "removed"
                and d.source not in unread
                and str(Path(d.source).parent) not in unread  # a registry folder not listed
                and seen.get((d.source, d.original_name)) != name
            ):
                known[name] = replace(d, status="removed", was=d.status)
                removed.append(known[name])
                self._events.emit(Event.SERVER_REMOVED, {"server": name, "source": d.source, "was": d.status})
        return removed

    def managed_policy(self) -> ManagedPolicy:
        """Claude Code's managed MCP policy, read afresh (one a discovery pass, one an approval)."""
        return ManagedPolicy(self._home, self._claude_managed)

    def approve(self, name: str, by: str | None = None, *, expect: str | None = None) -> Discovered:
        """Approve a quarantined server: ``ApprovalError`` 404 when there is none of that name,
        409 (with the reason) when the managed policy blocks it or its config is in error.
        ``expect``: the ``digest`` of the config the person saw (a listing's); another one now
        (its file rewritten since) is ``DefinitionChanged`` 409, a missing ("") or malformed one
        ``ReviewedHashRequired`` 400. None approves the config as it is (the caller showed it)."""
        with state_locked(self.state):  # a pass meanwhile is neither lost nor undone
            return self._approve(name, by, expect)

    def _approve(self, name: str, by: str | None, expect: str | None) -> Discovered:
        known = self.entries()
        d = known.get(name)
        if d is None or d.status == "removed":
            raise ApprovalError(f"no discovered server named {name!r} (see `symbi discover list`)", 404)
        if (
            why := self.managed_policy().refusal(d)
        ) is not None:  # the organisation's rule, not the approver's
            raise ApprovalError(f"discovered server {name!r} cannot be approved: {why}", 409)
        if (why := d.unresolved()) is not None:  # it would start without its secret
            raise ApprovalError(f"discovered server {name!r} cannot be approved: {why}", 409)
        try:  # what the gateway would refuse to start is refused here, with its reason
            ServerConfig.model_validate({**d.table, "verification": "tofu"})
        except ValidationError as e:
            why = "; ".join(str(err.get("msg", "invalid")) for err in e.errors())
            # it exists, in a state that cannot be approved: a conflict with its reason, not a 404
            raise ApprovalError(f"discovered server {name!r} cannot be approved: {why}", 409) from None
        if expect is not None:
            _check_seen(d, expect)
        known[name] = replace(d, status="approved", approved_by=by)
        self._save(known)
        return known[name]

    def _save(self, entries: Mapping[str, Discovered]) -> None:
        """Written under ``state_locked`` (by ``poll`` and ``approve``, its only callers)."""
        self.state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the servers' env and headers (the client configs' secrets) are in it: a fresh 0600
        # file of a random name (O_EXCL), never one planted at a predictable name
        doc = {"servers": {k: v.as_dict() for k, v in entries.items()}}
        write_atomic(self.state, json.dumps(doc, indent=2, sort_keys=True).encode())


def discovery_store(config: Config, events: EventSink | None = None) -> Discovery:
    """The discovery ``config`` describes, the one construction from config: the gateway's
    watch (``gateway.tasks.discover``, with its event sink) and what the CLI and the admin API
    read and approve. Client files are looked for from the config's folder and the home folder."""
    return Discovery(
        config.discovered_path,
        events if events is not None else LoggingSink(),
        home=Path.home(),
        cwd=config.source.parent if config.source else Path.cwd(),
        environ={},
        registry_dir=config.mcp.discovery_registry_dir,
        configured=frozenset(config.servers),
    )
