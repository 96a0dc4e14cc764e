"""The OpenAPI 3.1 document of the admin REST API (served at ``/api/openapi.json``).

Response schemas are JSON Schema 2020-12; the tests check every endpoint against them
(schemathesis, and jsonschema for the answers that need a prepared state).
"""

from __future__ import annotations

from typing import Any

_S = "#/components/schemas/"
_NULLSTR = {"type": ["string", "null"]}


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
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_STATES = ["Initializing", "Ready", "Running", "Suspended", "Failed", "Terminated"]
_HEALTH = {"enum": ["healthy", "degraded", "unhealthy"]}
_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": _S + "Error"}}}}
_STD = {"401": _ERR, "403": _ERR}
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
                "summary": "Approve the current definition of a tool (not for signed-manifest upstreams)",
                "parameters": [_NAME],
                "responses": {
                    "200": _ok("Approved"),
                    "404": _ERR,
                    "409": _ERR,
                    "503": _ok("Unavailable", "no verifier"),
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
                "parameters": [_NAME],
                "responses": {
                    "200": _ok("Discovered"),
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
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"type": "object", "properties": {"reason": {"type": "string"}}}
                            }
                        },
                    },
                    "responses": {"200": _ok("AgentAction"), "400": _ERR, "404": _ERR, "409": _ERR, **_STD},
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
                "responses": {"200": _ok("AgentAction"), "404": _ERR, **_STD},
            }
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
                "summary": "SchemaPin key pins (domain, tool, key, definition, pending change)",
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
                    "503": _ok("Unavailable", "no policy engine"),
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
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "reason": {"type": "string"},
                    "error_description": {"type": "string"},
                },
            },
            "Unavailable": {
                "type": "object",
                "required": ["error", "component", "reason"],
                "properties": {
                    "error": {"const": "unavailable"},
                    "component": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
            "Tool": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "name",
                    "original_name",
                    "upstream",
                    "description",
                    "verification",
                    "key_fingerprint",
                    "definition_hash",
                    "code_tool",
                ],
                "properties": {
                    "name": {"type": "string"},
                    "original_name": {"type": "string"},
                    "upstream": {"type": "string"},
                    "description": {"type": "string"},
                    "verification": {
                        "enum": ["verified", "pinned", "unverified", "drifted", "revoked", "off", "failed"]
                    },
                    "key_fingerprint": _NULLSTR,
                    "definition_hash": _NULLSTR,
                    "code_tool": {"type": "boolean"},
                    "screening": {
                        "type": "object",
                        "description": "poisoning screening of the definition (symbi scan): highest severity "
                        "and the findings' rule ids, severities and fields",
                        "required": ["highest", "findings"],
                        "properties": {
                            "highest": {"type": ["string", "null"], "enum": ["low", "medium", "high", None]},
                            "findings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
            "PolicyReload": {
                "type": "object",
                "required": ["reloaded", "loaded"],
                "properties": {"reloaded": {"type": "boolean"}, "loaded": {"type": "boolean"}},
            },
            "ToolDiff": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "tool",
                    "status",
                    "drifted",
                    "approved_hash",
                    "current_hash",
                    "diff",
                    "screening",
                ],
                "properties": {
                    "tool": {"type": "string"},
                    "status": {"type": "string"},
                    "drifted": {"type": "boolean"},
                    "approved_hash": _NULLSTR,
                    "current_hash": _NULLSTR,
                    "diff": {"type": "string"},
                    "screening": {
                        "type": "array",
                        "description": "screening findings of the current definition (symbi scan)",
                        "items": {
                            "type": "object",
                            "required": [
                                "rule",
                                "category",
                                "severity",
                                "field",
                                "span",
                                "excerpt",
                                "summary",
                            ],
                            "properties": {
                                "rule": {"type": "string"},
                                "category": {"type": "string"},
                                "severity": {"type": "string", "enum": ["low", "medium", "high"]},
                                "field": {"type": "string"},
                                "span": {"type": "array", "items": {"type": "integer"}},
                                "excerpt": {"type": "string"},
                                "summary": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Discovered": {
                "type": "object",
                "additionalProperties": False,
                "description": "a discovered server; never its env, headers, args or URL query",
                "required": ["name", "source", "original_name", "status", "transport", "launches"],
                "properties": {
                    "name": {"type": "string"},
                    "source": {"type": "string"},
                    "original_name": {"type": "string"},
                    "status": {"type": "string", "enum": ["quarantined", "approved", "removed"]},
                    "transport": {"type": "string", "enum": ["stdio", "http"]},
                    "launches": {"type": "string"},
                    "first_seen": {"type": "number"},
                    "approved_by": _NULLSTR,
                },
            },
            "DiscoveredList": {
                "type": "object",
                "required": ["servers"],
                "properties": {"servers": {"type": "array", "items": {"$ref": _S + "Discovered"}}},
            },
            "Approved": {
                "type": "object",
                "required": ["tool", "approved_hash"],
                "properties": {"tool": {"type": "string"}, "approved_hash": {"type": "string"}},
            },
            "ToolList": {
                "type": "object",
                "required": ["tools"],
                "properties": {"tools": {"type": "array", "items": {"$ref": _S + "Tool"}}},
            },
            "Upstream": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "state", "transport", "restarts", "last_error", "tools"],
                "properties": {
                    "name": {"type": "string"},
                    "state": {"enum": ["starting", "up", "down"]},
                    "transport": {"enum": ["stdio", "http"]},
                    "restarts": {"type": "integer", "minimum": 0},
                    "last_error": _NULLSTR,
                    "tools": {"type": "integer", "minimum": 0},
                },
            },
            "UpstreamList": {
                "type": "object",
                "required": ["upstreams"],
                "properties": {"upstreams": {"type": "array", "items": {"$ref": _S + "Upstream"}}},
            },
            "PinList": {
                "type": "object",
                "required": ["pins"],
                "properties": {
                    "pins": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["domain", "tool_id", "key_fingerprint", "definition_hash"],
                            "properties": {
                                "domain": {"type": "string"},
                                "tool_id": {"type": "string"},
                                "key_fingerprint": {"type": "string"},
                                "definition_hash": {"type": "string"},
                                "first_seen": {"type": "string"},
                                "last_seen": {"type": "string"},
                                "pending_fingerprint": {"type": ["string", "null"]},
                                "pending_definition_hash": {"type": ["string", "null"]},
                                "pending_since": {"type": ["string", "null"]},
                            },
                        },
                    }
                },
            },
            "Restarting": {
                "type": "object",
                "required": ["upstream", "restarting"],
                "properties": {"upstream": {"type": "string"}, "restarting": {"const": True}},
            },
            "Session": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "owner"],
                "properties": {
                    "id": {"type": "string", "description": "first 8 characters only"},
                    "owner": _NULLSTR,
                },
            },
            "StateFootprint": {
                "type": "object",
                "required": ["owned", "bounded", "caps", "vocabulary", "process"],
                "properties": {
                    k: {"type": "object", "additionalProperties": {"type": "integer"}}
                    for k in ("owned", "bounded", "caps", "vocabulary", "process")
                },
            },
            "SessionList": {
                "type": "object",
                "required": ["max_sessions", "sessions"],
                "properties": {
                    "max_sessions": {"type": "integer"},
                    "sessions": {"type": "array", "items": {"$ref": _S + "Session"}},
                },
            },
            "Call": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "time",
                    "principal",
                    "kind",
                    "target",
                    "upstream",
                    "outcome",
                    "decision",
                    "reasons",
                    "error_code",
                    "latency_ms",
                ],
                "properties": {
                    "time": {"type": "number"},
                    "principal": {"type": "string"},
                    "kind": {"type": "string"},
                    "target": {"type": "string"},
                    "upstream": _NULLSTR,
                    "outcome": {"enum": ["ok", "error", "denied"]},
                    "decision": {"enum": ["allow", "deny", None]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "error_code": _NULLSTR,
                    "latency_ms": {"type": "number", "minimum": 0},
                },
            },
            "CallList": {
                "type": "object",
                "required": ["calls"],
                "properties": {"calls": {"type": "array", "items": {"$ref": _S + "Call"}}},
            },
            "AuditEvents": {
                "type": "object",
                "required": ["events"],
                "properties": {"events": {"type": "array", "items": {"type": "object"}}},
            },
            "AuditVerify": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
            "Agent": {
                "type": "object",
                "required": [
                    "id",
                    "name",
                    "principal",
                    "client",
                    "hosted",
                    "priority",
                    "state",
                    "reason",
                    "in_flight",
                    "calls",
                    "limits",
                    "usage",
                ],
                "properties": {
                    "id": {"type": "string"},
                    "name": {"type": "string"},
                    "principal": {"type": "string"},
                    "client": {"type": "string"},
                    "hosted": {"type": "boolean"},
                    "priority": {"type": "integer", "minimum": 0, "maximum": 9},
                    "state": {"enum": _STATES},
                    "reason": {"type": "string"},
                    "suspend_pending": _NULLSTR,
                    "in_flight": {"type": "integer", "minimum": 0},
                    "calls": {"type": "integer", "minimum": 0},
                    "limits": {"type": "object"},
                    "usage": {"type": ["object", "null"]},
                },
            },
            "AgentList": {
                "type": "object",
                "required": ["agents"],
                "properties": {"agents": {"type": "array", "items": {"$ref": _S + "Agent"}}},
            },
            "AgentAction": {
                "type": "object",
                "required": ["agent", "result", "state"],
                "properties": {
                    "agent": {"type": "string"},
                    "result": {"type": "string"},
                    "state": {"enum": _STATES},
                },
            },
            "HealthStatus": {
                "type": "object",
                "required": ["overall_status", "component_health", "resource_utilization", "recent_errors"],
                "properties": {
                    "overall_status": _HEALTH,
                    "component_health": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": _HEALTH},
                        },
                    },
                    "resource_utilization": {"type": "object", "required": ["agents", "scheduler"]},
                    "recent_errors": {"type": "array", "items": {"type": "object"}},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status", "components"],
                "properties": {
                    "status": _HEALTH,
                    "components": {"type": "object", "additionalProperties": _HEALTH},
                },
            },
            "PolicyStatus": {
                "type": "object",
                "required": ["loaded"],
                "properties": {"loaded": {"type": "boolean"}},
            },
        },
    },
}
