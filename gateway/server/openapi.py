"""The OpenAPI 3.1 document of the admin REST API (served at ``/api/openapi.json``).

Response schemas are JSON Schema 2020-12; the tests check every endpoint against them
(schemathesis, and jsonschema for the answers that need a prepared state).
"""

from __future__ import annotations

from typing import Any

from gateway.server.openapi_schemas import REF, SCHEMAS

_S = REF


def _ok(ref: str, desc: str = "OK") -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": {"$ref": _S + ref}}}}


_AUDIT_FILTERS = [
    {"name": n, "in": "query", "required": False, "schema": sch}
    for n, sch in (
        ("principal", {"type": "string"}),
        ("tool", {"type": "string"}),
        ("type", {"type": "string", "description": "comma-separated event types"}),
        ("decision", {"enum": ["allow", "deny"]}),
        ("since_ns", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
        ("until_ns", {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 100000}),
    )
]


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": _S + "Error"}}}}
_STD = {"401": _ERR, "403": _ERR}
# an operator action done whose record the log failed (or stalled on) after its check
_DONE = (
    "action_unrecorded (done: true): done, its audit record not committed yet "
    "(held: sent again; pending: still queued in a stalled writer; restart_needed: the log "
    "refuses for good, the record is logged then and when the gateway stops; all three false: "
    "dropped over the bound of held records, or the gateway stopped first, logged then)"
)
_LIMIT = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    }
]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Symbi gateway admin API", "version": "1"},
    "servers": [{"url": "/api"}],
    "security": [{"bearer": []}, {"apiKey": []}],
    "paths": {
        "/tools/{name}/diff": {
            "get": {
                "summary": "Approved vs current definition of a tool (unified diff)",
                "parameters": [_NAME],
                "responses": {
                    "200": _ok("ToolDiff"),
                    "404": _ERR,
                    "503": _ok("Unavailable", "no verifier"),
                    **_STD,
                },
            }
        },
        "/tools/{name}/approve": {
            "post": {
                "summary": "Approve the reviewed definition of a tool (not for signed-manifest upstreams)",
                "description": "hash: the current_hash of the diff the admin reviewed; 400 "
                "(reviewed_hash_required) without it, 409 (definition_changed) when the current "
                "definition is another one",
                "parameters": [_NAME],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["hash"],
                        "properties": {"hash": {"type": "string", "pattern": "^[0-9a-fA-F]{32,64}$"}},
                    }
                ),
                "responses": {
                    "200": _ok("Approved"),
                    "400": _ERR,
                    "404": _ERR,
                    "409": _ERR,
                    "503": _ok("Unavailable", "no verifier, or the log cannot record it; or " + _DONE),
                    **_STD,
                },
            }
        },
        "/tools": {
            "get": {
                "summary": "Tool catalogue with verification state",
                "responses": {"200": _ok("ToolList"), **_STD},
            }
        },
        "/upstreams": {
            "get": {"summary": "Upstream status", "responses": {"200": _ok("UpstreamList"), **_STD}}
        },
        "/upstreams/{name}/restart": {
            "post": {
                "summary": "Restart one upstream connection",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "202": _ok("Restarting", "restart requested"),
                    "404": _ERR,
                    "503": _ok("Unavailable", "the log cannot record it: nothing done; or " + _DONE),
                    **_STD,
                },
            }
        },
        "/discovered": {
            "get": {
                "summary": "Servers found by discovery (mcp.discovery_enabled) and their quarantine state",
                "responses": {"200": _ok("DiscoveredList"), **_STD},
            }
        },
        "/discovered/{name}/approve": {
            "post": {
                "summary": "Approve a quarantined server: the gateway starts it (tofu) within mcp.recheck_interval_s",
                "description": "digest: the digest of the listing the admin saw (GET /discovered); 400 "
                "(reviewed_hash_required) without it, 409 (definition_changed) when the server's config "
                "changed since (its client file rewritten): nothing approved",
                "parameters": [_NAME],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["digest"],
                        "properties": {"digest": {"type": "string", "pattern": "^[0-9a-fA-F]{32,64}$"}},
                    }
                ),
                "responses": {
                    "200": _ok("Discovered"),
                    "400": _ERR,
                    "404": _ERR,
                    "409": _ERR,
                    "503": _ok("Unavailable", "not running yet"),
                    **_STD,
                },
            }
        },
        "/agents": {
            "get": {
                "summary": "Every agent: id, principal, state, priority, in-flight, limits, usage",
                "responses": {"200": _ok("AgentList"), "503": _ok("Unavailable"), **_STD},
            }
        },
        "/agents/{id}": {
            "get": {
                "summary": "One agent (by id, name or unique id prefix)",
                "parameters": [_ID],
                "responses": {"200": _ok("Agent"), "404": _ERR, **_STD},
            }
        },
        **{
            f"/agents/{{id}}/{action}": {
                "post": {
                    "summary": summary,
                    "parameters": [_ID],
                    "requestBody": _json_body(
                        {"type": "object", "properties": {"reason": {"type": "string"}}}, required=False
                    ),
                    "responses": {
                        "200": _ok("AgentAction"),
                        "202": _ok(
                            "AgentActionPassed",
                            "passed to the process holding the agent (a hosted agent's lease, a session agent's session)",
                        ),
                        "400": _ERR,
                        "404": _ERR,
                        "409": _ERR,
                        "503": _ok(
                            "Unavailable",
                            "the shared state (Redis) cannot be reached, or the audit log cannot record "
                            "the action: nothing was done (audit_unavailable); or " + _DONE,
                        ),
                        "507": _ok(
                            "Error",
                            "suspend: the agent is suspended, but its principal is not held everywhere "
                            "(the bound of suspended principals is reached)",
                        ),
                        **_STD,
                    },
                }
            }
            for action, summary in (
                ("suspend", "Suspend an agent (Running now; Ready: at its next task)"),
                ("resume", "Resume a suspended agent (policy cleared)"),
                ("terminate", "Terminate an agent (Running: when its calls in flight end)"),
            )
        },
        "/agents/{id}/run": {
            "post": {
                "summary": "Start a hosted agent ([agents.NAME]) now",
                "parameters": [_ID],
                "responses": {
                    "200": _ok("AgentAction"),
                    "404": _ERR,
                    "503": _ok("Unavailable", "the log cannot record it: nothing done; or " + _DONE),
                    **_STD,
                },
            }
        },
        "/principals": {
            "get": {
                "summary": "The suspended principals: a session agent's suspension is its principal's",
                "responses": {"200": _ok("PrincipalList"), "503": _ok("Unavailable"), **_STD},
            }
        },
        **{
            f"/principals/{action}": {
                "post": {
                    "summary": summary,
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["principal"],
                            "properties": {
                                "principal": {
                                    "type": "string",
                                    "pattern": "^(key:.|jwt:.+#.|anonymous:.)",
                                    "maxLength": 512,
                                    "description": (
                                        "qualified, of a kind this gateway makes: key:ID, "
                                        "jwt:ISSUER#SUB ([http.jwt] issuer), anonymous:ID (its own)"
                                    ),
                                },
                                "reason": {"type": "string"},
                            },
                        }
                    ),
                    "responses": {
                        "200": _ok("PrincipalAction"),
                        "202": _ok(
                            "PrincipalAction", "done here; the shared state (Redis) gets it when it answers"
                        ),
                        "400": _ERR,
                        "404": _ok(
                            "Error",
                            "no such principal here (key:NAME with no live API key, a JWT or anonymous "
                            "one not of its config), or none to resume",
                        ),
                        "503": _ok(
                            "Unavailable",
                            "a resume Redis could not take, or an action the audit log cannot record: "
                            "nothing was done (audit_unavailable); or " + _DONE,
                        ),
                        "507": _ERR,
                        **_STD,
                    },
                }
            }
            for action, summary in (
                ("suspend", "Suspend a principal: every session agent of it is refused, on every replica"),
                ("resume", "Clear a principal's suspension; its suspended session agents resume"),
            )
        },
        "/status": {
            "get": {
                "summary": "HealthStatus: overall, components, resource utilisation, recent errors",
                "responses": {"200": _ok("HealthStatus"), "503": _ok("Unavailable"), **_STD},
            }
        },
        "/health": {
            "get": {
                "summary": "Overall and per-component health (short form of /status)",
                "responses": {"200": _ok("Health"), "503": _ok("Unavailable"), **_STD},
            }
        },
        "/sessions": {
            "get": {"summary": "Open MCP sessions", "responses": {"200": _ok("SessionList"), **_STD}}
        },
        "/state": {
            "get": {
                "summary": "State held per session, principal, upstream and tool (counts, not RSS)",
                "responses": {"200": _ok("StateFootprint"), **_STD},
            }
        },
        "/pins": {
            "get": {
                "summary": "SchemaPin key pins (domain, tool, key, definition, pending change, rejected change)",
                "responses": {"200": _ok("PinList"), **_STD},
            }
        },
        "/calls/recent": {
            "get": {
                "summary": "Recent call outcomes (allow/deny with reasons)",
                "parameters": _LIMIT,
                "responses": {"200": _ok("CallList"), "400": _ERR, **_STD},
            }
        },
        "/audit/recent": {
            "get": {
                "summary": "Recent audit events",
                "parameters": _LIMIT,
                "responses": {
                    "200": _ok("AuditEvents"),
                    "400": _ERR,
                    "503": _ok("Unavailable", "no audit log"),
                    **_STD,
                },
            }
        },
        "/audit/query": {
            "get": {
                "summary": "Audit events matching every given filter, in sequence order",
                "parameters": _AUDIT_FILTERS,
                "responses": {
                    "200": _ok("AuditEvents"),
                    "400": _ERR,
                    "503": _ok("Unavailable", "no audit log"),
                    **_STD,
                },
            }
        },
        "/audit/export": {
            "get": {
                "summary": "Audit events as JSON lines (wire form, verifiable offline)",
                "parameters": _AUDIT_FILTERS,
                "responses": {
                    "200": {"description": "one event per line", "content": {"application/x-ndjson": {}}},
                    "400": _ERR,
                    "503": _ok("Unavailable", "no audit log"),
                    **_STD,
                },
            }
        },
        "/audit/verify": {
            "get": {
                "summary": "Verify the audit chain",
                "responses": {"200": _ok("AuditVerify"), "503": _ok("Unavailable", "no audit log"), **_STD},
            }
        },
        "/policy/status": {
            "get": {
                "summary": "Policy engine status",
                "responses": {
                    "200": _ok("PolicyStatus"),
                    "503": _ok("Unavailable", "no policy engine"),
                    **_STD,
                },
            }
        },
        "/policy/reload": {
            "post": {
                "summary": "Reload the policy files (a broken policy is refused; the old one stays)",
                "responses": {
                    "200": _ok("PolicyReload"),
                    "409": _ERR,
                    "422": _ok("PolicyReload", "refused: the previous policy stays in force"),
                    "503": _ok("Unavailable", "no policy engine, or the log cannot record it; or " + _DONE),
                    **_STD,
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}, **_STD}}
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "API key (symbi_...) or JWT"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "schemas": SCHEMAS,
    },
}
