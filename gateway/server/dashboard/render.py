"""HTML for the dashboard pages. Every value goes through ``html.escape``."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

# relative to a session's base path (``/d/<prefix>``, ``gateway.server.dashboard``)
_NAV = (
    ("/", "Overview"),
    ("/tools", "Tools"),
    ("/decisions", "Recent decisions"),
    ("/upstreams", "Upstreams"),
    ("/agents", "Agents"),
    ("/audit", "Audit"),
)


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _badge(value: Any) -> str:
    v = e(value)
    return f'<span class="badge {v}">{v}</span>'


def _page(
    title: str, body: str, sess: dict[str, Any] | None, active: str = "", refresh: int | None = None
) -> str:
    nav = ""
    logout = ""
    base = ""  # the login page's assets are at the top level
    if sess is not None:
        base = e(sess["base"])
        links = []
        for href, label in _NAV:
            cls = ' class="active"' if href == active else ""
            links.append(f'<a href="{base}{href}"{cls}>{e(label)}</a>')
        nav = "<nav>" + "".join(links) + "</nav>"
        logout = (
            f'<form method="post" action="{base}/logout"><input type="hidden" name="csrf" value="{e(sess["csrf"])}">'
            f'<span class="muted">{e(sess["principal"])}</span> <button type="submit">Log out</button></form>'
        )
    data = f' data-refresh="{refresh}"' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)} · Symbi</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="{base}/static/dashboard.css"></head><body>'
        f"<header><h1>Symbi gateway</h1>{nav}{logout}</header>"
        f"<main{data}>{body}</main>"
        f'<script src="{base}/static/dashboard.js"></script></body></html>'
    )


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str, table_id: str) -> str:
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    if not body:
        return f'<p class="muted" id="{table_id}-empty">{e(empty)}</p>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _when(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + "Z"


def login_page(message: str | None) -> str:
    msg = f'<p class="msg" role="alert">{e(message)}</p>' if message else ""
    body = (
        '<div class="card login"><h2>Administrator login</h2>'
        '<p class="muted">Sign in with an API key that has the <code>admin</code> role '
        "(<code>symbi keys create --principal NAME --roles admin</code>).</p>"
        f'{msg}<form method="post" action="/login">'
        '<label for="api_key">API key</label>'
        '<input type="password" id="api_key" name="api_key" autocomplete="off" required>'
        '<p><button type="submit" id="login">Log in</button></p></form></div>'
    )
    return _page("Login", body, None)


def overview_page(
    sess: dict[str, Any], *, tools: int, upstreams: list[dict[str, Any]], calls: int, denied: int, ready: bool
) -> str:
    up = sum(1 for u in upstreams if u["state"] == "up")
    body = (
        '<div class="stats">'
        f'<div class="card"><div class="muted">Ready</div><div class="n {"ok" if ready else "bad"}">{"yes" if ready else "no"}</div></div>'
        f'<div class="card"><div class="muted">Tools</div><div class="n">{tools}</div></div>'
        f'<div class="card"><div class="muted">Upstreams up</div><div class="n">{up} / {len(upstreams)}</div></div>'
        f'<div class="card"><div class="muted">Recent calls (denied)</div><div class="n">{calls} ({denied})</div></div>'
        "</div>"
    )
    return _page("Overview", body, sess, "/")


def tools_page(
    sess: dict[str, Any], tools: list[dict[str, Any]], message: str | None = None, error: bool = False
) -> str:
    rows = (
        (
            f'<a href="{e(sess["base"])}/tools/{quote(t["name"], safe="")}"><code>{e(t["name"])}</code></a>',
            e(t["upstream"]),
            _badge(t["verification"]),
            _screening(t["screening"]),
            f"<code>{e(t['key_fingerprint'] or '')}</code>",
            e(t["description"][:160]),
        )
        for t in tools
    )
    table = _table(
        ("Tool", "Upstream", "Verification", "Screening", "Key", "Description"), rows, "No tools.", "tools"
    )
    note = (
        f'<p class="{"bad" if error else "ok"}" role="status" id="message">{e(message)}</p>'
        if message
        else ""
    )
    return _page("Tools", f'<div class="card"><h2>Tool catalogue</h2>{note}{table}</div>', sess, "/tools")


def _screening(s: dict[str, Any]) -> str:
    """The highest severity of a tool's screening findings and their rule ids (low ones aside)."""
    rules = sorted({f["rule"] for f in s["findings"] if f["severity"] != "low"})
    if not rules:
        return '<span class="muted">-</span>'
    accepted = " (accepted)" if s.get("accepted") else ""
    return f"{_badge(s['highest'])} <code>{e(', '.join(rules))}</code>{e(accepted)}"


