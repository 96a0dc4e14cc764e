"""Writes cases.json: inputs as overrides of one base input, expected decisions written by hand.

Run after editing: python policies/make_cases.py && symbi policy test
"""

import json
from pathlib import Path

base = {
    "action": "call",
    "kind": "tools/call",
    "target": "time__get_current_time",
    "principal": {"id": "local", "kind": "user", "roles": ["developer"], "claims": {}},
    "agent": None,
    "upstream": {"name": "time", "domain": None, "transport": "stdio"},
    "tool": {
        "name": "time__get_current_time",
        "original_name": "get_current_time",
        "upstream": "time",
        "annotations": {},
        "verification": "pinned",
        "key_fingerprint": None,
        "definition_hash": None,
        "code_tool": False,
    },
    "arguments": {"timezone": "UTC"},
    "context": {
        "time": "2026-11-26T10:00:00.000Z",
        "unix": 1795687200,
        "session_id": "s-1",
        "calls_last_minute": 0,
        "calls_last_hour": 0,
        "tool_calls_last_minute": 0,
    },
}
RED = ["api_key", "password", "token"]
REDE = ["/headers/authorization", "api_key", "password", "token"]
MB = 1048576


def ok(**c):
    return {"allow": True, "reasons": [], "conditions": c}


def no(*r):
    return {"allow": False, "reasons": sorted(r), "conditions": {}}


def gen(rate=120, audit="full", mx=MB, red=RED, **extra):
    c = {"audit": audit, "max_result_bytes": mx, "rate_limit": rate}
    if red:
        c["redact_arguments"] = red
    c.update(extra)
    return ok(**c)


def tool(name, up, **kw):
    t = {"name": name, "original_name": name.split("__", 1)[1], "upstream": up}
    t.update(kw)
    return {"target": name, "tool": t, "upstream": {"name": up}}


def fs(name, **args):
    d = tool(name, "fs", verification="unverified")
    d["arguments"] = args
    return d


def url(u):
    return fs("fs__fetch_url", url=u)


def who(pid, roles=()):
    return {"principal": {"id": pid, "roles": list(roles)}}


REDACT_TEXT = json.loads((Path(__file__).resolve().parent / "data.json").read_text())["symbi_data"]["memory"][
    "redact_text"
]


def mem(kind, memory_type, owner="agent-a", namespace=None):
    """A memory decision: the memory built-ins ask with these kinds for agent-a's session."""
    return {
        "kind": kind,
        "target": "memory__recall",
        "tool": None,
        "agent": {"id": "agent-a", "name": "local/claude", "state": "running", "priority": 0, "hosted": False},
        "upstream": {"name": "memory", "transport": "builtin"},
        "arguments": {},
        "memory": {"owner": owner, "memory_type": memory_type, "namespace": namespace, "base": None},
    }


def m(*ds):
    out = {}
    for d in ds:
        for k, v in d.items():
            out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


