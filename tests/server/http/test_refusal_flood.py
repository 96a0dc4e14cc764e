"""Attack (red team 28, "noticed and left"): one API key floods the gateway with calls the
policy refuses. Each refusal was a signed, durable record, so the log grew by one per refused
call with no limit. Now a principal's first ``[audit] refusals_recorded_per_window`` refusals
of a window are recorded one by one and the rest counted into ``audit.refusals_summarized``
events whose counts add up exactly. A real gateway over streamable HTTP, server-everything
behind it, the log read and verified with the project's own reader and ``symbi audit verify``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from gateway.audit import AuditRecord, store
from gateway.config import load_config
from tests.cli._audit import symbi as symbi_audit
from tests.server.http.conftest import DENY_FORBIDDEN_ECHO, bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS
from tests.server.http.test_fastlane import reply_to

ECHO = "everything__echo"
PER_WINDOW = 50
FLOOD = 500


class KeySession:
    """One MCP session of one API key, over one HTTP connection (the denial tests use it too)."""

    def __init__(self, mcp: str, key: str) -> None:
        self.http = httpx.Client(timeout=30)
        r = self.http.post(mcp, json=INIT, headers={**MCP_HEADERS, **bearer(key)})
        assert r.status_code == 200, r.text
        self.mcp = mcp
        self.ids = 100
        self.h = {
            **MCP_HEADERS,
            **bearer(key),
            "mcp-session-id": r.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        self.http.post(mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.h)

    def call(self, tool: str, args: dict[str, Any]) -> str | None:
        """The call's ``symbi/error`` code, None when it was answered."""
        self.ids += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.ids,
            "method": "tools/call",
            "params": {"name": tool, "arguments": args},
        }
        r = self.http.post(self.mcp, json=body, headers=self.h)
        assert r.status_code == 200, r.text
        result = reply_to(r, self.ids)["result"]
        if not result.get("isError"):
            return None
        return str(((result.get("_meta") or {}).get("symbi/error") or {}).get("code"))

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Any other request's JSON-RPC answer (a result or an error)."""
        self.ids += 1  # a request id is not reused within a session (the MCP spec)
        body = {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}
        r = self.http.post(self.mcp, json=body, headers=self.h)
        assert r.status_code == 200, r.text
        return reply_to(r, self.ids)

    def close(self) -> None:
        self.http.delete(self.mcp, headers=self.h)
        self.http.close()


def _config(tmp_path: Path, window_s: float) -> Path:
    (tmp_path / "policy.rego").write_text(DENY_FORBIDDEN_ECHO)
    extra = (
        "[runtime]\nsuspend_after_denials = 100000\n"  # the flood stays policy denials, echo stays allowed
        f"[audit]\nrefusals_recorded_per_window = {PER_WINDOW}\nrefusal_window_s = {window_s}\n"
    )
    return everything_config(tmp_path, top_extra=extra, policy=tmp_path / "policy.rego")


def _records(cfg: Path, types: tuple[str, ...]) -> list[AuditRecord]:
    conn = store.open_reader(load_config(cfg, {}).audit_path)
    try:
        return store.query(conn, types=types)
    finally:
        conn.close()


def test_a_flood_of_refused_calls_grows_the_log_by_a_bounded_number_of_records(tmp_path: Path) -> None:
    cfg = _config(tmp_path, 3600.0)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        s = KeySession(run.mcp, keys.user)
        codes = []
        for i in range(FLOOD):
            codes.append(s.call(ECHO, {"message": "forbidden"}))
            if i % 10 == 0:  # allowed calls in the flood: each still recorded
                codes.append(s.call(ECHO, {"message": f"ok {i}"}))
        s.close()
    # the client saw every refusal, the same one, and every allowed answer
    assert codes.count("policy_denied") == FLOOD and codes.count(None) == FLOOD // 10
    calls = [r for r in _records(cfg, ("tool.call",)) if r.details.get("tool") == ECHO]
    denied = [r for r in calls if r.details["outcome"] == "denied"]
    allowed = [r for r in calls if r.details["outcome"] == "ok"]
    [principal] = {r.principal for r in denied}
    assert len(denied) == PER_WINDOW  # 500 before: a record per refused call
    assert len(allowed) == FLOOD // 10
    summaries = _records(cfg, ("audit.refusals_summarized",))
    assert summaries and {r.principal for r in summaries} == {principal}
    counted = [c for r in summaries for c in r.details["counts"]]
    assert sum(c["count"] for c in counted) == FLOOD - PER_WINDOW  # every refusal accounted for
    assert {(c["error_code"], c["target"], c["event_type"]) for c in counted} == {
        ("policy_denied", ECHO, "tool.call")
    }
    assert all(c["call_ids"] for c in counted)
    verify = symbi_audit("verify", "--config", cfg)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_flood_of_refused_requests_is_counted_in_the_same_budget(tmp_path: Path) -> None:
    """Refused requests that are not calls (a non-admin's read of the status resource, a
    subscription to a URI nobody serves) wrote an event each (status.read_denied,
    request.refused): the same flood, by other methods."""
    cfg = _config(tmp_path, 3600.0)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        s = KeySession(run.mcp, keys.user)
        answers = []
        for i in range(FLOOD // 2):
            answers.append(s.request("resources/read", {"uri": "symbi://status"}))
            answers.append(s.request("resources/subscribe", {"uri": f"nowhere://{i % 40}"}))
        s.close()
    assert all("error" in a for a in answers)  # each one refused, as before
    kinds = ("status.read_denied", "request.refused")
    one_by_one = _records(cfg, kinds)
    [principal] = {r.principal for r in one_by_one}
    assert len(one_by_one) == PER_WINDOW  # 500 before: an event per refused request
    counted = [c for r in _records(cfg, ("audit.refusals_summarized",)) for c in r.details["counts"]]
    assert sum(c["count"] for c in counted) == FLOOD - PER_WINDOW
    assert {c.get("event_type") for c in counted if not c.get("other")} <= set(kinds)
    assert {r.principal for r in _records(cfg, ("audit.refusals_summarized",))} == {principal}


def test_a_burst_that_stops_is_summarized_when_its_window_ends(tmp_path: Path) -> None:
    """No refusal after the burst, no flush, no shutdown: the sweep writes its counts. (A 5 s
    window: with 1 s, a loaded machine's 70 calls spanned several windows of under 50 each,
    and nothing was summarized.)"""
    cfg = _config(tmp_path, 5.0)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        s = KeySession(run.mcp, keys.user)
        codes = [s.call(ECHO, {"message": "forbidden"}) for _ in range(PER_WINDOW + 20)]
        s.close()
        deadline = time.monotonic() + 30
        summaries: list[AuditRecord] = []
        denied: list[AuditRecord] = []
        # until every refusal is accounted for, however the burst split over windows (a first
        # summary can come before a later window's)
        while time.monotonic() < deadline:
            summaries = _records(cfg, ("audit.refusals_summarized",))
            denied = [r for r in _records(cfg, ("tool.call",)) if r.details["outcome"] == "denied"]
            if summaries and len(denied) + sum(r.details["summarized"] for r in summaries) == len(codes):
                break
            time.sleep(0.2)
    assert set(codes) == {"policy_denied"}
    assert summaries and all(r.details["window_ended"] is True for r in summaries)
    assert len(denied) + sum(r.details["summarized"] for r in summaries) == PER_WINDOW + 20
    assert all(r.details["summarized"] > 0 for r in summaries)
