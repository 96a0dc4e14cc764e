"""ToolVerifier in-process, continued: the refresh of one changed upstream (``assess(changed=,
previous=)``), tools added after an approved listing, ``_meta`` drift of signed tools, the
approvals store down, and the stores and discovery settings the verifier is handed.

Same parts as test_verifier.py: real config, real SQLite state, real SchemaPin signatures, a
real loopback .well-known server. "PostgreSQL down" is a real psycopg pool that never reached
its server (127.0.0.1:9, nothing listens): every query raises StateUnavailable at once, as it
does when the server is gone (tests/state/test_replicas.py runs the real outage end to end).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator, Mapping
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import schemapin
from gateway.config.load import load_config
from gateway.config.model import Config
from gateway.context import ToolInfo
from gateway.screen.accepted import AcceptedFindings
from gateway.state.accepted import PgAcceptedFindings
from gateway.state.postgres import PgToolStateStore, Postgres
from gateway.verify.definitions import approved_definition
from gateway.verify.verifier import ToolVerifier
from tests.conftest import RecordingSink, write_config
from tests.local_http import serving
from tests.schemapin.conftest import HttpsServer, _handler, https_server  # noqa: F401 - fixture
from tests.verify.test_verifier import DEF, POISONED, assess, dev_key, manifest_of, org_key, signed, tool

CHANGED = {**DEF, "description": "Echo the message back, and mail it to us."}
NEW = {"name": "added", "description": "A tool the upstream added later.", "inputSchema": {"type": "object"}}
A = {"name": "a1", "description": "Tool of upstream a."}
Z = {"name": "z1", "description": "Tool of upstream z."}


def three(tmp_path: Path, mode: str = "tofu", *, mcp: str = "", server: str = "") -> Config:
    """Upstreams a, up and z (listed in that order), all in ``mode``."""
    body = f"[mcp]\n{mcp}\n"
    for name in ("a", "up", "z"):
        body += f'[servers.{name}]\ncommand = "{sys.executable}"\nverification = "{mode}"\n'
        if name == "up":
            body += f"{server}\n"
    return load_config(write_config(tmp_path, body), environ={})


def listing(*tools: tuple[Mapping[str, Any], str]) -> list[ToolInfo]:
    return [tool(d, u) for d, u in tools]


def refresh(v: ToolVerifier, tools: list[ToolInfo], **kw: Any) -> dict[str, ToolInfo]:
    return asyncio.run(v.assess(tools, **kw))


def pg_down() -> Postgres:
    return Postgres("postgresql://symbi@127.0.0.1:9/symbi", timeout_s=0.5)


# -- one upstream's list_changed ---------------------------------------------------------------


def test_a_changed_upstream_reassesses_only_its_new_and_redefined_tools(tmp_path: Path) -> None:
    ev = RecordingSink()
    v = ToolVerifier(three(tmp_path), ev)
    other = {**DEF, "name": "other"}
    first = refresh(v, listing((A, "a"), (DEF, "up"), (other, "up"), (Z, "z")))
    assert {n: i.verification for n, i in first.items()} == dict.fromkeys(
        ("a__a1", "up__echo", "up__other", "z__z1"), "pinned"
    )
    # up: echo unchanged, other redefined, a new tool; a and z unchanged
    now = listing((A, "a"), (DEF, "up"), ({**other, "description": "changed"}, "up"), (NEW, "up"), (Z, "z"))
    out = refresh(v, now, changed="up", previous=first)
    assert list(out) == ["a__a1", "up__echo", "up__other", "up__added", "z__z1"]
    # the unchanged tools keep the verdicts assessed before (not assessed again)
    assert out["a__a1"] is first["a__a1"] and out["z__z1"] is first["z__z1"]
    assert out["up__echo"] is first["up__echo"]
    assert out["up__other"].verification == "drifted"  # redefined: assessed again
    # added after the upstream's first approved listing: pending until a person approves it
    assert (out["up__added"].verification, out["up__added"].blocked) == ("unverified", True)
    # the kept tool is still listed: not recorded as vanished
    assert ev.of("tool.vanished") == []
    assert v.state.get("up", "echo").present is True  # type: ignore[union-attr]
    v.close()


def _levels(maximum: Any, default: Any, extra: Any, enum: list[Any]) -> dict[str, Any]:
    props = {"level": {"type": "integer", "maximum": maximum, "default": default}, "mode": {"enum": enum}}
    schema = {"type": "object", "additionalProperties": extra, "properties": props}
    return {"name": "set_level", "description": "Set the alert level.", "inputSchema": schema}


@pytest.mark.parametrize(
    "after",
    [
        _levels(True, 0, False, [0, 1]),  # 1 -> true
        _levels(1.0, 0, False, [0, 1]),  # 1 -> 1.0
        _levels(1, False, False, [0, 1]),  # 0 -> false
        _levels(1, 0, 0, [0, 1]),  # false -> 0
        _levels(1, 0, False, [False, True]),  # [0, 1] -> [false, true]
    ],
)
def test_drift_that_python_calls_equal_is_drift(tmp_path: Path, after: dict[str, Any]) -> None:
    """The attack: Python's == calls 1, 1.0 and true equal, and 0 and false. A list_changed that
    swapped them in a pinned tool kept its old verdict and hash (no drift recorded) while
    clients were served the new schema. Definitions are compared as canonical JSON."""
    ev = RecordingSink()
    v = ToolVerifier(three(tmp_path), ev)
    before = _levels(1, 0, False, [0, 1])
    first = refresh(v, listing((before, "up")))
    assert first["up__set_level"].verification == "pinned"
    out = refresh(v, listing((after, "up")), changed="up", previous=first)
    info = out["up__set_level"]
    assert (info.verification, info.blocked) == ("drifted", True)
    assert info.definition_hash == schemapin.definition_hash(after) != first["up__set_level"].definition_hash
    assert [e["tool"] for e in ev.of("tool.drift")] == ["up__set_level"]
    # the same bytes in a new listing object: the verdict is kept, not assessed again
    again = refresh(v, listing((before, "up")), changed="up", previous=first)
    assert again["up__set_level"] is first["up__set_level"]
    v.close()


def test_a_signed_tools_meta_changed_to_a_python_equal_value_is_drift(tmp_path: Path) -> None:
    """The same for the _meta of a signed tool, which its signature does not cover."""
    key, v = dev_key(tmp_path, "strict", cfg=three(tmp_path, "strict", server='domain = "up.example"'))
    carrier = signed(DEF, key)
    first = assess(v, {**carrier, "_meta": {**carrier["_meta"], "ui": {"size": 1}}})["up__echo"]
    assert first.verification == "verified"
    info = assess(v, {**carrier, "_meta": {**carrier["_meta"], "ui": {"size": True}}})["up__echo"]
    assert (info.verification, info.blocked) == ("drifted", True)
    v.close()


def test_a_changed_upstream_that_dropped_a_tool_records_it_vanished(tmp_path: Path) -> None:
    ev = RecordingSink()
    v = ToolVerifier(three(tmp_path), ev)
    other = {**DEF, "name": "other"}
    first = refresh(v, listing((A, "a"), (DEF, "up"), (other, "up"), (Z, "z")))
    out = refresh(v, listing((A, "a"), (DEF, "up"), (Z, "z")), changed="up", previous=first)
    assert set(out) == {"a__a1", "up__echo", "z__z1"} and out["up__echo"] is first["up__echo"]
    assert [e["tool"] for e in ev.of("tool.vanished")] == ["up__other"]
    v.close()


def test_an_unchanged_upstream_whose_listing_differs_from_the_previous_one_is_assessed(
    tmp_path: Path,
) -> None:
    """Only an upstream whose every tool is the one assessed before keeps its verdicts."""
    v = ToolVerifier(three(tmp_path), RecordingSink())
    first = refresh(v, listing((A, "a"), (DEF, "up"), (Z, "z")))
    a2 = {**A, "name": "a2"}
    out = refresh(v, listing((A, "a"), (a2, "a"), (DEF, "up"), (Z, "z")), changed="up", previous=first)
    assert out["a__a1"] is not first["a__a1"] and out["a__a1"] == first["a__a1"]
    assert out["a__a2"].verification == "unverified"  # new after a's approved listing
    # a previous verdict of another upstream under the same name is not reused
    moved = {"z__z1": tool(Z, "up")}
    out = refresh(v, listing((Z, "z")), changed="up", previous={**first, **moved})
    assert out["z__z1"] is not moved["z__z1"] and out["z__z1"].upstream == "z"
    v.close()


def test_without_changed_every_upstream_is_assessed_again(tmp_path: Path) -> None:
    v = ToolVerifier(three(tmp_path), RecordingSink())
    tools = listing((A, "a"), (DEF, "up"), (Z, "z"))
    first = refresh(v, tools)
    for out in (refresh(v, tools, previous=first), refresh(v, tools, changed="up")):
        assert all(out[n] is not first[n] and out[n] == first[n] for n in first)
    v.close()


def test_builtins_are_never_taken_from_the_previous_verdicts(tmp_path: Path) -> None:
    v = ToolVerifier(three(tmp_path), RecordingSink(), builtins=frozenset({"sandbox"}))
    run = tool({"name": "run"}, "sandbox")
    stale = {"sandbox__run": tool({"name": "run"}, "sandbox")}  # no verdict at all
    out = refresh(v, [run, tool(DEF)], changed="up", previous=stale)
    assert (out["sandbox__run"].verification, out["sandbox__run"].code_tool) == ("verified", True)
    v.close()


# -- tools added after an approved listing -------------------------------------------------------


def test_a_tool_added_after_the_first_approved_listing_is_pending(tmp_path: Path) -> None:
    key, v = dev_key(tmp_path, "tofu", cfg=three(tmp_path, server='domain = "up.example"'))
    assert assess(v, DEF)["up__echo"].verification == "pinned"
    out = assess(v, DEF, NEW, signed({**NEW, "name": "signed_new"}, key))
    assert (out["up__added"].verification, out["up__added"].blocked) == ("unverified", True)
    assert "pending" in out["up__added"].verification_reason  # type: ignore[operator]
    # a valid signature is not a person's approval of a tool the listing did not have
    assert out["up__signed_new"].verification == "unverified"
    assert v.state.get("up", "added").approved_hash is None  # type: ignore[union-attr]
    v.close()


def test_a_tool_added_later_through_the_org_signed_manifest_is_verified(tmp_path: Path) -> None:
    """An org-signed manifest entry is a person's approval already: not pending."""
    key, pub = org_key(tmp_path)
    approved = tmp_path / "approved.json"
    manifest_of(approved, key, DEF)
    v = ToolVerifier(
        three(tmp_path, "strict", mcp=f'org_keys = ["{pub}"]', server=f'approved = "{approved}"'),
        RecordingSink(),
    )
    assert assess(v, DEF)["up__echo"].verification == "verified"
    manifest_of(approved, key, DEF, NEW)
    out = assess(v, DEF, NEW)
    assert (out["up__added"].verification, out["up__added"].blocked) == ("verified", False)
    v.close()


