"""The admin API's one 503 body (``gateway.server.unavailable``): before its gateway is assembled
the HTTP front answers every endpoint that needs it 503 ``unavailable`` with a ``code``
(``gateway_not_started``, from the one catalogue of codes, ``gateway.errors``); it had none, so a
client could tell it from no other 503 but by the text. The real app (``build_app``), its
lifespan not entered: the gateway is not started."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from gateway.config import load_config
from gateway.errors import NotStarted
from gateway.server.http import build_app
from tests.server.http.conftest import bearer, everything_config, make_keys


def test_an_admin_request_before_the_gateway_started_is_a_503_with_its_code(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    config = load_config(cfg, {})
    # no ``with``: its lifespan never runs; the Host one of the front allows (else 421)
    client = TestClient(build_app(config), base_url=f"http://127.0.0.1:{config.http.port}")
    admin = bearer(keys.admin)
    answers = [
        client.get("/api/status", headers=admin),
        client.get("/api/health", headers=admin),
        client.get("/api/agents", headers=admin),
        client.get("/api/principals", headers=admin),
        client.post("/api/principals/suspend", json={"principal": "key:bob"}, headers=admin),
        # "not enabled in this gateway" before: read as the config's, not to be tried again
        client.get("/api/audit/recent", headers=admin),
        client.get("/api/audit/verify", headers=admin),
        client.get("/api/policy/status", headers=admin),
        client.post("/api/policy/reload", headers=admin),
        # an approval's own "not running yet" was 503 approval_refused: another code for this
        client.get("/api/tools/everything__echo/diff", headers=admin),
        client.post("/api/tools/everything__echo/approve", json={"hash": "ab" * 32}, headers=admin),
        client.post("/api/discovered/found/approve", json={"digest": "cd" * 32}, headers=admin),
    ]
    assert [r.status_code for r in answers] == [503] * len(answers)
    assert {(r.json()["error"], r.json()["code"]) for r in answers} == {("unavailable", NotStarted.code)}