NA = "principal {} may not use tool {} (not in its allow-list)"
cases = [
    ("time tool for the stdio principal", {}, gen(audit="minimal")),
    (
        "everything__echo: unverified upstream allowed by data",
        tool("everything__echo", "everything", verification="unverified"),
        gen(red=REDE),
    ),
    (
        "printEnv: tool rate limit and result redaction",
        tool("everything__printEnv", "everything", verification="unverified"),
        gen(rate=5, red=REDE, redact_result=["AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"]),
    ),
    (
        "tool outside the developer allow-list",
        tool("everything__longRunningOperation", "everything", verification="unverified"),
        no(NA.format("local", "everything__longRunningOperation")),
    ),
    ("unknown principal", who("nobody"), no(NA.format("nobody", "time__get_current_time"))),
    (
        "admin may use any tool",
        m(who("admin"), tool("everything__longRunningOperation", "everything", verification="verified")),
        gen(rate=60, red=REDE),
    ),
    (
        "deny-list beats a role's allow-list",
        m(who("auditor"), fs("fs__read_media_file", path="/srv/symbi/a.png")),
        no("tool fs__read_media_file is on the deny-list of principal auditor"),
    ),
    (
        "not allowed and deny-listed: two reasons",
        fs("fs__delete_file", path="/srv/symbi/a"),
        no(
            NA.format("local", "fs__delete_file"),
            "tool fs__delete_file is on the deny-list of principal local",
        ),
    ),
    ("path under an allowed root", fs("fs__read_text_file", path="/srv/symbi/notes.txt"), gen()),
    (
        "path traversal out of a root",
        fs("fs__read_text_file", path="/srv/symbi/../../etc/passwd"),
        no("argument path is not a path under an allowed root"),
    ),
    (
        "sibling directory sharing the root's prefix",
        fs("fs__read_text_file", path="/srv/symbiotic/x"),
        no("argument path is not a path under an allowed root"),
    ),
    ("the root itself", fs("fs__list_directory", path="/srv/symbi"), gen()),
    ("relative path under a relative root", fs("fs__read_text_file", path="data/hello.txt"), gen()),
    (
        "relative traversal",
        fs("fs__read_text_file", path="../etc/passwd"),
        no("argument path is not a path under an allowed root"),
    ),
    (
        "dot segment",
        fs("fs__read_text_file", path="/srv/symbi/./x"),
        no("argument path is not a path under an allowed root"),
    ),
    (
        "path outside every root",
        fs("fs__read_text_file", path="/etc/passwd"),
        no("argument path is not a path under an allowed root"),
    ),
    (
        "backslash traversal",
        fs("fs__read_text_file", path="/srv/symbi\\..\\..\\etc"),
        no("argument path is not a path under an allowed root"),
    ),
    (
        "one bad path in an array",
        fs("fs__read_multiple_files", paths=["/srv/symbi/a", "/etc/shadow"]),
        no("argument paths is not a path under an allowed root"),
    ),
    (
        "every path in an array under roots",
        fs("fs__read_multiple_files", paths=["/srv/symbi/a", "/tmp/symbi/b"]),
        gen(),
    ),
    (
        "a path that is not a string",
        fs("fs__read_text_file", path=123),
        no("argument path is not a path under an allowed root"),
    ),
    ("write under a root", fs("fs__write_file", path="/tmp/symbi/out.txt", content="hi", token="t0p"), gen()),
    ("URL on an allowed host", url("https://example.com/x"), gen()),
    ("URL on an allowed subdomain with port and query", url("https://api.example.com:8443/x?y=1"), gen()),
    (
        "userinfo trick: real host is evil.com",
        url("http://example.com@evil.com/"),
        no("argument url: host evil.com is not in the allow-list"),
    ),
    ("non-http scheme", url("file:///etc/passwd"), no("argument url is not an http(s) URL")),
    (
        "cloud metadata address",
        url("http://169.254.169.254/latest/meta-data"),
        no("argument url: host 169.254.169.254 is not in the allow-list"),
    ),
    (
        "allowed name as a prefix of an evil host",
        url("https://example.com.evil.com/"),
        no("argument url: host example.com.evil.com is not in the allow-list"),
    ),
    ("scheme and host are case-insensitive", url("HTTPS://EXAMPLE.COM/"), gen()),
    (
        "glob * matches one DNS label only",
        url("http://a.b.example.com/"),
        no("argument url: host a.b.example.com is not in the allow-list"),
    ),
    (
        "backslash in authority",
        url("http://evil.com\\@example.com/"),
        no("argument url is not an http(s) URL"),
    ),
    (
        "fragment trick: real host is evil.com",
        url("http://evil.com#@example.com/"),
        no("argument url: host evil.com is not in the allow-list"),
    ),
    (
        "trailing-dot host is not the listed name",
        url("http://localhost./x"),
        no("argument url: host localhost. is not in the allow-list"),
    ),
    (
        "IPv6 loopback literal not listed",
        url("http://[::1]:8080/"),
        no("argument url: host [::1] is not in the allow-list"),
    ),
    ("every URL of an array on allowed hosts", url(["https://example.com/", "http://localhost/"]), gen()),
    (
        "one URL of an array on another host",
        url(["https://example.com/", "http://evil.com/"]),
        no("argument url: host evil.com is not in the allow-list"),
    ),
    ("URL that is not a string", url(5), no("argument url is not an http(s) URL")),
    (
        "NUL byte in a path",
        fs("fs__read_text_file", path="/srv/symbi/a\x00b"),
        no("argument path is not a path under an allowed root"),
    ),
    (
        "code tool for a developer needs gVisor",
        m(
            tool("sandbox__run_python", "sandbox", verification="unverified", code_tool=True),
            {"arguments": {"code": "print(1)"}},
        ),
        gen(rate=10, mx=65536, sandbox_tier="gvisor"),
    ),
    (
        "code tool for a trusted principal: docker",
        m(who("alice"), tool("sandbox__run_python", "sandbox", verification="unverified", code_tool=True)),
        gen(rate=10, mx=65536, sandbox_tier="docker"),
    ),
    (
        "trusted role from the authenticated principal",
        m(
            who("local", ["developer", "trusted"]),
            tool("sandbox__run_shell", "sandbox", verification="unverified", code_tool=True),
        ),
        gen(rate=10, mx=65536, sandbox_tier="docker"),
    ),
    (
        "revoked key",
        {"tool": {"verification": "revoked"}},
        no("tool time__get_current_time is revoked: only verified or pinned tools may be called"),
    ),
    (
        "drifted definition",
        {"tool": {"verification": "drifted"}},
        no("tool time__get_current_time is drifted: only verified or pinned tools may be called"),
    ),
    (
        "failed verification on an upstream that allows unverified",
        {"tool": {"verification": "failed"}},
        no("tool time__get_current_time is failed: only verified or pinned tools may be called"),
    ),
    (
        "unverified tool on an upstream without allow_unverified",
        m(who("admin"), tool("github__create_issue", "github", verification="unverified")),
        no("tool github__create_issue is unverified: only verified or pinned tools may be called"),
    ),
    (
        "verification off where unverified is allowed",
        tool("everything__echo", "everything", verification="off"),
        gen(red=REDE),
    ),
    (
        "verified tool of any upstream for admin",
        m(who("admin"), tool("github__create_issue", "github", verification="verified")),
        gen(rate=60),
    ),
    (
        "hourly cap reached",
        m(who("ci-bot"), {"context": {"calls_last_hour": 100}}),
        no("principal ci-bot reached its limit of 100 calls per hour"),
    ),
    (
        "just under the hourly cap",
        m(who("ci-bot"), {"context": {"calls_last_hour": 99}}),
        gen(rate=10, audit="minimal"),
    ),
    (
        "listing: allowed tool, no arguments",
        m(fs("fs__read_text_file"), {"action": "list", "arguments": {}}),
        gen(),
    ),
    (
        "listing: hidden tool",
        m(
            tool("everything__longRunningOperation", "everything", verification="unverified"),
            {"action": "list"},
        ),
        no(NA.format("local", "everything__longRunningOperation")),
    ),
    (
        "listing ignores the hourly cap",
        m(who("ci-bot"), {"action": "list", "context": {"calls_last_hour": 1000}}),
        gen(rate=10, audit="minimal"),
    ),
    (
        "listing ignores argument rules",
        m(fs("fs__read_text_file", path="/etc/passwd"), {"action": "list"}),
        gen(),
    ),
    (
        "resource read by a developer",
        {"kind": "resources/read", "target": "file:///srv/symbi/a", "tool": None, "arguments": {}},
        ok(),
    ),
    (
        "resource read by a principal without resources",
        m(who("ci-bot"), {"kind": "resources/read", "target": "file:///a", "tool": None}),
        no("principal ci-bot may not read resource file:///a"),
    ),
    (
        "prompt for admin",
        m(who("admin"), {"kind": "prompts/get", "target": "everything__simple_prompt", "tool": None}),
        ok(),
    ),
    (
        "unknown request kind",
        {"kind": "sampling/createMessage", "target": "x", "tool": None},
        no("no rule allows sampling/createMessage on x (default deny)"),
    ),
    (
        "screened high under strict",
        {"tool": {"verification_mode": "strict", "screening": {"highest": "high", "findings": [
            {"rule": "SP001", "severity": "high", "field": "description"},
            {"rule": "SP009", "severity": "low", "field": "description"}]}}},
        no("tool time__get_current_time is blocked by screening (SP001): see `symbi scan`"),
    ),
    (
        "screened high under tofu",
        {"tool": {"verification_mode": "tofu", "screening": {"highest": "high", "findings": [
            {"rule": "SP014", "severity": "high", "field": "name"}]}}},
        no("tool time__get_current_time is blocked by screening (SP014): see `symbi scan`"),
    ),
    (
        "screened high under strict, findings accepted by a person",
        {"tool": {"verification_mode": "strict", "screening": {"highest": "high", "accepted": True, "findings": [
            {"rule": "SP001", "severity": "high", "field": "description"}]}}},
        gen(audit="minimal"),
    ),
    (
        "screened high under warn is marked, not blocked",
        {"tool": {"verification_mode": "warn", "screening": {"highest": "high", "findings": [
            {"rule": "SP001", "severity": "high", "field": "description"}]}}},
        gen(audit="minimal"),
    ),
    (
        "screened medium under strict",
        {"tool": {"verification_mode": "strict", "screening": {"highest": "medium", "findings": [
            {"rule": "SP003", "severity": "medium", "field": "description"}]}}},
        gen(audit="minimal"),
    ),
    (
        "tools/call without a tool object",
        {"tool": None},
        no("no rule allows tools/call on time__get_current_time (default deny)"),
    ),
    # agent memory and knowledge: the memory__* / knowledge__* built-ins ask these kinds
    (
        "memory__store tool for a developer (audit minimal: no memory text in the log)",
        tool("memory__store", "memory", verification="unverified"),
        gen(audit="minimal"),
    ),
    (
        "an agent reads its own long-term memory",
        mem("context/read", "long_term"),
        ok(),
    ),
    (
        "an agent writes its own memory: secrets are redacted before embedding",
        mem("context/write", "long_term"),
        ok(redact_text=REDACT_TEXT),
    ),
    (
        "agent B may not read agent A's memory",
        m(mem("context/read", "long_term", owner="agent-a"), {"agent": {"id": "agent-b"}}),
        no("agent agent-b may not read the long_term memory of agent agent-a"),
    ),
    (
        "agent B may not write into agent A's working memory",
        m(mem("context/write", "working", owner="agent-a"), {"agent": {"id": "agent-b"}}),
        no("agent agent-b may not write the working memory of agent agent-a"),
    ),
    (
        "memory without an agent identity",
        m(mem("context/read", "long_term"), {"agent": None}),
        no("principal local has no agent identity: memory and knowledge are per agent"),
    ),
    (
        "a developer reads the shared namespace team",
        mem("context/read", "shared", namespace="team"),
        ok(),
    ),
    (
        "a developer may not write the announcements namespace",
        mem("context/write", "shared", namespace="announcements"),
        no("principal local may not write shared namespace announcements"),
    ),
    (
        "an admin writes the announcements namespace",
        m(who("admin"), mem("context/write", "shared", namespace="announcements")),
        ok(redact_text=REDACT_TEXT),
    ),
    (
        "a shared namespace nobody granted",
        mem("context/read", "shared", namespace="secret-project"),
        no("principal local may not read shared namespace secret-project"),
    ),
    (
        "a developer searches a knowledge base",
        m(mem("knowledge/search", None), {"memory": {"base": "handbook"}}),
        ok(),
    ),
    (
        "a principal without roles may not search knowledge",
        m(who("ci-bot"), mem("knowledge/search", None), {"memory": {"base": "handbook"}}),
        no("principal ci-bot may not search knowledge base handbook"),
    ),
]
# -- the agent bus (kinds bus/send, bus/publish, bus/subscribe) --------------------------------


def bus(kind, **extra):
    d = {"kind": kind, "target": kind, "tool": None, "arguments": {},
         "agent": {"id": "agt-1", "name": "local/worker", "state": "Ready", "priority": 0, "hosted": False},
         "upstream": {"name": "bus", "domain": None, "transport": "builtin"}}
    d.update(extra)
    return d


def to(principal):
    return {"recipient": {"agent": "ag-2", "principal": principal}}


cases += [
    ("bus send to an agent of the same principal", bus("bus/send", **to("local")), ok(rate_limit=600)),
    (
        "bus send to another principal's agent",
        bus("bus/send", **to("alice")),
        no("principal local may not message agents of principal alice"),
    ),
    (
        "bus send without an agent",
        bus("bus/send", agent=None, **to("local")),
        no("bus/send needs an agent: the caller local has no agent id"),
    ),
    (
        "bus send without a recipient",
        bus("bus/send"),
        no("no rule allows bus/send on bus/send (default deny)"),
    ),
    ("bus publish to a granted topic", bus("bus/publish", topic="team.build.done"), ok(rate_limit=600)),
    ("bus publish to a one-part grant", bus("bus/publish", topic="events.deploy"), ok(rate_limit=600)),
    (
        "bus publish below a one-part grant",
        bus("bus/publish", topic="events.deploy.eu"),
        no("principal local may not publish topic events.deploy.eu"),
    ),
    (
        "bus publish to an ungranted topic",
        bus("bus/publish", topic="security.alerts"),
        no("principal local may not publish topic security.alerts"),
    ),
    ("bus subscribe with a wildcard inside the grant", bus("bus/subscribe", topic="team.*"), ok(rate_limit=600)),
    ("bus agent given as a bare id", bus("bus/subscribe", topic="team.*", agent="agt-1"), ok(rate_limit=600)),
    (
        "bus agent object without an id",
        bus("bus/subscribe", topic="team.*", agent={"id": None}),
        no("bus/subscribe needs an agent: the caller local has no agent id"),
    ),
    (
        "bus subscribe to everything",
        bus("bus/subscribe", topic="*"),
        no("principal local may not subscribe topic *"),
    ),
    ("bus admin may subscribe to everything", m(who("admin"), bus("bus/subscribe", topic="*")), ok(rate_limit=600)),
    (
        "bus principal without topic grants",
        m(who("ci-bot"), bus("bus/publish", topic="team.x")),
        no("principal ci-bot may not publish topic team.x"),
    ),
]

names = [c[0] for c in cases]
assert len(names) == len(set(names))
doc = {
    "about": "Input -> expected decision for policies.rego + policies/data.json. Each case's input is the base input deep-merged with its overrides (objects merge, anything else replaces). Expected decisions are written by hand. Run: symbi policy test --cases policies/cases.json",
    "base": base,
    "cases": [{"name": n, "input": i, "expected": e} for n, i, e in cases],
}
out = Path(__file__).resolve().parent / "cases.json"
out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
print(len(cases))
