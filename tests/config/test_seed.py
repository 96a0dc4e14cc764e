"""The seed's own configuration and environment load verbatim (seed section 配置).

Every key and variable is accepted in the seed's form ("1GB", "enabled", a folder for the
audit storage, the Rust crate "ring") and either takes effect (a test elsewhere shows it,
listed in ``EFFECT_TESTED_IN``) or is named once at start with the issue that wires it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from gateway.config import build_config, load_config
from gateway.config.notices import MAPPED, PENDING, notices
from gateway.errors import ConfigError
from tests.conftest import ROOT, SYMBI, symbi_env

# Copied verbatim from the seed (runtime-architecture.zh.txt, 配置 / 运行时配置).
SEED_TOML = """\
[runtime]
max_concurrent_agents = 10000
scheduler_threads = 8
message_buffer_size = 1048576
gc_interval_ms = 100
[security]
default_sandbox_tier = "gvisor"
enforce_policies = true
audit_enabled = true
crypto_provider = "ring"
[context]
vector_db_url = "http://localhost:6333"
embedding_dimension = 1536
context_cache_size = "1GB"
knowledge_retention_days = 365
[mcp]
discovery_enabled = true
tool_verification = "strict"
connection_timeout_s = 30
max_concurrent_connections = 100
"""

# Copied verbatim from the seed (环境变量).
SEED_ENV_SH = """\
# Core runtime
export SYMBI_LOG_LEVEL=info
export SYMBI_RUNTIME_MODE=production
export SYMBI_CONFIG_PATH=/etc/symbi/config.toml
# Security
export SYMBI_CRYPTO_PROVIDER=ring
export SYMBI_AUDIT_STORAGE=/var/log/symbi/audit
# External dependencies
export QDRANT_URL=http://localhost:6333
export OPENAI_API_KEY=your_api_key_here
export MCP_SERVER_DISCOVERY=enabled
"""
SEED_ENV = dict(
    line.removeprefix("export ").split("=", 1)
    for line in SEED_ENV_SH.splitlines()
    if line.startswith("export ")
)

# Seed keys that take effect today -> the test file that shows the effect.
EFFECT_TESTED_IN = {
    "security.default_sandbox_tier": "tests/sandbox/test_risk_inputs.py",
    "security.enforce_policies": "tests/server/http/test_admin.py",
    "security.audit_enabled": "tests/server/http/test_admin.py",
    "security.crypto_provider": "tests/config/test_seed.py",
    "mcp.tool_verification": "tests/verify/test_gateway_verification.py",
    "mcp.connection_timeout_s": "tests/server/http/test_http.py",
    "mcp.max_concurrent_connections": "tests/server/http/test_connection_limit.py",
    "gateway.log_level": "tests/config/test_seed.py",
    "audit.path": "tests/config/test_seed.py",
    "mcp.discovery_enabled": "tests/onboard/test_discovery.py",
    "context.vector_db_url": "tests/memory/test_config.py",
    "context.embedding_dimension": "tests/memory/test_config.py",
    "context.context_cache_size": "tests/memory/test_config.py",
    "context.knowledge_retention_days": "tests/memory/test_config.py",
    "context.openai_api_key": "tests/memory/test_config.py",
    "runtime.message_buffer_size": "tests/bus/test_http_bus.py",
    "runtime.max_concurrent_agents": "tests/runtime/test_lifecycle.py",
    "runtime.scheduler_threads": "tests/runtime/test_runtime_keys.py",
    "runtime.gc_interval_ms": "tests/runtime/test_runtime_keys.py",
    "runtime.mode": "tests/config/test_unsafe.py",
}


def _seed_keys() -> list[str]:
    import tomllib

    return [f"{s}.{k}" for s, table in tomllib.loads(SEED_TOML).items() for k in table]


def _env_keys() -> list[str]:
    from gateway.config.load import ENV_OVERRIDES

    return [".".join(ENV_OVERRIDES[name]) for name in SEED_ENV if name != "SYMBI_CONFIG_PATH"]


def test_seed_config_and_environment_load_verbatim(tmp_path: Path) -> None:
    # SYMBI_CONFIG_PATH is read: the seed's path is absent here, and the error names it.
    with pytest.raises(ConfigError) as e:
        load_config(None, SEED_ENV)
    assert "/etc/symbi/config.toml" in e.value.message
    path = tmp_path / "config.toml"
    path.write_text(SEED_TOML, encoding="utf-8")
    cfg = load_config(path, SEED_ENV)
    assert cfg.runtime.max_concurrent_agents == 10000 and cfg.runtime.scheduler_threads == 8
    assert cfg.runtime.message_buffer_size == 1048576 and cfg.runtime.gc_interval_ms == 100
    assert cfg.runtime.mode == "production"
    assert cfg.security.crypto_provider == "ring"
    assert cfg.context.context_cache_size == 10**9 and cfg.context.embedding_dimension == 1536
    assert cfg.context.vector_db_url == "http://localhost:6333"
    assert cfg.context.openai_api_key == "your_api_key_here"
    assert "your_api_key_here" not in repr(cfg)
    assert cfg.mcp.discovery_enabled is True and cfg.mcp.max_concurrent_connections == 100
    assert cfg.mcp.connection_timeout_s == 30.0 and cfg.mcp.tool_verification == "strict"
    assert cfg.gateway.log_level == "INFO"
    assert cfg.audit_path == Path("/var/log/symbi/audit/audit.db")  # a folder, as the seed gives it


def test_every_seed_key_takes_effect_or_names_its_issue(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(SEED_TOML, encoding="utf-8")
    cfg = load_config(path, SEED_ENV)
    said = {n.key: n for n in notices(cfg)}
    for key in _seed_keys() + _env_keys():
        section, leaf = key.split(".")
        if key in EFFECT_TESTED_IN:
            assert (section, leaf) not in PENDING, f"{key} is wired and still listed as pending"
            shown_in = (ROOT / EFFECT_TESTED_IN[key]).read_text(encoding="utf-8")
            assert leaf in shown_in, f"{EFFECT_TESTED_IN[key]} does not exercise {key}"
        else:
            assert (section, leaf) in PENDING, f"{key} is accepted but neither wired nor named as pending"
            if getattr(getattr(cfg, section), leaf) != type(getattr(cfg, section)).model_fields[leaf].default:
                assert said[key].kind == "pending" and said[key].issue == PENDING[(section, leaf)][0]
    assert said["security.crypto_provider"].kind == "mapped"


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("1GB", 10**9),
        ("512MiB", 512 * 2**20),
        ("64 KB", 64_000),
        ("1.5GB", 1_500_000_000),
        (1024, 1024),
        ("7", 7),
    ],
)
def test_sizes_in_the_seed_form(raw: object, expected: int) -> None:
    assert build_config({"context": {"context_cache_size": raw}}).context.context_cache_size == expected


@pytest.mark.parametrize("raw", ["lots", "1XB", "-1GB", True, 1.5])
def test_bad_size_names_the_key(raw: object) -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"context": {"context_cache_size": raw}}, where="x.toml")
    assert "context.context_cache_size" in e.value.message


@pytest.mark.parametrize(
    "raw,expected", [("enabled", True), ("disabled", False), ("TRUE", True), ("0", False)]
)
def test_discovery_env_in_the_seed_form(raw: str, expected: bool) -> None:
    assert build_config({}, environ={"MCP_SERVER_DISCOVERY": raw}).mcp.discovery_enabled is expected


def test_audit_storage_names_a_folder_or_the_file(tmp_path: Path) -> None:
    assert build_config({}, environ={"SYMBI_AUDIT_STORAGE": str(tmp_path / "audit")}).audit_path == (
        tmp_path / "audit" / "audit.db"
    )
    assert (
        build_config({}, environ={"SYMBI_AUDIT_STORAGE": str(tmp_path / "a.db")}).audit_path
        == tmp_path / "a.db"
    )


def test_crypto_provider_checks_its_primitives_and_maps_ring() -> None:
    from gateway.crypto import start_provider

    assert start_provider(build_config({})).startswith("cryptography ")
    ring = build_config({"security": {"crypto_provider": "ring"}})
    assert start_provider(ring).startswith("cryptography ")
    assert [n.kind for n in notices(ring)] == ["mapped"]
    assert ("security", "crypto_provider", "ring") in MAPPED
    with pytest.raises(ConfigError):
        build_config({"security": {"crypto_provider": "openssl-1.0"}})


def test_a_provider_missing_a_primitive_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    # A crippled OpenSSL build cannot be made real here: the self-test seam is forced to fail.
    from cryptography.exceptions import UnsupportedAlgorithm

    import gateway.crypto as crypto

    def broken() -> None:
        raise UnsupportedAlgorithm("no Ed25519 in this build")

    monkeypatch.setattr(crypto, "_self_test", broken)
    with pytest.raises(ConfigError) as e:
        crypto.start_provider(build_config({}))
    assert "security.crypto_provider" in e.value.message


@pytest.mark.anyio
async def test_seed_start_names_each_notice_once_and_audits_into_the_folder(tmp_path: Path) -> None:
    """``symbi mcp`` with the seed's file and environment: the two paths point into tmp_path
    (same form: a config file and an audit folder); every other value is the seed's."""
    path = tmp_path / "config.toml"
    path.write_text(SEED_TOML, encoding="utf-8")
    audit_dir = tmp_path / "audit"
    env = {
        **symbi_env(),
        **SEED_ENV,
        "SYMBI_CONFIG_PATH": str(path),
        "SYMBI_AUDIT_STORAGE": str(audit_dir),
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "stderr.log"
    with log.open("w") as errlog:
        params = StdioServerParameters(command=str(SYMBI), args=["mcp"], env=env)
        async with stdio_client(params, errlog=errlog) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            await s.list_tools()
    err = log.read_text()
    expected = notices(load_config(path, {**SEED_ENV, "SYMBI_AUDIT_STORAGE": str(audit_dir)}))
    assert {n.key for n in expected} == {"security.crypto_provider"}  # nothing is pending any more
    for n in expected:
        assert err.count(n.text) == 1, (n.text, err)
    assert "your_api_key_here" not in err
    assert "crypto provider: cryptography" in err
    assert (audit_dir / "audit.db").is_file()


def test_config_check_prints_the_notices(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(SEED_TOML, encoding="utf-8")
    proc = subprocess.run(
        [str(SYMBI), "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env={**symbi_env(), **{k: v for k, v in SEED_ENV.items() if k != "SYMBI_AUDIT_STORAGE"}},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "'cryptography'" in proc.stdout and "issue 1" not in proc.stdout  # no key is pending an issue
    assert "your_api_key_here" not in proc.stdout