def _findings(findings: list[dict[str, Any]]) -> str:
    if not findings:
        return '<p id="screening">Screening: no findings.</p>'
    items = "".join(
        f"<li>{_badge(f['severity'])} <code>{e(f['rule'])}</code> {e(f['summary'])} "
        f"in <code>{e(f['field'])}</code>: <code>{e(f['excerpt'])}</code></li>"
        for f in findings
    )
    return f'<h3>Screening findings</h3><ul id="screening">{items}</ul>'


def tool_page(sess: dict[str, Any], info: dict[str, Any] | None, error: str | None) -> str:
    """One tool's verification state; a drifted tool shows its diff and an Approve button."""
    if info is None:
        body = f'<div class="card"><h2>Tool</h2><p class="bad" id="message">{e(error)}</p></div>'
        return _page("Tool", body, sess, "/tools")
    name = info["tool"]
    parts = [
        f"<h2><code>{e(name)}</code></h2>",
        f'<p>Status {_badge(info["status"])} drifted: <strong id="drifted">{"yes" if info["drifted"] else "no"}</strong></p>',
        (
            f'<p class="muted">approved <code>{e(info["approved_hash"])}</code><br>'
            f"current <code>{e(info['current_hash'])}</code></p>"
        ),
    ]
    parts.append(_findings(info.get("screening", [])))
    if info["drifted"]:
        parts.append(f'<pre id="diff">{e(info["diff"])}</pre>')
        if (keys := info.get("key_change")) is not None:  # approving accepts a rotated key too
            parts.append(
                f'<p class="bad" id="key-change">Signing key: pinned <code>{e(keys["pinned"])}</code>, '
                f"this definition signed by <code>{e(keys['current'])}</code>: approving it pins that key "
                "(<code>symbi schemapin pins reject</code> turns the key down)</p>"
            )
        if info.get("pin_change_rejected"):  # the approval would be refused: say so, no button
            parts.append(
                '<p class="bad" id="pin-rejected">This change to the tool\'s SchemaPin pin was rejected '
                "(<code>symbi schemapin pins reject</code>): it stays refused. To accept it after all, "
                "<code>symbi schemapin pins approve</code> naming it.</p>"
            )
        else:
            parts.append(_approve_form(name, info, sess))
    if error:
        parts.append(f'<p class="bad" id="message">{e(error)}</p>')
    return _page(name, '<div class="card">' + "".join(parts) + "</div>", sess, "/tools")


def _approve_form(name: str, info: dict[str, Any], sess: dict[str, Any]) -> str:
    """The Approve button, naming the definition shown (its hash)."""
    return (
        f'<form method="post" action="{e(sess["base"])}/tools/{quote(name, safe="")}/approve">'
        f'<input type="hidden" name="csrf" value="{e(sess["csrf"])}">'
        # the definition shown above, by hash: one the upstream swaps in later is refused
        f'<input type="hidden" name="hash" value="{e(info["current_hash"] or "")}">'
        f'<button type="submit" id="approve">Approve this definition '
        f"(<code>{e((info['current_hash'] or '')[:16])}</code>)</button></form>"
    )


def decisions_page(sess: dict[str, Any], calls: list[dict[str, Any]]) -> str:
    rows = (
        (
            e(_when(c["time"])),
            e(c["principal"]),
            f"<code>{e(c['target'])}</code>",
            _badge(c["decision"] or "none"),
            _badge(c["outcome"]),
            e("; ".join(c["reasons"])),
            e(f"{c['latency_ms']:.1f} ms"),
        )
        for c in calls
    )
    table = _table(
        ("Time", "Principal", "Target", "Decision", "Outcome", "Reasons", "Latency"),
        rows,
        "No calls yet.",
        "decisions",
    )
    body = (
        '<div class="card"><h2>Recent decisions</h2>'
        '<p><label><input type="checkbox" id="autorefresh"> refresh every 5 s</label></p>'
        f"{table}</div>"
    )
    return _page("Recent decisions", body, sess, "/decisions", refresh=5)


def upstreams_page(
    sess: dict[str, Any],
    ups: list[dict[str, Any]],
    discovered: list[dict[str, Any]] | None = None,
    message: str | None = None,
) -> str:
    rows = (
        (
            e(u["name"]),
            _badge(u["state"]),
            e(u["transport"]),
            e(u["tools"]),
            e(u["restarts"]),
            e(u["last_error"] or ""),
        )
        for u in ups
    )
    table = _table(
        ("Upstream", "State", "Transport", "Tools", "Restarts", "Last error"),
        rows,
        "No upstreams.",
        "upstreams",
    )
    body = f'<div class="card"><h2>Upstream health</h2>{table}</div>'
    if discovered is not None:
        body += _discovered(sess, discovered, message)
    return _page("Upstreams", body, sess, "/upstreams")


