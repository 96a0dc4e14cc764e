"""`symbi schemapin ...` as a real subprocess: exit codes 0 valid / 1 invalid / 2 usage."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import ASSETS, ROOT, HttpsServer

PY = str(ROOT / ".venv" / "bin" / "python")
TOOL = ASSETS / "tools" / "create_issue.json"


def symbi(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    e.update(env or {})
    return subprocess.run(
        [PY, "-m", "gateway", "schemapin", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=e,
        check=False,
    )


def keygen(d: Path) -> tuple[Path, Path, str]:
    r = symbi("keygen", "--out", d, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    return Path(info["private_key"]), Path(info["public_key"]), info["fingerprint"]


def sign(priv: Path, tool: Path, out: Path) -> dict[str, Any]:
    r = symbi("sign", "--key", priv, tool, "--out", out)
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return doc


def test_keygen_sign_verify(tmp_path: Path) -> None:
    priv, pub, fp = keygen(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    env = sign(priv, TOOL, tmp_path / "env.json")
    assert set(env) == {"schema", "signature", "signed_at"}
    r = symbi("verify", "--public-key", pub, tmp_path / "env.json", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["valid"] is True and out["key_fingerprint"] == fp and out["tool_id"] == "create_issue"
    assert symbi("keygen", "--out", tmp_path / "keys").returncode == 2  # refuses to overwrite


def test_high_s_envelope_verifies_unless_low_s_is_required(tmp_path: Path) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

    from schemapin._crypto import P256_ORDER

    priv, pub, _ = keygen(tmp_path / "k")
    env = sign(priv, TOOL, tmp_path / "env.json")
    r_, s_ = decode_dss_signature(base64.b64decode(env["signature"]))
    env["signature"] = base64.b64encode(encode_dss_signature(r_, P256_ORDER - s_)).decode()  # the high-S twin
    (tmp_path / "high.json").write_text(json.dumps(env), encoding="utf-8")
    assert symbi("verify", "--public-key", pub, tmp_path / "high.json").returncode == 0
    r = symbi("verify", "--public-key", pub, tmp_path / "high.json", "--require-low-s", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error_code"] == "signature_high_s"


def test_tampered_envelope_exit_1_with_code(tmp_path: Path) -> None:
    priv, pub, _ = keygen(tmp_path / "k")
    env = sign(priv, TOOL, tmp_path / "env.json")
    env["schema"]["description"] = "changed"
    (tmp_path / "bad.json").write_text(json.dumps(env), encoding="utf-8")
    r = symbi("verify", "--public-key", pub, tmp_path / "bad.json")
    assert r.returncode == 1 and "[signature_invalid]" in r.stdout
    r = symbi("verify", "--public-key", pub, tmp_path / "bad.json", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error_code"] == "signature_invalid"
    (tmp_path / "dup.json").write_text('{"schema":{},"schema":{},"signature":"x"}', encoding="utf-8")
    r = symbi("verify", "--public-key", pub, tmp_path / "dup.json", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error_code"] == "duplicate_key"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert symbi().returncode == 2
    assert symbi("verify", tmp_path / "missing.json").returncode == 2  # no key source
    _, pub, _ = keygen(tmp_path / "k")
    assert symbi("verify", "--public-key", pub, tmp_path / "missing.json").returncode == 2
    assert (
        symbi("pins", "show", "--pins", tmp_path / "p.db", "--domain", "a.example", "--tool", "t").returncode
        == 2
    )


def test_wellknown_and_domain_discovery_file_with_pins(tmp_path: Path) -> None:
    priv, pub, fp = keygen(tmp_path / "k")
    r = symbi("wellknown", "--public-key", pub, "--developer", "Acme")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["public_key_pem"] == pub.read_text() and doc["developer_name"] == "Acme"
    (tmp_path / "wk.json").write_text(r.stdout, encoding="utf-8")
    sign(priv, TOOL, tmp_path / "env.json")
    pins = tmp_path / "pins.db"
    args = (
        "verify",
        "--domain",
        "acme.example",
        "--discovery",
        tmp_path / "wk.json",
        "--pins",
        pins,
        tmp_path / "env.json",
        "--json",
    )
    r1, r2 = symbi(*args), symbi(*args)
    assert (r1.returncode, r2.returncode) == (0, 0), r1.stdout + r1.stderr
    assert json.loads(r1.stdout)["status"] == "first_use" and json.loads(r2.stdout)["status"] == "pinned"

    # Rotate: a new key in discovery, tool re-signed with it -> key_pin_mismatch until approved.
    priv2, pub2, fp2 = keygen(tmp_path / "k2")
    (tmp_path / "wk2.json").write_text(symbi("wellknown", "--public-key", pub2, "--developer", "Acme").stdout)
    sign(priv2, TOOL, tmp_path / "env2.json")
    args2 = (
        "verify",
        "--domain",
        "acme.example",
        "--discovery",
        tmp_path / "wk2.json",
        "--pins",
        pins,
        tmp_path / "env2.json",
        "--json",
    )
    r = symbi(*args2)
    assert r.returncode == 1 and json.loads(r.stdout)["error_code"] == "key_pin_mismatch"
    listed = json.loads(symbi("pins", "list", "--pins", pins, "--json").stdout)
    assert listed[0]["key_fingerprint"] == fp and listed[0]["pending_fingerprint"] == fp2
    approve = ("pins", "approve", "--pins", pins, "--domain", "acme.example", "--tool", "create_issue")
    r = symbi(*approve, "--actor", "sec", "--json")  # the new key not named: refused
    assert r.returncode == 1 and json.loads(r.stdout)["error_code"] == "reviewed_hash_required"
    r = symbi(*approve, "--fingerprint", fp2, "--actor", "sec", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["key_fingerprint"] == fp2
    assert symbi(*args2).returncode == 0
    shown = json.loads(
        symbi(
            "pins", "show", "--pins", pins, "--domain", "acme.example", "--tool", "create_issue", "--json"
        ).stdout
    )
    assert [h["action"] for h in shown["history"]] == ["pin_first_use", "pending_key_changed", "approve"]
    assert (
        symbi(
            "pins", "remove", "--pins", pins, "--domain", "acme.example", "--tool", "create_issue"
        ).returncode
        == 0
    )
    assert json.loads(symbi("pins", "list", "--pins", pins, "--json").stdout) == []


def test_pins_default_path_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "symbi.toml"
    cfg.write_text('[gateway]\ndata_dir = "data"\n', encoding="utf-8")
    r = symbi("pins", "list", "--config", cfg, "--json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "pins.db").exists()


def test_verify_against_https_discovery_url(tmp_path: Path, https_server: HttpsServer) -> None:
    priv, pub, _ = keygen(tmp_path / "k")
    https_server.serve_json(
        "/.well-known/schemapin.json",
        json.loads(symbi("wellknown", "--public-key", pub, "--developer", "Acme").stdout),
    )
    sign(priv, TOOL, tmp_path / "env.json")
    r = symbi(
        "verify", "--domain", https_server.domain, "--ca-file", https_server.ca_path, tmp_path / "env.json"
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("VALID")
    # Without the test CA the TLS handshake fails: invalid, never a fallback.
    r = symbi("verify", "--domain", https_server.domain, tmp_path / "env.json", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["error_code"] == "discovery_fetch_failed"


def test_skill_sign_verify(tmp_path: Path) -> None:
    priv, pub, _ = keygen(tmp_path / "k")
    d = tmp_path / "skill"
    d.mkdir()
    (d / "SKILL.md").write_text("---\nname: s\n---\n", encoding="utf-8")
    assert symbi("skill", "sign", d, "--key", priv, "--domain", "acme.example").returncode == 0
    assert symbi("skill", "verify", d, "--public-key", pub).returncode == 0
    (d / "SKILL.md").write_text("---\nname: s\n---\nevil\n", encoding="utf-8")
    r = symbi("skill", "verify", d, "--public-key", pub, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["details"]["files"]["modified"] == ["SKILL.md"]


@pytest.mark.parametrize("sub", ["keygen", "sign", "verify", "wellknown", "pins", "skill"])
def test_help_lists_subcommands(sub: str) -> None:
    r = symbi(sub, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout
