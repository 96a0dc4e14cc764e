"""Random policy inputs (seeded) that reach every branch of policies.rego: the values come
from the names in policies/data.json and from the edge cases the rules are written against
(traversal, userinfo URLs, dots in tool names, wrong types, missing fields)."""

from __future__ import annotations

import random
from typing import Any

KINDS = [
    "tools/call",
    "tools/call",
    "tools/call",
    "tools/call",
    "resources/read",
    "prompts/get",
    "logging/setLevel",
    "bus/send",
    "bus/publish",
    "bus/subscribe",
    "context/read",
    "context/write",
    "knowledge/search",
    "server_request",
    "weird/kind",
]
PRINCIPALS = ["local", "admin", "alice", "ci-bot", "auditor", "nobody", "sub-1"]
JWT_NS = "jwt:https://login.example.com/#"
SOURCES = ["stdio", "key", "key", "jwt", "anonymous", "other"]
ROLES = ["developer", "admin", "readonly", "trusted", "ghost"]
TOOLS = [
    "time__get_current_time",
    "everything__echo",
    "everything__get-env",
    "everything__get-sum",
    "everything__longRunningOperation",
    "fs__read_text_file",
    "fs__read_media_file",
    "fs__move_file",
    "fs__write_file",
    "fs__read_a.b",
    "fs__list_directory",
    "sandbox__run_python",
    "sandbox__run_shell",
    "memory__recall",
    "knowledge__search",
    "bus__send",
    "evil__x",
    "[x]",
    "*",
]
UPSTREAMS = ["time", "everything", "fs", "sandbox", "memory", "knowledge", "bus", "evil"]
VERIFICATIONS = ["verified", "pinned", "unverified", "off", "failed", "changed"]
PATHS: list[Any] = [
    "/srv/symbi/a.txt",
    "/srv/symbi",
    "/srv/symbiotic/x",
    "/srv/symbi/../etc/passwd",
    "data/x",
    "data",
    "../x",
    "/tmp/symbi/b",
    "/srv/symbi\\..\\x",
    "/srv/symbi/./x",
    "/etc/passwd",
    "/srv/symbi/a\u0000b",
    5,
    None,
    ["/srv/symbi/a", "/etc/shadow"],
    ["/tmp/symbi/a", "data/b"],
    [],
]
URLS: list[Any] = [
    "https://example.com/x",
    "http://a.example.com:8443/y?z=1",
    "https://a.b.example.com/",  # `*.example.com` with "." as its delimiter: not allowed
    "http://example.com@evil.com/",
    "file:///etc/passwd",
    "HTTPS://EXAMPLE.COM/",
    "http://[::1]/",
    "http://localhost",
    "http://127.0.0.1:9/",
    "https://b.c.example.com/",
    "http://169.254.169.254/",
    "https://ex ample.com",
    7,
    ["https://example.com", "http://evil.com"],
]
# prompt names (namespaced as tools' are) for a prompts/get's target, and an upstream's requests
PROMPTS: list[Any] = [
    "everything__simple_prompt",
    "everything__complex_prompt",
    "time__p",
    "evil__x",
    "x",
    None,
    5,
]
METHODS: list[Any] = ["roots/list", "elicitation/create", "sampling/createMessage", "ping", None, 3]
SERVER_REQUESTS: list[Any] = [
    {},
    {"maxTokens": 100},
    {"maxTokens": 10**6},
    {"maxTokens": "10"},
    {"maxTokens": -1},
    {"mode": "url", "url": "https://example.com/x"},
    {"mode": "url", "url": "https://evil.example/x"},
    {"mode": "url", "url": 5},
    {"mode": "form"},
    None,
]
TOPICS: list[Any] = ["team.a", "team.a.b", "events.x", "events.x.y", "other", "team", 5]
# an argument document that is not an object (the gateway always sends one; a case file or
# `symbi policy test` input may not): each engine must still decide, and alike
NOT_OBJECTS: list[Any] = [
    "",
    "/etc/passwd",
    0,
    7,
    1.5,
    True,
    False,
    None,
    [],
    ["/etc/shadow"],
    [{"path": "/etc/passwd"}],
]


def _maybe(r: random.Random, p: float = 0.85) -> bool:
    return r.random() < p


def _tool(r: random.Random, name: str, upstream: str) -> dict[str, Any]:
    t: dict[str, Any] = {"name": name, "original_name": name.split("__")[-1], "upstream": upstream}
    if _maybe(r):
        t["verification"] = r.choice(VERIFICATIONS)
    if _maybe(r, 0.6):
        t["code_tool"] = r.choice([True, False, False, "yes"])
    if _maybe(r, 0.5):
        t["verification_mode"] = r.choice(["strict", "tofu", "warn", "off"])
    if _maybe(r, 0.3):
        findings = [
            {
                "rule": r.choice(["hidden-instructions", "homoglyph", "exfiltration"]),
                "severity": r.choice(["high", "low"]),
            }
            for _ in range(r.randint(0, 3))
        ]
        t["screening"] = {
            "highest": r.choice(["high", "low", None]),
            "accepted": r.choice([True, False]),
            "findings": findings,
        }
    return t


