"""Attack: an operator's action the audit log cannot record. With ``audit.on_failure = "deny"``
(the default) a broken log refuses calls before they reach an upstream; an operator's
suspension of an agent or a principal was carried out and then its record raised: answered 500
for a change that had happened, unrecorded. Now it is refused first (503 ``audit_unavailable``)
and nothing changes. A real gateway over streamable HTTP with server-everything; the log is
broken as a full disk would break it (a trigger refusing every insert)."""

from __future__ import annotations

from pathlib import Path

import httpx

from gateway.config import load_config
from gateway.errors import AuditError
from gateway.server.dashboard import COOKIE
from tests.conftest import break_audit_log
from tests.server.http.conftest import bearer, everything_config, make_keys, run_server
from tests.server.http.test_dashboard import signed_in
from tests.server.http.test_refusal_flood import KeySession


def test_an_operator_action_the_audit_log_cannot_record_is_not_carried_out(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        bob = KeySession(run.mcp, keys.user)
        assert bob.call("everything__echo", {"message": "hi"}) is None
        admin = bearer(keys.admin)
        [agent] = httpx.get(run.base + "/api/agents", headers=admin).json()["agents"]
        break_audit_log(load_config(cfg, {}).audit_path)
        assert bob.call("everything__echo", {"message": "hi"}) == AuditError.code  # the log is broken now

        r = httpx.post(run.base + f"/api/agents/{agent['id']}/suspend", json={"reason": "x"}, headers=admin)
        assert r.status_code == 503 and r.json()["code"] == AuditError.code, r.text  # 500, suspended, before
        [after] = httpx.get(run.base + "/api/agents", headers=admin).json()["agents"]
        assert after["state"] == agent["state"] != "suspended"

        api = run.base + "/api/principals"
        r = httpx.post(api + "/suspend", json={"principal": "key:bob", "reason": "x"}, headers=admin)
        assert r.status_code == 503 and r.json()["code"] == AuditError.code, r.text
        assert httpx.get(api, headers=admin).json()["suspended"] == []

        # the agent's other actions, and the operator actions outside agents and principals:
        # a tool approval was saved and then answered 500 (its record raised, the catalogue not
        # refreshed), a policy reload or an upstream restart was done and answered 500
        diff = httpx.get(run.base + "/api/tools/everything__echo/diff", headers=admin).json()
        refused = [
            httpx.post(run.base + f"/api/agents/{agent['id']}/{action}", json={"reason": "x"}, headers=admin)
            for action in ("resume", "terminate")
        ]
        refused.append(
            httpx.post(
                run.base + "/api/tools/everything__echo/approve",
                json={"hash": diff["current_hash"]},
                headers=admin,
            )
        )
        refused.append(httpx.post(run.base + "/api/policy/reload", headers=admin))
        refused.append(httpx.post(run.base + "/api/upstreams/everything/restart", headers=admin))
        assert [r.status_code for r in refused] == [
            503
        ] * 5  # the last three were 500 before (done, unrecorded)
        assert {r.json()["component"] for r in refused} == {"audit"}
        # one code for one condition: the approval's was approval_unrecordable
        assert [r.json()["code"] for r in refused] == [AuditError.code] * 5
        [after] = httpx.get(run.base + "/api/agents", headers=admin).json()["agents"]
        assert after["state"] == agent["state"] != "terminated"
        _still_pending(run.base, admin)


def _still_pending(base: str, admin: dict[str, str]) -> None:
    """The tool's definition is not approved: a refused approval saved nothing."""
    diff = httpx.get(base + "/api/tools/everything__echo/diff", headers=admin).json()
    assert (diff["approved_hash"], diff["status"]) == (None, "unverified"), diff


def test_a_hosted_run_and_a_dashboard_approval_are_refused_with_the_log_broken(tmp_path: Path) -> None:
    """``/api/agents/NAME/run`` started the agent and its record then raised (a 500, an
    unrecorded run); the dashboard's approval goes through the same refusal as the API's."""
    agent = '[agents.idle]\ncommand = "/bin/true"\nstart = "on-demand"\nrestart = "never"\n'
    cfg = everything_config(tmp_path, top_extra=agent)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        admin = bearer(keys.admin)
        login = httpx.post(run.base + "/login", data={"api_key": keys.admin}, follow_redirects=False)
        pages, cookie = signed_in("", login)
        cookies = {COOKIE: cookie}
        page = httpx.get(run.base + pages + "/tools/everything__echo", cookies=cookies).text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        current = httpx.get(run.base + "/api/tools/everything__echo/diff", headers=admin).json()[
            "current_hash"
        ]
        break_audit_log(load_config(cfg, {}).audit_path)
        # the broken disk is found by the next write (a call's record), as in the test above
        assert KeySession(run.mcp, keys.user).call("everything__echo", {"message": "hi"}) == AuditError.code

        r = httpx.post(run.base + "/api/agents/idle/run", headers=admin)
        assert r.status_code == 503 and r.json()["code"] == AuditError.code, r.text
        gw = run.state.gateway
        assert gw is not None and gw.hosted is not None
        assert not gw.hosted._wake["idle"].is_set() and not gw.hosted.runs.get("idle")  # not asked to start
        agents = httpx.get(run.base + "/api/agents", headers=admin).json()["agents"]
        assert not [a for a in agents if a.get("name") == "idle"], agents  # nothing ran

        form = {"csrf": csrf, "hash": current}
        r = httpx.post(run.base + pages + "/tools/everything__echo/approve", data=form, cookies=cookies)
        assert r.status_code == 503, r.text
        _still_pending(run.base, admin)


def test_an_action_on_a_hosted_agent_never_run_is_not_found_with_the_log_broken(tmp_path: Path) -> None:
    """A suspend (or resume) of an on-demand hosted agent never run here has nothing to act
    on: 404 as with the log working, where it answered 503 ``audit_unavailable`` (the admin
    guard let it through for any action, as a terminate withdraws a start). A terminate still
    asks the log first (it may withdraw a start: 503)."""
    agent = '[agents.idle]\ncommand = "/bin/true"\nstart = "on-demand"\nrestart = "never"\n'
    cfg = everything_config(tmp_path, top_extra=agent)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        admin = bearer(keys.admin)
        break_audit_log(load_config(cfg, {}).audit_path)
        assert KeySession(run.mcp, keys.user).call("everything__echo", {"message": "hi"}) == AuditError.code
        for action in ("suspend", "resume"):
            r = httpx.post(run.base + f"/api/agents/idle/{action}", json={"reason": "x"}, headers=admin)
            assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
        r = httpx.post(run.base + "/api/agents/idle/terminate", json={"reason": "x"}, headers=admin)
        assert r.status_code == 503 and r.json()["code"] == AuditError.code, r.text