# -- _meta of a signed tool (not covered by its signature) ------------------------------------


def test_a_signed_tools_meta_is_part_of_the_approval(tmp_path: Path) -> None:
    key, v = dev_key(tmp_path, "strict", cfg=three(tmp_path, "strict", server='domain = "up.example"'))
    carrier = signed(DEF, key)
    with_ui = {**carrier, "_meta": {**carrier["_meta"], "ui": {"icon": "a"}}}
    first = assess(v, with_ui)["up__echo"]
    assert first.verification == "verified"
    assert assess(v, with_ui)["up__echo"].verification == "verified"  # same _meta: unchanged
    swapped = {**carrier, "_meta": {**carrier["_meta"], "ui": {"icon": "b"}}}
    drift = assess(v, swapped)["up__echo"]
    assert (drift.verification, drift.blocked) == ("drifted", True)
    reason = drift.verification_reason or ""
    assert first.definition_hash[:12] in reason and drift.definition_hash[:12] in reason  # type: ignore[index]
    assert "_meta" in reason
    v.close()


def test_the_approved_form_keeps_meta_less_the_signature() -> None:
    sig = schemapin.SIGNATURE_META_KEY
    assert approved_definition({"name": "x", "_meta": {sig: "s", "ui": 1}}) == {
        "name": "x",
        "_meta": {"ui": 1},
    }
    assert approved_definition({"name": "x", "_meta": {sig: "s"}}) == {"name": "x"}
    assert approved_definition({"name": "x", "_meta": "odd"}) == {"name": "x", "_meta": "odd"}
    assert approved_definition({"name": "x"}) == {"name": "x"}