def _discovered(sess: dict[str, Any], servers: list[dict[str, Any]], message: str | None) -> str:
    """Servers discovery found: quarantined ones (not started) have an Approve button."""

    def act(d: dict[str, Any]) -> str:
        if d["status"] != "quarantined":
            return e(d.get("approved_by") or "")
        if d.get("unresolved"):  # approving it is refused (409): no button, the reason instead
            return f'<span class="bad" id="unresolved-{e(d["name"])}">Cannot be approved: {e(d["unresolved"])}</span>'
        return (
            f'<form method="post" action="{e(sess["base"])}/discovered/{quote(d["name"], safe="")}/approve">'
            f'<input type="hidden" name="csrf" value="{e(sess["csrf"])}">'
            f'<input type="hidden" name="digest" value="{e(d["digest"])}">'
            f'<button type="submit" id="approve-{e(d["name"])}">Approve and start</button></form>'
        )

    rows = (
        (
            e(d["name"]),
            _badge(d["status"]),
            e(d["original_name"]),
            e(d["source"]),
            f"<code>{e(d['launches'])}</code>",
            act(d),
        )
        for d in servers
    )
    table = _table(
        ("Server", "State", "Named", "Found in", "Launches", ""), rows, "Nothing discovered.", "discovered"
    )
    note = f'<p class="ok" role="status" id="message">{e(message)}</p>' if message else ""
    return f'<div class="card"><h2>Discovered servers</h2>{note}{table}</div>'


def audit_page(sess: dict[str, Any], status: dict[str, Any] | None, message: str | None) -> str:
    if status is None:
        body = (
            f'<div class="card"><h2>Audit chain</h2><p class="muted" id="audit-status">{e(message)}</p></div>'
        )
        return _page("Audit", body, sess, "/audit")
    v = status["verify"]
    ok = bool(v.get("ok"))
    summary = (
        f'<p id="audit-status">Chain: {_badge("ok" if ok else "failed")} '
        f"events {e(v.get('events'))}, head <code>{e(v.get('head_hash'))}</code></p>"
    )
    if v.get("problem"):
        summary += f'<p class="bad">{e(json.dumps(v["problem"]))}</p>'
    rows = (
        (
            e(ev.get("seq")),
            e(_when(ev.get("ts_ns", 0) / 1e9)),
            e(ev.get("type")),
            e(ev.get("principal")),
            f"<code>{e(json.dumps(ev.get('details'), default=str)[:200])}</code>",
        )
        for ev in reversed(status["events"])  # newest first
    )
    table = _table(("Seq", "Time", "Event", "Principal", "Details"), rows, "No events.", "audit-events")
    return _page("Audit", f'<div class="card"><h2>Audit chain</h2>{summary}{table}</div>', sess, "/audit")


_ACTIONS = {
    "Ready": ("suspend", "terminate"),
    "Running": ("suspend", "terminate"),
    "Suspended": ("resume", "terminate"),
    "Failed": ("terminate",),
}


def _agent_actions(sess: dict[str, Any], a: dict[str, Any]) -> str:
    actions: tuple[str, ...] = ("resume",) if a["suspend_pending"] else ()
    actions += tuple(x for x in _ACTIONS.get(a["state"], ()) if x not in actions)
    forms = (
        f'<form method="post" action="{e(sess["base"])}/agents/{quote(a["id"], safe="")}/{act}" class="inline">'
        f'<input type="hidden" name="csrf" value="{e(sess["csrf"])}">'
        f'<input type="text" name="reason" placeholder="reason" aria-label="reason for {act}">'
        f'<button type="submit" class="{act}">{e(act.capitalize())}</button></form>'
        for act in actions
    )
    return "".join(forms)


def agents_page(
    sess: dict[str, Any], agents: list[dict[str, Any]], message: str | None = None, error: bool = False
) -> str:
    """Every agent with its state; suspend / resume / terminate go through the admin API's actions."""
    rows = "".join(
        f'<tr id="agent-{e(a["id"])}">'
        f"<td>{e(a['name'])}</td><td><code>{e(a['id'])}</code></td><td>{e(a['principal'])}</td>"
        f"<td>{_badge(a['state'])}{' (suspension pending)' if a['suspend_pending'] else ''}</td>"
        f"<td>{e(a['priority'])}</td><td>{e(a['in_flight'])}</td><td>{e(a['calls'])}</td>"
        f"<td>{'hosted' if a['hosted'] else 'session'}</td><td>{e(a['reason'])}</td>"
        f"<td>{_agent_actions(sess, a)}</td></tr>"
        for a in agents
    )
    head = "".join(
        f"<th>{e(h)}</th>"
        for h in (
            "Agent",
            "Id",
            "Principal",
            "State",
            "Priority",
            "In flight",
            "Calls",
            "Kind",
            "Reason",
            "Actions",
        )
    )
    table = (
        f'<table id="agents"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        if rows
        else '<p class="muted" id="agents-empty">No agents.</p>'
    )
    note = (
        f'<p class="{"bad" if error else "ok"}" role="status" id="message">{e(message)}</p>'
        if message
        else ""
    )
    return _page("Agents", f'<div class="card"><h2>Agents</h2>{note}{table}</div>', sess, "/agents")
