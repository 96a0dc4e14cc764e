"""Build the one ``Config`` from a TOML file plus the environment, or fail naming the key.

The environment is read here and nowhere else: callers pass ``environ`` explicitly (the
CLI passes ``os.environ``), so tests and embedders control it.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # stdlib, not in typeshed

from pydantic import ValidationError

from gateway.config.context_section import embedder_in_use
from gateway.config.model import Config
from gateway.config.urls import proxy_address
from gateway.errors import ConfigError
from gateway.textcheck import not_utf8_at

_logger = logging.getLogger("symbi.config")

# env var -> (section, key, parser). Documented in examples/symbi.toml and the README.
_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "enabled": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "disabled": False,
}


def _bool(name: str, raw: str) -> bool:
    try:
        return _BOOL[raw.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not a boolean (true/false, enabled/disabled)"
        ) from None


ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "SYMBI_LOG_LEVEL": ("gateway", "log_level"),
    "SYMBI_LOG_FORMAT": ("gateway", "log_format"),
    "SYMBI_DATA_DIR": ("gateway", "data_dir"),
    "SYMBI_RUNTIME_MODE": ("runtime", "mode"),
    "SYMBI_CRYPTO_PROVIDER": ("security", "crypto_provider"),
    "SYMBI_AUDIT_STORAGE": ("audit", "path"),
    "QDRANT_URL": ("context", "vector_db_url"),
    "OPENAI_API_KEY": ("context", "openai_api_key"),
    "OPENAI_BASE_URL": ("context", "openai_base_url"),
    "MCP_SERVER_DISCOVERY": ("mcp", "discovery_enabled"),
    # OpenTelemetry's own names for the two settings collectors are usually given by
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("telemetry", "otlp_endpoint"),
    "OTEL_SERVICE_NAME": ("telemetry", "service_name"),
    # shared state of replicas: secrets in deployments (a Kubernetes Secret, compose env)
    "SYMBI_STATE_REDIS_URL": ("state", "redis_url"),
    # the address a replica listens on in its pod/container (Kubernetes: the pod IP)
    "SYMBI_HTTP_HOST": ("http", "host"),
    "SYMBI_STATE_POSTGRES_URL": ("state", "postgres_url"),
    # the bus secret replicas on one Redis bus share (base64 of 32 bytes)
    "SYMBI_BUS_SECRET": ("bus", "secret"),
    # the bearer token of a remote OPA server ([policy] engine = "opa")
    "SYMBI_POLICY_TOKEN": ("policy", "token"),
}
_BOOL_ENV = {"MCP_SERVER_DISCOVERY"}
_UPPER_ENV = {"SYMBI_LOG_LEVEL"}
_FOLDER_ENV = {"SYMBI_AUDIT_STORAGE"}
AUDIT_FILE = "audit.db"
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _audit_storage(raw: str) -> str:
    """The seed gives a folder (``/var/log/symbi/audit``): the log is ``audit.db`` in it.

    A path ending in ``.db``/``.sqlite`` (or an existing file) still names the file itself.
    """
    p = Path(raw).expanduser()
    if p.suffix in _DB_SUFFIXES or p.is_file():
        return raw
    return str(p / AUDIT_FILE)


_PATH_KEYS = {
    ("gateway", "data_dir"),
    ("gateway", "env_file"),
    ("mcp", "discovery_registry_dir"),
    ("policy", "path"),
    ("policy", "data"),
    ("policy", "tls_ca"),
    ("audit", "path"),
    ("audit", "key_path"),
    ("audit", "checkpoint_export"),
    ("http", "api_keys_path"),
}


# OpenAI's own variables, which other tools in the same shell read too: applied where the
# [context] embedder uses them (openai, or auto with a key), and otherwise left out, so a
# shell's OPENAI_API_KEY beside embedder = "local" is no key without effect (refused)
# (with [context] enabled = false, QDRANT_URL too, which Qdrant's own tools read: nothing of the
# section is read then, and a key the file gives there is refused, see ContextSection.idle_keys)
_OPENAI_ENV = {"OPENAI_API_KEY", "OPENAI_BASE_URL"}


def _context_env_used(name: str, doc: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
    ctx = doc.get("context")
    ctx = ctx if isinstance(ctx, dict) else {}
    if ctx.get("enabled", True) is False:
        return False
    if name not in _OPENAI_ENV:
        return True
    embedder = ctx.get("embedder", "auto")
    if embedder not in ("auto", "local", "openai", "hashing"):
        return False  # the model names the bad value
    return embedder_in_use(embedder, environ.get("OPENAI_API_KEY") or ctx.get("openai_api_key")) == "openai"


def _jwks_proxy_from_env(doc: dict[str, Any], environ: Mapping[str, str]) -> None:
    """``$https_proxy`` (or ``$HTTPS_PROXY``) as ``http.jwt.jwks_proxy`` when the file sets none
    and the IdP is reached over https, unless ``$no_proxy`` names its host: an IdP reachable
    only through the proxy other tools of the shell use is reached through it too. One it
    cannot use (socks, credentials) is warned about and not used: the fetch goes direct."""
    http = doc.get("http")
    jwt = http.get("jwt") if isinstance(http, dict) else None
    if not isinstance(jwt, dict) or "jwks_proxy" in jwt or not isinstance(jwt.get("jwks_url"), str):
        return
    name = next((n for n in ("https_proxy", "HTTPS_PROXY") if environ.get(n)), None)
    try:
        url = urlsplit(jwt["jwks_url"])
    except ValueError:
        return  # the model names the bad URL
    host = url.hostname
    if name is None or url.scheme != "https" or not host:
        return
    no = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if no and proxy_bypass_environment(host, {"no": no}):
        return
    value = environ[name] if "://" in environ[name] else f"http://{environ[name]}"  # curl's form
    try:
        proxy_address(value)
    except ValueError as e:  # a shell's proxy for other tools: not a reason to refuse the start
        _logger.warning(
            "%s is not used for http.jwt.jwks_url: %s (set http.jwt.jwks_proxy to an "
            'http:// proxy, or to "direct" to silence this)',
            name,
            e,
        )
        return
    jwt = doc["http"]["jwt"] = dict(jwt)
    jwt["jwks_proxy"] = value


def admin_api_key_from_env(environ: Mapping[str, str]) -> str | None:
    """``$SYMBI_API_KEY``: the admin key the CLI uses to reach a running gateway's admin API."""
    return environ.get("SYMBI_API_KEY") or None


def config_path_from_env(environ: Mapping[str, str]) -> Path | None:
    raw = environ.get("SYMBI_CONFIG_PATH")
    return Path(raw) if raw else None


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (or ``$SYMBI_CONFIG_PATH``), apply env overrides, validate.

    Raises:
        ConfigError: the file is missing or unreadable, is not TOML, or a key is unknown,
            of the wrong type, or missing; the message names the key and the file.
    """
    environ = environ if environ is not None else {}
    path = path or config_path_from_env(environ)
    raw: dict[str, Any] = {}
    where = "<defaults>"
    base = Path.cwd()
    if path is not None:
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{where}: cannot read config file: {e.strerror or e}") from None
        except UnicodeDecodeError as e:  # TOML is UTF-8 (tomllib itself refuses "\ud800")
            raise ConfigError(f"{where}: not valid TOML: byte {e.start} is not valid UTF-8") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: not valid TOML: {e}") from None
        base = path.resolve().parent
    return build_config(raw, where=where, base=base, environ=environ, source=path)


def build_config(
    raw: dict[str, Any],
    *,
    where: str = "<defaults>",
    base: Path | None = None,
    environ: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> Config:
    """Validate a parsed TOML document (see ``load_config``)."""
    base = base or Path.cwd()
    doc: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    if "source" in doc:
        raise ConfigError(f"{where}: unknown key 'source'")
    for name, (section, key) in ENV_OVERRIDES.items():
        value = (environ or {}).get(name)
        if value is None or value == "":
            continue
        if section == "context" and not _context_env_used(name, doc, environ or {}):
            continue
        parsed: Any = value
        if name in _BOOL_ENV:
            parsed = _bool(name, value)
        elif name in _UPPER_ENV:
            parsed = value.upper()
        elif name in _FOLDER_ENV:
            parsed = _audit_storage(value)
        sect = doc.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        sect[key] = parsed
    _jwks_proxy_from_env(doc, environ or {})
    # references first: a server's cwd or command may be "${HOME}/..." (resolved after)
    _expand_references(doc, base, where, environ or {})
    _resolve_paths(doc, base, where)
    bad = not_utf8_at(doc)
    if bad is not None:  # from the environment (surrogateescape): no log or record could hold it
        raise ConfigError(f"{where}: the text at {bad} is not valid UTF-8")
    try:
        cfg = Config.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(
            _describe(e, where), reasons=[_describe_one(err, where) for err in e.errors()]
        ) from None
    for option in cfg.unsafe_options():
        if option.replacement is not None:
            _logger.warning(
                "%s: %s is deprecated: use %s (%s)", where, option.key, option.replacement, option.effect
            )
    return cfg.model_copy(update={"source": source.resolve() if source else None})


def _resolve_paths(doc: dict[str, Any], base: Path, where: str) -> None:
    for section, key in _PATH_KEYS:
        sect = doc.get(section)
        if isinstance(sect, dict) and isinstance(sect.get(key), str):
            sect[key] = str(_under(base, sect[key]))
    gw = doc.get("gateway")
    if not (isinstance(gw, dict) and "data_dir" in gw):
        doc.setdefault("gateway", {})
        if isinstance(doc["gateway"], dict):
            doc["gateway"]["data_dir"] = str(base / ".symbi")
    http = doc.get("http")
    jwt = http.get("jwt") if isinstance(http, dict) else None
    if isinstance(jwt, dict) and isinstance(jwt.get("jwks_file"), str):
        http["jwt"] = {**jwt, "jwks_file": str(_under(base, jwt["jwks_file"]))}  # type: ignore[index]
    mcp = doc.get("mcp")
    if isinstance(mcp, dict) and isinstance(mcp.get("discovery_ca"), str):
        mcp["discovery_ca"] = str(_under(base, mcp["discovery_ca"]))
    if isinstance(mcp, dict) and isinstance(mcp.get("org_keys"), list):
        mcp["org_keys"] = [str(_under(base, p)) if isinstance(p, str) else p for p in mcp["org_keys"]]
    servers = doc.get("servers")
    if isinstance(servers, dict):
        for srv in servers.values():
            if not isinstance(srv, dict):
                continue
            for key in ("cwd", "approved"):
                if isinstance(srv.get(key), str):
                    srv[key] = str(_under(base, srv[key]))
            # A relative command means the same wherever symbi starts. The folder a server
            # runs in when `cwd` is not set is decided at launch (gateway/upstream/runas.py):
            # never the config folder inside a sandbox, where it would expose the data dir.
            if isinstance(srv.get("command"), str):
                cmd = srv["command"]
                if "/" in cmd and not cmd.startswith("/"):
                    srv["command"] = str(_under(base, cmd))


def _under(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _describe_one(err: Any, where: str) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-"))
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    elif err.get("type") == "missing":
        msg = "required key is missing"
    return f"{where}: {loc or '<top>'}: {msg}"


def _describe(e: ValidationError, where: str) -> str:
    lines = [_describe_one(err, where) for err in e.errors()]
    return "invalid configuration:\n" + "\n".join(f"  {line}" for line in lines)


# ``${NAME}``, or ``${NAME:-default}`` (Claude Code's spelling: the default when NAME is unset)
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# where a server's references are expanded (the fields MCP clients expand them in)
_REF_FIELDS = ("command", "args", "cwd", "url", "env", "headers")


def _expand_references(doc: dict[str, Any], base: Path, where: str, environ: Mapping[str, str]) -> None:
    """``${NAME}`` in a server's command, args, cwd, url, env and headers values: from
    ``gateway.env_file`` (a dotenv file readable by its owner only, what ``symbi import``
    writes), then the environment. A reference to nothing (without a ``:-default``) is an
    error naming the key: never an empty secret."""
    servers = doc.get("servers")
    if not isinstance(servers, dict):
        return
    gw = doc.get("gateway") if isinstance(doc.get("gateway"), dict) else {}
    env_file = gw.get("env_file") if isinstance(gw, dict) else None
    values: dict[str, str] = {}
    if isinstance(env_file, str):
        values = _read_env_file(_under(base, env_file), where)
    for name, srv in servers.items():
        if not isinstance(srv, dict):
            continue
        for field_name in _REF_FIELDS:
            value = srv.get(field_name)
            key = f"servers.{name}.{field_name}"
            if isinstance(value, str) and "${" in value:
                srv[field_name] = _expand(value, values, environ, where, key)
            elif isinstance(value, list):
                srv[field_name] = [
                    _expand(v, values, environ, where, f"{key}[{i}]")
                    if isinstance(v, str) and "${" in v
                    else v
                    for i, v in enumerate(value)
                ]
            elif isinstance(value, dict):
                for k, raw in list(value.items()):
                    if isinstance(raw, str) and "${" in raw:
                        value[k] = _expand(raw, values, environ, where, f"{key}.{k}")


def _expand(raw: str, values: Mapping[str, str], environ: Mapping[str, str], where: str, key: str) -> str:
    return _REF.sub(lambda m: _lookup(m.group(1), m.group(2), values, environ, where, key), raw)


def _lookup(
    var: str, default: str | None, values: Mapping[str, str], environ: Mapping[str, str], where: str, key: str
) -> str:
    if var in values:
        return values[var]
    if var in environ:
        return environ[var]
    if default is not None:
        return default
    raise ConfigError(f"{where}: {key}: ${{{var}}} is set neither in gateway.env_file nor in the environment")


def _read_env_file(path: Path, where: str) -> dict[str, str]:
    from dotenv import dotenv_values

    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"{where}: gateway.env_file {path}: {e.strerror or e}") from None
    if mode & 0o077:
        raise ConfigError(
            f"{where}: gateway.env_file {path} holds secrets and is readable by others "
            f"(mode {mode & 0o777:o}): chmod 600 it"
        )
    return {k: v for k, v in dotenv_values(path).items() if v is not None}
