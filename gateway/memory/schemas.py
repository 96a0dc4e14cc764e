"""Definitions of the memory and knowledge tools, template and prompt (wire JSON, camelCase)."""

from __future__ import annotations

from typing import Any

_TYPES = ["short_term", "working", "long_term", "shared"]
_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_FILTERS = {
    "type": "object",
    "description": "metadata key -> value (or list of values) the results must have",
    "additionalProperties": {"type": ["string", "integer", "boolean", "array"], "items": {"type": "string"}},
}

MEMORY_TOOLS: list[dict[str, Any]] = [
    {
        "name": "store",
        "description": "Store a memory for the calling agent. short_term: this session (bounded, expires); "
        "working: this task (cleared by memory__end_task); long_term: kept for the retention "
        "period; shared: a named namespace other agents may read if the policy lets them. "
        "Secrets the policy names are redacted before anything is stored.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1, "maxLength": 32000},
                "type": {"type": "string", "enum": _TYPES, "default": "long_term"},
                "metadata": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "integer", "boolean"]},
                },
                "namespace": {**_NAME, "description": "shared memory: the namespace"},
                "task": {**_NAME, "description": "working memory: the task it belongs to"},
            },
            "required": ["text"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": False, "destructiveHint": False, "openWorldHint": False},
    },
    {
        "name": "recall",
        "description": "Recall the calling agent's memories closest in meaning to a query.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "types": {"type": "array", "items": {"type": "string", "enum": _TYPES}},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
                "min_score": {"type": "number", "minimum": -1, "maximum": 1},
                "filters": _FILTERS,
                "namespaces": {"type": "array", "items": _NAME, "description": "shared namespaces to search"},
                "task": _NAME,
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    },
    {
        "name": "end_task",
        "description": "End a task: its working memory is cleared.",
        "inputSchema": {
            "type": "object",
            "properties": {"task": _NAME},
            "required": ["task"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": False, "destructiveHint": True, "openWorldHint": False},
    },
]

KNOWLEDGE_TOOLS: list[dict[str, Any]] = [
    {
        "name": "search",
        "description": "Search one knowledge base: ranked passages with their sources.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "base": _NAME,
                "query": {"type": "string", "minLength": 1},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
                "filters": _FILTERS,
            },
            "required": ["base", "query"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    },
    {
        "name": "context",
        "description": "Assemble ranked, cited context for a question from the knowledge bases, within a "
        "token budget (stage timings in _meta).",
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "bases": {"type": "array", "items": _NAME},
                "budget_tokens": {"type": "integer", "minimum": 50, "maximum": 100000, "default": 1500},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 8},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    },
    {
        "name": "answer",
        "description": "Answer a question from the knowledge bases: the context is assembled here and your "
        "client's model writes the answer (MCP sampling). Without sampling, returns the context.",
        "inputSchema": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "bases": {"type": "array", "items": _NAME},
                "budget_tokens": {"type": "integer", "minimum": 50, "maximum": 100000, "default": 1500},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 50, "default": 8},
                "max_tokens": {"type": "integer", "minimum": 16, "maximum": 8192, "default": 512},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        "annotations": {"readOnlyHint": True, "openWorldHint": False},
    },
]

TEMPLATES: list[dict[str, Any]] = [
    {
        "uriTemplate": "memory://{agent}/{type}",
        "name": "memory",
        "description": "An agent's newest memories of one type (short_term, working, long_term)",
        "mimeType": "application/json",
    },
    {
        "uriTemplate": "memory://{agent}/shared/{namespace}",
        "name": "shared-memory",
        "description": "The newest memories an agent wrote into a shared namespace",
        "mimeType": "application/json",
    },
]

RAG_PROMPT: dict[str, Any] = {
    "name": "rag",
    "description": "A question with the knowledge bases' ranked, cited context filled in",
    "arguments": [
        {"name": "query", "description": "the question", "required": True},
        {"name": "bases", "description": "comma-separated knowledge bases (default: all)", "required": False},
        {
            "name": "budget_tokens",
            "description": "context budget in tokens (default 1500)",
            "required": False,
        },
    ],
}
