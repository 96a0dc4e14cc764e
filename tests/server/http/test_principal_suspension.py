"""Attack: a suspended caller reconnects. A session agent's suspension was that session's: the
same API key's next MCP session got a fresh agent and called on. Now the suspension is the
principal's (gateway/runtime/holds.py): every session of the key is refused with a reason saying
so and how an operator clears it, until an admin does (``POST /api/principals/resume``, or
``resume`` of any of its agents); the clear is on the audit record. A real gateway over
streamable HTTP with server-everything behind it, API keys and the admin API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli import main as symbi_main
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.principals import principal_unknown
from gateway.runtime.holds import Hold, HoldFile
from gateway.server.auth import ApiKeyStore
from tests.server.http.conftest import (
    DENY_FORBIDDEN_ECHO,
    bearer,
    everything_config,
    jwt_http_section,
    make_idp,
    make_keys,
    run_server,
)
from tests.server.http.test_fastlane import reply_to
from tests.server.http.test_refusal_flood import KeySession


def _reasons(s: KeySession) -> list[str]:
    """The refusal reasons of a call (its ``symbi/error``)."""
    s.ids += 1
    body = {"jsonrpc": "2.0", "id": s.ids, "method": "tools/call",
            "params": {"name": "everything__echo", "arguments": {"message": "hi"}}}  # fmt: skip
    r = s.http.post(s.mcp, json=body, headers=s.h)
    result: dict[str, Any] = reply_to(r, s.ids)["result"]
    error = (result.get("_meta") or {}).get("symbi/error") or {}
    return list(error.get("reasons") or [])


def test_a_suspended_key_is_refused_in_its_next_session_until_an_operator_clears_it(tmp_path: Path) -> None:
    (tmp_path / "policy.rego").write_text(DENY_FORBIDDEN_ECHO)
    runtime = "[runtime]\nsuspend_after_denials = 1\n"  # the first denial suspends its agent
    cfg = everything_config(tmp_path, top_extra=runtime, policy=tmp_path / "policy.rego")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        first = KeySession(run.mcp, keys.user)
        assert first.call("everything__echo", {"message": "forbidden"}) == "policy_denied"
        assert first.call("everything__echo", {"message": "hi"}) == "agent_suspended"
        first.close()
        again = KeySession(run.mcp, keys.user)  # reconnect with the same key: a new session
        assert again.call("everything__echo", {"message": "hi"}) == "agent_suspended"  # None before
        reasons = _reasons(again)
        assert any("key:bob" in r and "symbi agents resume --principal" in r for r in reasons), reasons
        other = KeySession(run.mcp, keys.other_user)  # another principal is not held
        assert other.call("everything__echo", {"message": "hi"}) is None

        api = run.base + "/api/principals"
        listed = httpx.get(api, headers=bearer(keys.admin)).json()["suspended"]
        assert [h["principal"] for h in listed] == ["key:bob"]
        assert (
            httpx.post(api + "/resume", json={"principal": "key:bob"}, headers=bearer(keys.user)).status_code
            == 403
        )
        r = httpx.post(
            api + "/resume", json={"principal": "key:bob", "reason": "checked"}, headers=bearer(keys.admin)
        )
        assert r.status_code == 200, r.text
        assert again.call("everything__echo", {"message": "hi"}) is None  # its agent resumed
        assert KeySession(run.mcp, keys.user).call("everything__echo", {"message": "hi"}) is None
        assert httpx.get(api, headers=bearer(keys.admin)).json()["suspended"] == []
        r = httpx.post(api + "/resume", json={"principal": "key:bob"}, headers=bearer(keys.admin))
        assert r.status_code == 404  # nothing to clear

        # an operator suspends the principal: every session refused, at once
        r = httpx.post(
            api + "/suspend", json={"principal": "key:bob", "reason": "audit"}, headers=bearer(keys.admin)
        )
        assert r.status_code == 200, r.text
        assert again.call("everything__echo", {"message": "hi"}) == "agent_suspended"
        events = httpx.get(run.base + "/api/audit/query?type=principal.resume_requested,principal.suspended",
                           headers=bearer(keys.admin)).json()["events"]  # fmt: skip
        kinds = [(e["type"], e["details"].get("principal")) for e in events]
        assert (
            kinds.count(("principal.suspended", "key:bob")) == 2
            and ("principal.resume_requested", "key:bob") in kinds
        )
        [cleared] = [e for e in events if e["type"] == "principal.resume_requested"]
        assert cleared["principal"] == "alice" and cleared["details"]["reason"] == "checked"


def test_a_principal_is_named_qualified(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        api = run.base + "/api/principals/suspend"
        for body in ({"principal": "bob"}, {"principal": 7}, {}, {"principal": "key:" + "x" * 600}):
            assert httpx.post(api, json=body, headers=bearer(keys.admin)).status_code == 400, body
        # session 41: a kind no gateway makes (a typo; stdio principals are a `symbi mcp`
        # process's) is malformed, 400; a JWT or anonymous principal this gateway does not make
        # (no [http.jwt] here, no anonymous access) is no one here, 404. Both were "suspended".
        for typo, status in (("kye:bob", 400), ("stdio:local", 400), ("jwt:https://idp.example#bob", 404),
                             ("anonymous:guest", 404)):  # fmt: skip
            for act in ("suspend", "resume"):
                r = httpx.post(
                    api.replace("suspend", act), json={"principal": typo}, headers=bearer(keys.admin)
                )
                assert r.status_code == status, (typo, act, r.text)
        assert httpx.get(run.base + "/api/principals", headers=bearer(keys.admin)).json()["suspended"] == []


def test_a_hold_the_checks_would_refuse_is_still_cleared_by_its_name(tmp_path: Path) -> None:
    """Review (session 41): a hold made before principals' kinds were checked (``kye:old``, a
    typo kept in the data dir) could no longer be cleared by name (400): it took one of the
    10,000 places for good. A resume of a principal held is never refused by the checks."""
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    kept = HoldFile(load_config(cfg, {}).data_dir / "principals-suspended.db")
    kept.add(Hold("kye:old", "made before the checks", "", "ops", 1.0))
    kept.close()
    with run_server(cfg) as run:
        listed = httpx.get(run.base + "/api/principals", headers=bearer(keys.admin)).json()["suspended"]
        assert [h["principal"] for h in listed] == ["kye:old"]
        r = httpx.post(
            run.base + "/api/principals/resume", json={"principal": "kye:old"}, headers=bearer(keys.admin)
        )
        assert r.status_code == 200, r.text
        assert httpx.get(run.base + "/api/principals", headers=bearer(keys.admin)).json()["suspended"] == []
    for typo in ("key:alice ", "key:al\x00ice", "key:\u2028alice"):  # no caller's id: 404
        assert principal_unknown(typo, jwt_issuer=None, anonymous=None) is not None, typo


def test_a_key_principal_with_no_live_key_is_no_one_here(tmp_path: Path, capsys: Any) -> None:
    """Session 42: ``key:ID`` was checked for its kind only; ``key:bbo`` (a typo of bob) was
    answered 200 "suspended" and held no one. A key principal with no live API key is 404, as
    a JWT of another issuer is (the CLI exits 1, as for those); a hold of a key revoked since
    is still cleared by its name."""
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        api, admin = run.base + "/api/principals", bearer(keys.admin)
        for act in ("suspend", "resume"):
            r = httpx.post(f"{api}/{act}", json={"principal": "key:bbo"}, headers=admin)
            assert r.status_code == 404, (act, r.text)  # 200 "suspended" before
        cli = ["--principal", "key:bbo", "--config", str(cfg), "--url", run.base, "--api-key", keys.admin]
        assert symbi_main(["agents", "suspend", *cli]) == 1  # 0 before: "key:bbo: suspended"
        assert "key:bbo" in capsys.readouterr().err
        assert httpx.get(api, headers=admin).json()["suspended"] == []
        r = httpx.post(f"{api}/suspend", json={"principal": "key:bob", "reason": "audit"}, headers=admin)
        assert r.status_code == 200, r.text
        [bob] = [rec for rec in keys.store.records() if rec.principal == "bob"]
        assert keys.store.revoke(bob.id)  # bob has no live key now: his hold is still cleared
        r = httpx.post(f"{api}/resume", json={"principal": "key:bob"}, headers=admin)
        assert r.status_code == 200, r.text
        r = httpx.post(f"{api}/suspend", json={"principal": "key:bob"}, headers=admin)
        assert r.status_code == 404, r.text  # revoked: no caller of it is left to hold


def test_a_malformed_key_file_record_does_not_fail_a_suspension(tmp_path: Path) -> None:
    """Review (session 42): the key check of ``key:NAME`` caught a store that cannot be read,
    not a key file with a malformed record (no ``principal``, a list for a record): its
    ``KeyError`` / ``TypeError`` was a 500 where the check means to log and let the hold be
    made. The file store now says what is wrong with the file (``ConfigError``, naming it)."""
    idp = make_idp(tmp_path)
    cfg = everything_config(tmp_path, http_extra=jwt_http_section(idp.jwks_path))
    keys = make_keys(cfg)
    path = keys.store.path
    for bad in ({"id": "0123456789ab"}, ["not", "a", "record"]):  # a KeyError, a TypeError
        doc = json.loads(path.read_text())
        path.write_text(json.dumps({**doc, "keys": [*doc["keys"], bad]}))
        with pytest.raises(ConfigError):  # KeyError, TypeError before
            ApiKeyStore(path).records()
        path.write_text(json.dumps(doc))
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "keys": [*doc["keys"], {"id": "0123456789ab"}]}))
    admin = bearer(idp.token("ops", roles=["admin"]))  # an admin by JWT: the key file is broken
    with run_server(cfg) as run:
        api = run.base + "/api/principals"
        r = httpx.post(f"{api}/suspend", json={"principal": "key:bob", "reason": "audit"}, headers=admin)
        assert r.status_code == 200, r.text  # 500 before
        assert [h["principal"] for h in httpx.get(api, headers=admin).json()["suspended"]] == ["key:bob"]
