"""Config: typed, frozen, validated at start; errors name the key and the file."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import build_config, load_config
from gateway.errors import ConfigError
from tests.conftest import run_symbi, write_config


def test_defaults_are_safe() -> None:
    cfg = build_config({})
    assert cfg.http.host == "127.0.0.1"
    assert cfg.mcp.tool_verification == "strict"
    assert cfg.security.enforce_policies and cfg.security.audit_enabled
    assert cfg.http.anonymous_principal is None


def test_config_is_frozen() -> None:
    cfg = build_config({})
    with pytest.raises(ValidationError):
        cfg.http.port = 1


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    p = write_config(tmp_path, '[servers.a]\ncommand = "./bin/srv"\n[policy]\npath = "p.rego"\n')
    cfg = load_config(p, {})
    assert cfg.servers["a"].command == str(tmp_path / "bin/srv")
    assert cfg.servers["a"].cwd is None  # decided at launch: see tests/upstream/test_runas.py
    assert cfg.policy.path == tmp_path / "p.rego"


def test_env_overrides_the_file(tmp_path: Path) -> None:
    p = write_config(tmp_path, '[gateway]\nlog_level = "INFO"\n')
    cfg = load_config(
        None, {"SYMBI_CONFIG_PATH": str(p), "SYMBI_LOG_LEVEL": "debug", "MCP_SERVER_DISCOVERY": "false"}
    )
    assert cfg.gateway.log_level == "DEBUG"
    assert cfg.source == p.resolve()


def test_bad_boolean_env_is_refused() -> None:
    with pytest.raises(ConfigError):
        build_config({}, environ={"MCP_SERVER_DISCOVERY": "maybe"})


BAD = [
    ("unknown key", '[mcp]\ntool_verificaton = "strict"\n', "mcp.tool_verificaton"),
    ("wrong type", '[mcp]\ncall_timeout_s = "soon"\n', "mcp.call_timeout_s"),
    ("bad enum", '[mcp]\ntool_verification = "sometimes"\n', "mcp.tool_verification"),
    ("no transport", "[servers.a]\nenabled = true\n", "servers.a"),
    ("both transports", '[servers.a]\ncommand = "x"\nurl = "http://127.0.0.1:1/mcp"\n', "servers.a"),
    ("bad server name", '[servers."a__b"]\ncommand = "x"\n', "servers"),
    ("opa without url", '[policy]\nengine = "opa"\n', "policy"),
    ("unknown section", "[nope]\nx = 1\n", "nope"),
    ("negative port", "[http]\nport = -1\n", "http.port"),
    # the per-principal scheduler caps: zero would refuse or stall every call, negative is nonsense
    (
        "principal in-flight zero",
        "[runtime]\nmax_in_flight_per_principal = 0\n",
        "runtime.max_in_flight_per_principal",
    ),
    (
        "principal in-flight negative",
        "[runtime]\nmax_in_flight_per_principal = -4\n",
        "runtime.max_in_flight_per_principal",
    ),
    (
        "principal queue zero",
        "[runtime]\nqueue_limit_per_principal = 0\n",
        "runtime.queue_limit_per_principal",
    ),
    (
        "principal queue negative",
        "[runtime]\nqueue_limit_per_principal = -1\n",
        "runtime.queue_limit_per_principal",
    ),
    (
        "jwt alg none",
        '[http.jwt]\nissuer = "i"\naudience = "a"\nalgorithms = ["none"]\njwks_file = "j"\n',
        "http.jwt",
    ),
    (
        # whoever is on the path to a plain-http key set serves its own keys: any token, an admin's
        "jwks url over plain http to another host",
        '[http.jwt]\nissuer = "i"\naudience = "a"\njwks_url = "http://idp.example/jwks.json"\n',
        "http.jwt.jwks_url",
    ),
    (
        "bearer header over plain http to another host",
        '[servers.a]\nurl = "http://mcp.example/mcp"\nheaders = { Authorization = "Bearer t" }\n',
        "servers.a",
    ),
    ("password in a plain http url", '[servers.a]\nurl = "http://u:pw@10.0.0.5/mcp"\n', "servers.a"),
    (
        "token in the query of a plain http url",
        '[servers.a]\nurl = "http://mcp.example/mcp?token=t"\n',
        "servers.a",
    ),
    (
        # no credential to read, but the answers (tool results, definitions at first use) can be
        # changed on the way: plain http to another host needs unsafe_plain_http
        "plain http url to another host",
        '[servers.a]\nurl = "http://mcp.example/mcp?version=2&keyword=k"\n',
        "servers.a",
    ),
    (
        "api key in the query of a plain http url",
        '[servers.a]\nurl = "http://10.0.0.5/m?v=1&apiKey=k"\n',
        "servers.a",
    ),
    (
        "plain-http opt-out over https",
        '[servers.a]\nurl = "https://x/mcp"\nunsafe_plain_http = true\n',
        "servers.a",
    ),
    ("plain-http opt-out on stdio", '[servers.a]\ncommand = "x"\nunsafe_plain_http = true\n', "servers.a"),
    (
        "jwks url not http",
        '[http.jwt]\nissuer = "i"\naudience = "a"\njwks_url = "ftp://idp.example/jwks.json"\n',
        "http.jwt.jwks_url",
    ),
    ("not toml", "[mcp\n", "not valid TOML"),
    # an upstream named like a built-in would shadow (or knock out) the built-in's tools
    ("reserved name sandbox", '[sandbox]\ncode_tools = false\n[servers.sandbox]\ncommand = "x"\n', "sandbox"),
    ("reserved name memory", '[servers.Memory]\ncommand = "x"\n', "Memory"),
    ("reserved name bus", '[servers.bus]\nurl = "http://127.0.0.1:1/mcp"\n', "bus"),
    # issue 11 item 5: a process per caller is for stdio servers, and its bounds need it on
    ("bad isolation", '[servers.a]\ncommand = "x"\nisolation = "tenant"\n', "servers.a.isolation"),
    (
        "isolation on http",
        '[servers.a]\nurl = "http://127.0.0.1:1/mcp"\nisolation = "principal"\n',
        "servers.a",
    ),
    (
        "isolation with replicas",
        '[servers.a]\ncommand = "x"\nisolation = "session"\nreplicas = 2\n',
        "servers.a",
    ),
    ("isolation_max when shared", '[servers.a]\ncommand = "x"\nisolation_max = 4\n', "servers.a"),
    (
        "isolation_max zero",
        '[servers.a]\ncommand = "x"\nisolation = "principal"\nisolation_max = 0\n',
        "servers.a.isolation_max",
    ),
    # a key set where nothing reads it: refused, never silently ignored
    (
        "api keys file with the keys in postgres",
        '[state]\npostgres_url = "postgresql://x@127.0.0.1:1/x"\n[http]\napi_keys_path = "keys.json"\n',
        "http.api_keys_path",
    ),
    ("opa url with the embedded engine", '[policy]\nurl = "http://127.0.0.1:8181"\n', "policy.url"),
    ("opa ca with the embedded engine", '[policy]\ntls_ca = "ca.pem"\n', "policy.tls_ca"),
    ("opa timeout with the embedded engine", "[policy]\ntimeout_s = 2.0\n", "policy.timeout_s"),
    (
        "embedded store with a qdrant server",
        '[context]\nvector_db_url = "http://127.0.0.1:6333"\nembedded_store = "edge"\n',
        "context.embedded_store",
    ),
    (
        "registry dir with discovery off",
        '[mcp]\ndiscovery_registry_dir = "registry"\n',
        "mcp.discovery_registry_dir",
    ),
    (
        "sandbox network without a sandbox",
        '[servers.a]\ncommand = "x"\nsandbox_network = true\n',
        "servers.a.sandbox_network",
    ),
    (
        "sandbox network with sandbox none",
        '[servers.a]\ncommand = "x"\nsandbox = "none"\nsandbox_network = false\n',
        "servers.a.sandbox_network",
    ),
    (
        "openai model with the local embedder",
        '[context]\nembedder = "local"\nembedding_model = "text-embedding-3-small"\n',
        "context.embedding_model",
    ),
    (
        "openai url with auto and no key",
        '[context]\nopenai_base_url = "https://api.openai.com/v1"\n',
        "context.openai_base_url",
    ),
    (
        "openai key with the hashing embedder",
        '[context]\nembedder = "hashing"\nopenai_api_key = "sk-x"\n',
        "context.openai_api_key",
    ),
    (
        "a context key with context off",
        '[context]\nenabled = false\nembedder = "hashing"\n',
        "context.embedder",
    ),
    (
        "a policy key with policies off",
        "[security]\nunsafe_disable_policies = true\n[policy]\nhot_reload = false\n",
        "policy.hot_reload",
    ),
    (
        "a policy key with enforce_policies off",
        '[security]\nenforce_policies = false\n[policy]\npath = "p.rego"\n',
        "policy.path",
    ),
    (
        "sandbox network in docker",
        '[servers.a]\ncommand = "x"\nsandbox = "docker"\nsandbox_network = true\n',
        "servers.a.sandbox_network",
    ),
    (
        "sandbox network in gvisor",
        '[servers.a]\ncommand = "x"\nsandbox = "gvisor"\nsandbox_network = true\n',
        "servers.a.sandbox_network",
    ),
    (
        "two pass-through",
        '[servers.a]\ncommand = "x"\npass_through = true\n[servers.b]\ncommand = "y"\n',
        "servers",
    ),
]


@pytest.mark.parametrize("label,body,key", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, label: str, body: str, key: str) -> None:
    p = tmp_path / "symbi.toml"
    p.write_text(body)
    with pytest.raises(ConfigError):
        load_config(p, {})
    proc = run_symbi("config", "check", "--config", str(p))
    assert proc.returncode == 2
    assert key in proc.stderr
    assert str(p) in proc.stderr


def test_keys_with_an_effect_in_their_mode_still_load() -> None:
    """The other side of each refusal above: the same keys where they are read, and the
    defaults (never given) in every mode."""
    build_config({"policy": {"engine": "opa", "url": "http://127.0.0.1:8181", "timeout_s": 1.0}})
    build_config({"context": {"embedded_store": "local"}})
    build_config({"context": {"vector_db_url": "http://127.0.0.1:6333"}})
    build_config({"mcp": {"discovery_enabled": True, "discovery_registry_dir": "registry"}})
    build_config({"servers": {"a": {"command": "x", "sandbox": "bwrap", "sandbox_network": True}}})
    build_config({"context": {"embedder": "openai", "openai_api_key": "k", "embedding_model": "m"}})
    build_config({"context": {"embedding_model": "m"}}, environ={"OPENAI_API_KEY": "k"})
    for url in (
        "https://idp.example/jwks.json",
        "http://127.0.0.1:9/j",
        "http://[::1]:9/j",
        "http://localhost/j",
    ):
        build_config({"http": {"jwt": {"issuer": "i", "audience": "a", "jwks_url": url}}})
        build_config({"servers": {"a": {"url": url, "headers": {"Authorization": "Bearer t"}}}})
    build_config({"servers": {"a": {"url": "http://mcp.example/mcp", "unsafe_plain_http": True}}})
    for url in ("https://mcp.example/mcp?token=t", "http://127.0.0.1:9/mcp?access_token=t"):
        build_config({"servers": {"a": {"url": url}}})
    build_config({"servers": {"a": {"url": "http://10.0.0.5/mcp?token=t", "unsafe_plain_http": True}}})
    opted = build_config({"servers": {"a": {"url": "http://u:pw@10.0.0.5/mcp", "unsafe_plain_http": True}}})
    assert [o.key for o in opted.unsafe_options()] == ["servers.a.unsafe_plain_http"]


def test_context_and_policy_off_still_load_without_their_keys() -> None:
    """Off with nothing else given loads; the shell's QDRANT_URL / OPENAI_* beside context off
    are left out (other tools read them), not refused; sandbox_network = false in docker loads."""
    env = {
        "QDRANT_URL": "http://127.0.0.1:6333",
        "OPENAI_API_KEY": "sk-shell",
        "OPENAI_BASE_URL": "http://x/v1",
    }
    cfg = build_config({"context": {"enabled": False}}, environ=env)
    assert cfg.context.vector_db_url is None and cfg.context.openai_api_key is None
    build_config({"security": {"unsafe_disable_policies": True}})
    build_config({"servers": {"a": {"command": "x", "sandbox": "docker", "sandbox_network": False}}})


def test_a_qdrant_url_from_the_environment_idles_the_files_embedded_store() -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"context": {"embedded_store": "edge"}}, environ={"QDRANT_URL": "http://127.0.0.1:6333"})
    assert any("context.embedded_store" in r for r in e.value.reasons)


def test_openai_variables_of_the_shell_do_not_refuse_another_embedder() -> None:
    """OPENAI_API_KEY / OPENAI_BASE_URL are read by other tools too: beside embedder = "local"
    (or auto without a key, for the URL) they are left out, not a key without effect."""
    env = {"OPENAI_API_KEY": "sk-shell", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    cfg = build_config({"context": {"embedder": "local"}}, environ=env)
    assert cfg.context.openai_api_key is None and cfg.context.embedder_kind == "local"
    cfg = build_config({}, environ={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert cfg.context.embedder_kind == "local"
    cfg = build_config({}, environ=env)
    assert cfg.context.embedder_kind == "openai" and cfg.context.openai_base_url == env["OPENAI_BASE_URL"]


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_symbi("config", "check", "--config", str(tmp_path / "absent.toml"))
    assert proc.returncode == 2
    assert "absent.toml" in proc.stderr


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = run_symbi("config", "check", "--config", str(root / "examples/symbi.toml"))
    assert proc.returncode == 0, proc.stderr


def _keys(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    out = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        if name == "source":
            continue
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        target = (
            ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (inner[0] if inner else None)
        )
        if target is not None and name != "servers":
            out += _keys(target, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_config_key_is_documented_in_the_example() -> None:
    from gateway.config.model import Config, ServerConfig

    text = (Path(__file__).resolve().parents[2] / "examples/symbi.toml").read_text()
    keys = [k for k in _keys(Config) if k != "servers"] + [f"servers.{k}" for k in _keys(ServerConfig)]
    missing = [k for k in keys if k.rsplit(".", 1)[-1] not in text]
    assert not missing, f"not documented in examples/symbi.toml: {missing}"


def test_a_relative_jwks_file_is_resolved_against_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.server.auth import JwtVerifier

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(
        '{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "a"}]}'
    )
    p = write_config(
        tmp_path,
        '[http.jwt]\nissuer = "i"\naudience = "a"\nalgorithms = ["HS256"]\njwks_file = "keys/jwks.json"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # serve started from another folder
    cfg = load_config(p, {})
    assert cfg.http.jwt is not None and cfg.http.jwt.jwks_file == tmp_path / "keys" / "jwks.json"
    assert JwtVerifier(cfg.http.jwt) is not None  # what `serve` builds: no crash


def test_config_check_refuses_a_missing_or_malformed_jwks_file(tmp_path: Path) -> None:
    p = write_config(tmp_path, '[http.jwt]\nissuer = "i"\naudience = "a"\njwks_file = "nope.json"\n')
    r = run_symbi("config", "check", "--config", str(p))
    assert r.returncode == 2 and "http.jwt.jwks_file" in r.stderr and str(tmp_path / "nope.json") in r.stderr
    (tmp_path / "nope.json").write_text("not json")
    r = run_symbi("config", "check", "--config", str(p))
    assert r.returncode == 2 and "http.jwt.jwks_file" in r.stderr


def test_the_bus_goes_on_the_state_redis_unless_told_otherwise(tmp_path: Path) -> None:
    # replicas on a shared Redis: their agents must reach each other (a per-process bus cannot)
    url = "redis://127.0.0.1:6399/0"
    secret = base64.b64encode(bytes(range(32))).decode()
    p = write_config(tmp_path, "")
    cfg = load_config(p, {"SYMBI_STATE_REDIS_URL": url, "SYMBI_BUS_SECRET": secret})
    assert (cfg.bus.backend, cfg.bus.url, cfg.bus.secret) == ("redis", url, secret)
    assert secret not in repr(cfg)
    explicit = write_config(tmp_path, '[bus]\nbackend = "embedded"\n', name="embedded.toml")
    assert load_config(explicit, {"SYMBI_STATE_REDIS_URL": url}).bus.backend == "embedded"
    alone = load_config(write_config(tmp_path, "", name="alone.toml"), {})
    assert (alone.bus.backend, alone.bus.url, alone.bus.secret) == ("embedded", None, None)


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_bus_secret_that_is_not_32_bytes_of_base64_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_config({}, environ={"SYMBI_BUS_SECRET": bad})
    assert "bus.secret" in str(e.value)


def _jwt(url: str, **more: str) -> dict[str, object]:
    return {"http": {"jwt": {"issuer": "i", "audience": "a", "jwks_url": url, **more}}}


def test_the_jwks_proxy_comes_from_https_proxy_unless_no_proxy_names_the_idp() -> None:
    url = "https://idp.example/jwks.json"
    env = {"https_proxy": "http://proxy.corp:3128"}
    jwt = build_config(_jwt(url), environ=env).http.jwt
    assert jwt is not None and jwt.jwks_proxy == "http://proxy.corp:3128"
    for no in ("idp.example", ".example", "*", "other.org,idp.example"):
        jwt = build_config(_jwt(url), environ={**env, "NO_PROXY": no}).http.jwt
        assert jwt is not None and jwt.jwks_proxy is None, no
    for kept in ("direct", "http://other:8080"):  # the file's own value wins
        jwt = build_config(_jwt(url, jwks_proxy=kept), environ=env).http.jwt
        assert jwt is not None and jwt.jwks_proxy == kept
    jwt = build_config(_jwt("http://127.0.0.1:9/j"), environ=env).http.jwt  # loopback: never
    assert jwt is not None and jwt.jwks_proxy is None
    jwt = build_config(_jwt(url), environ={"HTTPS_PROXY": "proxy.corp:3128"}).http.jwt  # curl's form
    assert jwt is not None and jwt.jwks_proxy == "http://proxy.corp:3128"


@pytest.mark.parametrize("value", ["socks5://127.0.0.1:1080", "http://u:pw@proxy:3128", "http://proxy"])
def test_a_shells_proxy_the_fetch_cannot_use_is_warned_about_not_a_refused_start(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    """$https_proxy is set for the shell's other tools: one the fetch cannot use leaves it
    direct (TLS checks the IdP either way), with a warning naming the variable."""
    with caplog.at_level("WARNING", logger="symbi.config"):
        jwt = build_config(_jwt("https://idp.example/j"), environ={"https_proxy": value}).http.jwt
    assert jwt is not None and jwt.jwks_proxy is None
    assert [r.levelname for r in caplog.records if "https_proxy" in r.getMessage()] == ["WARNING"]


@pytest.mark.parametrize(
    ("doc", "environ"),
    [
        (_jwt("https://idp.example/j", jwks_proxy="socks5://127.0.0.1:1080"), {}),
        (_jwt("https://idp.example/j", jwks_proxy="http://user:pw@proxy:3128"), {}),
        (_jwt("https://idp.example/j", jwks_proxy="http://proxy"), {}),
        (_jwt("https://idp.example/j", jwks_proxy="http://proxy:99999"), {}),
        (_jwt("http://127.0.0.1:9/j", jwks_proxy="http://proxy:3128"), {}),
        ({"http": {"jwt": {"issuer": "i", "audience": "a", "jwks_file": "j", "jwks_proxy": "direct"}}}, {}),
    ],
    ids=["socks", "credentials", "no-port", "bad-port", "loopback-url", "jwks-file"],
)
def test_a_jwks_proxy_that_cannot_be_used_is_refused_naming_it(
    doc: dict[str, object], environ: dict[str, str]
) -> None:
    with pytest.raises(ConfigError):
        build_config(doc, environ=environ)