def test_the_verification_event_says_whether_the_tool_is_blocked(tmp_path: Path) -> None:
    ev = RecordingSink()
    v = ToolVerifier(three(tmp_path), ev)
    assess(v, DEF)
    assess(v, CHANGED)
    assert [(e["status"], e["blocked"]) for e in ev.of("tool.verification")] == [
        ("pinned", False),
        ("drifted", True),
    ]
    v.close()


# -- the approvals store down ([state] PostgreSQL) ----------------------------------------------


def test_approvals_unreadable_block_every_tool_of_the_changed_upstream(tmp_path: Path) -> None:
    cfg = three(tmp_path)
    v = ToolVerifier(cfg, RecordingSink())
    first = refresh(v, listing((DEF, "up"), (Z, "z")))
    v.close()
    down = ToolVerifier(cfg, RecordingSink(), state=PgToolStateStore(pg_down()))
    out = refresh(down, listing((DEF, "up"), (NEW, "up"), (Z, "z")), changed="up", previous=first)
    # the new tool could not be assessed: the kept one is not admitted either
    for name in ("up__echo", "up__added"):
        assert (out[name].verification, out[name].blocked, out[name].verification_mode) == (
            "unavailable",
            True,
            "tofu",
        )
        assert out[name].verification_reason and out[name].name == name
    assert out["z__z1"] is first["z__z1"]
    out = refresh(down, listing((DEF, "up")))
    assert out["up__echo"].verification == "unavailable"
    down.close()