def _arguments(r: random.Random) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for key in r.sample(
        ["path", "paths", "source", "destination", "url", "uri", "endpoint", "timezone", "token"],
        r.randint(0, 3),
    ):
        if key in ("url", "uri", "endpoint"):
            args[key] = r.choice(URLS)
        elif key in ("timezone", "token"):
            args[key] = r.choice(["UTC", "x", 3])
        else:
            args[key] = r.choice(PATHS)
    return args


def random_input(r: random.Random, not_object: float = 0.0) -> dict[str, Any]:
    """One input document, shaped like gateway.policy.inputdoc.build_input's (fields may be
    missing or of the wrong type on purpose); with probability ``not_object`` its arguments
    are not an object (0: the stream of inputs the earlier sessions' seeds made)."""
    kind = r.choice(KINDS)
    pid = r.choice(PRINCIPALS)
    principal: dict[str, Any] = {
        "id": pid,
        "kind": "user",
        "roles": r.sample(ROLES, r.randint(0, 2)),
        "claims": {},
    }
    if _maybe(r):
        principal["source"] = r.choice(SOURCES)
    if principal.get("source") == "jwt":
        principal["issuer"] = r.choice(["https://login.example.com/", "https://other/", None])
    upstream = r.choice(UPSTREAMS)
    doc: dict[str, Any] = {
        "kind": kind,
        "principal": principal,
        "upstream": {"name": upstream, "domain": None, "transport": "stdio"},
    }
    if _maybe(r):
        doc["action"] = r.choice(["call", "call", "list"])
    agent = r.choice(
        [
            None,
            {"id": "agent-a", "name": "local/x", "state": "Ready", "priority": 0, "hosted": False},
            "agent-a",
            {"id": 5},
        ]
    )
    doc["agent"] = agent
    if kind == "tools/call":
        name = r.choice(TOOLS)
        doc["target"] = name
        doc["tool"] = _tool(r, name, upstream) if _maybe(r, 0.95) else None
    else:
        doc["tool"] = None
        doc["target"] = r.choice(["file:///srv/a", "mem://x", "greeting", "time", "everything", "fs"])
    doc["arguments"] = _arguments(r)
    if not_object and r.random() < not_object:
        doc["arguments"] = r.choice(NOT_OBJECTS)
    doc["context"] = {
        "time": "2026-11-30T10:00:00.000Z",
        "unix": 1796032800,
        "session_id": r.choice([None, "s-1"]),
        "calls_last_minute": r.randint(0, 50),
        "calls_last_hour": r.choice([0, 1, 99, 100, 101, 4999, 5000, 6000]),
        "tool_calls_last_minute": r.randint(0, 10),
    }
    if kind.startswith("bus/"):
        # the recipient's qualified principal (a bare id now and then: never the caller's); its
        # namespace drawn apart, so the stream of the other draws is the earlier sessions'
        peer = r.choice(PRINCIPALS)
        ns = random.Random(repr((pid, peer, len(doc)))).choice(["key:", "stdio:", JWT_NS, ""])
        doc["recipient"] = {"agent": "agent-b", "principal": ns + peer}
        if _maybe(r):
            doc["topic"] = r.choice(TOPICS)
    # a prompt's name and an upstream's request, from a generator of their own seeded by this
    # draw (every input its own; the others' draws are not shifted by how many these take)
    apart = random.Random(r.getrandbits(64))
    if kind == "prompts/get" and apart.random() < 0.7:
        doc["target"] = apart.choice(PROMPTS)
    if kind == "server_request":
        doc["server"] = apart.choice([*UPSTREAMS, None, 3])
        doc["method"] = apart.choice(METHODS)
        doc["request"] = apart.choice(SERVER_REQUESTS)
    if kind.startswith(("context/", "knowledge/")):
        doc["memory"] = {
            "owner": r.choice(["agent-a", "agent-b", ""]),
            "memory_type": r.choice(["short_term", "working", "long_term", "shared", "weird"]),
            "namespace": r.choice(["team", "announcements", "nowhere", None]),
            "base": r.choice(["kb1", "docs", None]),
        }
    # a 2026 client's answers (a share of every kind), drawn apart: the stream of the other
    # draws is the earlier sessions'
    side = random.Random(repr((pid, kind, doc["target"], doc["context"]["calls_last_minute"])))
    if side.random() < 0.25:
        doc["input_responses"] = {
            f"q{i}": side.choice(
                [
                    {"action": "accept", "content": _arguments(side)},
                    {"action": "accept", "content": _arguments(side)},
                    {"action": "decline"},
                    {"action": "accept", "content": ["/etc/passwd"]},
                    "x",
                ]
            )
            for i in range(side.randint(1, 2))
        }
    return doc


def random_inputs(seed: int, n: int, not_object: float = 0.0) -> list[dict[str, Any]]:
    r = random.Random(seed)
    return [random_input(r, not_object) for _ in range(n)]
