"""The response schemas (JSON Schema 2020-12) of the admin REST API's OpenAPI document
(``gateway.server.openapi``: the paths that refer to them)."""

from __future__ import annotations

from typing import Any

REF = "#/components/schemas/"
_NULLSTR = {"type": ["string", "null"]}
STATES = ["Initializing", "Ready", "Running", "Suspended", "Failed", "Terminated"]
HEALTH = {"enum": ["healthy", "degraded", "unhealthy"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "string", "description": "the gateway's error code (gateway/errors.py)"},
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
            # the error's code (gateway.errors); absent for a component the config turned off
            "code": {"type": "string"},
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
            "key_change",
            "pin_change_rejected",
            "screening",
        ],
        "properties": {
            "tool": {"type": "string"},
            "status": {"type": "string"},
            "drifted": {"type": "boolean"},
            "approved_hash": _NULLSTR,
            "current_hash": _NULLSTR,
            "diff": {"type": "string"},
            "key_change": {
                "type": ["object", "null"],
                "description": "approving moves the tool's SchemaPin pin from the pinned key to the one "
                "that signed the current definition (a rotation); null when it does not",
                "additionalProperties": False,
                "required": ["pinned", "current"],
                "properties": {"pinned": {"type": "string"}, "current": {"type": "string"}},
            },
            "pin_change_rejected": {
                "type": "boolean",
                "description": "the SchemaPin pin change approving would make (this definition, the key "
                "that signed it) was rejected (`symbi schemapin pins reject`): approving the tool is "
                "refused (409); `symbi schemapin pins approve` naming it accepts it",
            },
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
        "description": "a discovered server; never its env or headers",
        "required": ["name", "source", "original_name", "status", "transport", "launches", "digest"],
        "properties": {
            "name": {"type": "string"},
            "source": {"type": "string"},
            "original_name": {"type": "string"},
            "status": {"type": "string", "enum": ["quarantined", "approved", "removed"]},
            "transport": {"type": "string", "enum": ["stdio", "http"]},
            "launches": {
                "type": "string",
                "description": "what approving it runs: the command line (shell-quoted, recognisable secrets "
                "in its arguments shown as ***) or the URL without its query",
            },
            "first_seen": {"type": "number"},
            "approved_by": _NULLSTR,
            "unresolved": {
                **_NULLSTR,
                "description": "why approving it is refused: the client's variable references "
                "(${input:...}, ${env:...}, ${NAME}) the gateway does not fill in, by where they are "
                "and the variable they name (never a default written in them)",
            },
            "digest": {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "description": "names the launch config shown (env and headers included): an approval "
                "sends it back and is refused (409 definition_changed) if the config changed since",
            },
        },
    },
    "DiscoveredList": {
        "type": "object",
        "required": ["servers"],
        "properties": {"servers": {"type": "array", "items": {"$ref": REF + "Discovered"}}},
    },
    "Approved": {
        "type": "object",
        "required": ["tool", "approved_hash", "catalogue_refreshed"],
        "properties": {
            "tool": {"type": "string"},
            "approved_hash": {"type": "string"},
            # false: the catalogue is still being rebuilt (the approval is in force in the state)
            "catalogue_refreshed": {"type": "boolean"},
        },
    },
    "ToolList": {
        "type": "object",
        "required": ["tools"],
        "properties": {"tools": {"type": "array", "items": {"$ref": REF + "Tool"}}},
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
        "properties": {"upstreams": {"type": "array", "items": {"$ref": REF + "Upstream"}}},
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
                        # the change a person rejected: refused, not pending, while presented
                        "rejected_fingerprint": {"type": ["string", "null"]},
                        "rejected_definition_hash": {"type": ["string", "null"]},
                        "rejected_at": {"type": ["string", "null"]},
                        "rejected_seen": {"type": ["string", "null"]},
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
            "sessions": {"type": "array", "items": {"$ref": REF + "Session"}},
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
        "properties": {"calls": {"type": "array", "items": {"$ref": REF + "Call"}}},
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
            "qualified_principal": {"type": "string"},
            "client": {"type": "string"},
            "hosted": {"type": "boolean"},
            "priority": {"type": "integer", "minimum": 0, "maximum": 9},
            "state": {"enum": STATES},
            "reason": {"type": "string"},
            "suspend_pending": _NULLSTR,
            "in_flight": {"type": "integer", "minimum": 0},
            "calls": {"type": "integer", "minimum": 0},
            "limits": {"type": "object"},
            "usage": {"type": ["object", "null"]},
        },
    },
    "Principal": {
        "type": "object",
        "required": ["principal", "reason", "agent", "by", "at"],
        "properties": {
            "principal": {"type": "string"},
            "reason": {"type": "string"},
            "agent": {"type": "string", "description": "the agent whose suspension it came from, or empty"},
            "by": {"type": "string", "description": "the operator who suspended it, or empty"},
            "at": {"type": "number"},
        },
    },
    "PrincipalList": {
        "type": "object",
        "required": ["suspended"],
        "properties": {"suspended": {"type": "array", "items": {"$ref": REF + "Principal"}}},
    },
    "PrincipalAction": {
        "type": "object",
        "required": ["principal", "result", "resumed_here"],
        "properties": {
            "principal": {"type": "string"},
            "result": {"type": "string"},
            "resumed_here": {"type": "array", "items": {"type": "string"}},
            "shared": {"type": "string"},
        },
    },
    "AgentList": {
        "type": "object",
        "required": ["agents"],
        "properties": {"agents": {"type": "array", "items": {"$ref": REF + "Agent"}}},
    },
    "AgentActionPassed": {
        "type": "object",
        "required": ["agent", "result", "holder", "state"],
        "properties": {
            "agent": {"type": "string"},
            "result": {"type": "string"},
            "holder": {"type": "string"},
            "state": _NULLSTR,
        },
    },
    "AgentAction": {
        "type": "object",
        "required": ["agent", "result", "state"],
        "properties": {
            "agent": {"type": "string"},
            "result": {"type": "string"},
            "state": {"enum": [*STATES, None]},  # null: a hosted terminate that only withdrew a start
        },
    },
    "HealthStatus": {
        "type": "object",
        "required": ["overall_status", "component_health", "resource_utilization", "recent_errors"],
        "properties": {
            "overall_status": HEALTH,
            "component_health": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": HEALTH},
                },
            },
            "resource_utilization": {"type": "object", "required": ["agents", "scheduler"]},
            "recent_errors": {"type": "array", "items": {"type": "object"}},
            "hosted_agents": {
                "type": "object",
                "description": "every hosted agent ([agents.NAME]) and the process running it "
                "(holder: host:pid:data_dir); with [state] redis_url as the lease holders last wrote it "
                "to Redis (read_at), null while no process holds its lease",
                "required": ["read_at", "here", "agents"],
                "properties": {
                    "read_at": {"type": ["number", "null"]},
                    "here": {"type": "string"},
                    "agents": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "components"],
        "properties": {
            "status": HEALTH,
            "components": {"type": "object", "additionalProperties": HEALTH},
        },
    },
    "PolicyStatus": {
        "type": "object",
        "required": ["loaded"],
        "properties": {"loaded": {"type": "boolean"}},
    },
}