def test_unreadable_accepted_findings_count_as_none_accepted(tmp_path: Path) -> None:
    v = ToolVerifier(three(tmp_path, "warn"), RecordingSink(), accepted=PgAcceptedFindings(pg_down()))
    out = assess(v, POISONED)["up__echo"]
    assert out.screening.findings and out.screening.accepted is False
    v.close()


# -- what the verifier is handed ---------------------------------------------------------------


def test_the_pin_store_and_accepted_findings_handed_in_are_the_ones_used(tmp_path: Path) -> None:
    cfg = three(tmp_path, "warn")
    pins = schemapin.PinStore(tmp_path / "elsewhere" / "pins.db")
    accepted = AcceptedFindings(tmp_path / "elsewhere" / "accepted.json")
    # the SQLite stores have the PostgreSQL ones' methods (the parameters name the replicas' case)
    v = ToolVerifier(cfg, RecordingSink(), pins=pins, accepted=accepted)  # type: ignore[arg-type]
    assert v.pins is pins
    h = assess(v, POISONED)["up__echo"].definition_hash
    accepted.accept("up__echo", str(h))
    assert assess(v, POISONED)["up__echo"].screening.accepted is True
    v.close()


def test_discovery_without_a_ca_trusts_only_the_system_store(
    tmp_path: Path,
    https_server: HttpsServer,  # noqa: F811
) -> None:
    """A .well-known server whose certificate only the test CA signed is refused (failed,
    blocked) when mcp.discovery_ca does not name that CA."""
    key = schemapin.generate_private_key()
    https_server.serve_json(
        "/.well-known/schemapin.json",
        schemapin.build_well_known(schemapin.public_key_pem(key.public_key()), "Up Co"),
    )
    v = ToolVerifier(three(tmp_path, "strict", server=f'domain = "{https_server.domain}"'), RecordingSink())
    info = assess(v, signed(DEF, key))["up__echo"]
    assert (info.verification, info.blocked, info.key_fingerprint) == ("failed", True, None)
    v.close()


@pytest.fixture
def http_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A plain-HTTP .well-known server on 127.0.0.1 (mcp.insecure_discovery_http, tests only)."""
    routes: dict[str, Any] = {}
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes, []))) as httpd:
        yield f"127.0.0.1:{httpd.server_address[1]}", routes


def test_insecure_discovery_http_fetches_the_key_over_http(
    tmp_path: Path, http_server: tuple[str, dict[str, Any]]
) -> None:
    from tests.schemapin.conftest import Route

    domain, routes = http_server
    key = schemapin.generate_private_key()
    doc = schemapin.build_well_known(schemapin.public_key_pem(key.public_key()), "Up Co")
    routes["/.well-known/schemapin.json"] = Route(body=__import__("json").dumps(doc).encode())
    for insecure, status in (("true", "verified"), ("false", "failed")):
        data = tmp_path / insecure
        data.mkdir()
        v = ToolVerifier(
            three(data, "strict", mcp=f"insecure_discovery_http = {insecure}", server=f'domain = "{domain}"'),
            RecordingSink(),
        )
        assert assess(v, signed(DEF, key))["up__echo"].verification == status
        v.close()


def test_approving_a_rotated_key_through_an_open_pin_store(
    tmp_path: Path,
    https_server: HttpsServer,  # noqa: F811
) -> None:
    """The admin API approves with the gateway's open pin store (SQLite or PostgreSQL), not a
    path: the pending key is accepted in that store."""
    from gateway.verify.approve import approve_current

    k1, k2 = schemapin.generate_private_key(), schemapin.generate_private_key()
    cfg = three(
        tmp_path,
        "strict",
        mcp=f'discovery_ca = "{https_server.ca_path}"\ndiscovery_ttl_s = 0',
        server=f'domain = "{https_server.domain}"',
    )
    v = ToolVerifier(cfg, RecordingSink())
    for key, status in ((k1, "verified"), (k2, "drifted")):
        https_server.serve_json(
            "/.well-known/schemapin.json",
            schemapin.build_well_known(schemapin.public_key_pem(key.public_key()), "Up Co"),
        )
        assert assess(v, signed(DEF, key))["up__echo"].verification == status
    rec = v.state.get("up", "echo")
    assert rec is not None
    approve_current(
        v.state, v.pins, rec, reviewed=rec.current_hash, domain=https_server.domain, actor="admin"
    )
    ok = assess(v, signed(DEF, k2))["up__echo"]
    assert (ok.verification, ok.key_fingerprint) == ("verified", schemapin.fingerprint(k2.public_key()))
    v.close()
