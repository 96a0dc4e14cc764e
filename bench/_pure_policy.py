"""The rules of policies.rego in plain Python: bench/policy.py's and bench/speed.py's
baseline (checked to agree with the engine before it is timed), never used by the gateway."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

# a principal's patterns of one field ("tools", "bus_peers", ...) from its entry and its roles
Patterns = Callable[[str], set[str]]

URL_RE = re.compile(
    r"^(?i:https?)://(?:[^/?#\\@\s]*@)?(\[[0-9a-fA-F:.]+\]|[^/?#:@\\\s\[\]]+)(?::[0-9]{1,5})?(?:[/?#][^\\\s]*)?$"
)


class PurePolicy:
    """The rules of policies.rego written in Python: the baseline, not used by the gateway.

    Same rules, same reasons, same conditions (checked against the engine on every case
    before timing); globs as OPA's glob.match (``*`` and ``?`` stop at a delimiter, ``.``
    when none is given; ``**`` crosses it)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.d = data.get("symbi_data", {})
        self._globs: dict[tuple[str, str], re.Pattern[str]] = {}

    def _glob(self, pattern: str, name: object, delims: str = ".") -> bool:
        if not isinstance(name, str):
            return False
        rx = self._globs.get((pattern, delims))
        if rx is None:
            not_delim = "[^" + re.escape(delims) + "]"
            out, i = [], 0
            while i < len(pattern):
                if pattern.startswith("**", i):
                    out.append(".*")
                    i += 2
                    continue
                c = pattern[i]
                out.append(not_delim + "*" if c == "*" else not_delim if c == "?" else re.escape(c))
                i += 1
            rx = self._globs[(pattern, delims)] = re.compile("".join(out) + r"\Z", re.DOTALL)
        return rx.match(name) is not None

    def _any(self, pats: Iterable[str], name: object, delims: str = ".") -> bool:
        return any(self._glob(p, name, delims) for p in pats)

    def _entry(self, principal: dict[str, Any]) -> dict[str, Any]:
        ps, pid = self.d.get("principals", {}), principal["id"]
        source = principal.get("source", "")
        if source == "jwt":
            return dict(ps.get("jwt", {}).get(principal.get("issuer", ""), {}).get(pid, {}))
        ns = {"stdio": "stdio", "key": "keys", "anonymous": "anonymous"}.get(str(source))
        return dict(ps.get(ns, {}).get(pid, {})) if ns else {}

    def _patterns(self, pe: dict[str, Any], roles: set[str], field: str) -> set[str]:
        out = set(pe.get(field, []))
        for r in roles:
            out |= set(self.d.get("roles", {}).get(r, {}).get(field, []))
        return out

    def _path_ok(self, p: Any) -> bool:
        if not isinstance(p, str) or "\\" in p or "\0" in p or any(s in (".", "..") for s in p.split("/")):
            return False
        return any(p == r or p.startswith(r.rstrip("/") + "/") for r in self.d.get("fs_roots", []))

    @staticmethod
    def _host(u: Any) -> str | None:
        m = URL_RE.match(u) if isinstance(u, str) else None
        return m.group(1).lower() if m else None

    @staticmethod
    def _values(args: Any, keys: list[str]) -> set[tuple[str, Any]]:
        out: set[tuple[str, Any]] = set()
        for k in keys:
            if isinstance(args, dict) and k in args:
                v = args[k]
                for x in v if isinstance(v, list) else [v]:
                    out.add((k, json.dumps(x)))  # hashable; decoded below
        return out

    def decide(self, inp: dict[str, Any]) -> dict[str, Any]:
        d, deny = self.d, set[str]()
        action, kind = inp.get("action", "call"), inp.get("kind", "")
        principal = inp["principal"]
        pid = principal["id"]
        pe = self._entry(principal)
        roles = set(principal.get("roles", [])) | set(pe.get("roles", []))
        tool = inp.get("tool")
        tool_d: dict[str, Any] = tool if isinstance(tool, dict) else {}
        is_tool, is_call = kind == "tools/call", action == "call"
        name = tool_d.get("name")
        target = inp.get("target")

        def pats(field: str) -> set[str]:
            return self._patterns(pe, roles, field)

        permitted = False
        if is_tool and is_call:
            self._arguments(inp.get("arguments", {}), deny)
        if kind == "prompts/get" and is_call and "arguments" in inp:  # as a tool's arguments
            if not isinstance(inp["arguments"], dict):
                deny.add(f"arguments of prompt {json_v(target)} are not an object")
            self._arguments(inp["arguments"], deny)
        answers = inp.get("input_responses")  # a 2026 client's: checked as arguments are
        if isinstance(answers, dict) and kind in (
            "tools/call",
            "resources/read",
            "prompts/get",
            "logging/setLevel",
        ):
            for q, a in answers.items():
                content = a.get("content") if isinstance(a, dict) else None
                if isinstance(content, dict):
                    self._arguments(content, deny, f"answer {q}: ")
        if is_tool and name is not None:
            permitted = self._tool_rules(inp, tool_d, name, pid, pats, deny)
        elif kind in ("resources/read", "prompts/get", "logging/setLevel"):
            field = {"resources/read": "resources", "prompts/get": "prompts"}.get(kind, "log_levels")
            permitted = self._any(pats(field), target)
            if not permitted:
                what = {
                    "resources": f"read resource {target}",
                    "prompts": f"get prompt {target}",
                    "log_levels": f"set the log level of upstream {target}",
                }[field]
                deny.add(f"principal {pid} may not {what}")
        cond: dict[str, Any] = {}
        self._bus(inp, kind, pid, pats, deny, cond)
        memory_ok = self._memory(inp, kind, pid, roles, deny)
        permitted = permitted or memory_ok or ("bus_ok" in cond and cond.pop("bus_ok"))
        if is_call:
            cap = pe.get("max_calls_per_hour", d.get("default_max_calls_per_hour", 0))
            if cap > 0 and inp["context"]["calls_last_hour"] >= cap:
                deny.add(f"principal {pid} reached its limit of {cap} calls per hour")
        allow = not deny and permitted
        if deny:
            reasons = sorted(deny)
        elif allow:
            reasons = []
        else:
            shown = name if is_tool and name is not None else inp.get("target", "")
            reasons = [f"no rule allows {json_v(kind)} on {json_v(shown)} (default deny)"]
        if not allow:
            return {"allow": allow, "reasons": reasons, "conditions": {}}
        if is_tool:
            self._tool_conditions(name, pe, roles, tool_d, cond)
        if kind == "prompts/get" and isinstance(target, str):  # redaction by the prompt's name glob
            keys = sorted(
                {k for p, ks in d.get("redact_arguments", {}).items() if self._glob(p, target) for k in ks}
            )
            if keys:
                cond["redact_arguments"] = keys
        if kind in ("context/write", "knowledge/ingest") and d.get("memory", {}).get("redact_text", []):
            cond["redact_text"] = d["memory"]["redact_text"]
        return {"allow": allow, "reasons": reasons, "conditions": cond}

    def _tool_rules(
        self,
        inp: dict[str, Any],
        tool_d: dict[str, Any],
        name: object,
        pid: str,
        pats: Patterns,
        deny: set[str],
    ) -> bool:
        """A tool's rules: its allow- and deny-lists, its verification and its screening;
        whether the allow-list permits it."""
        permitted = self._any(pats("tools"), name)
        if not permitted:
            deny.add(f"principal {pid} may not use tool {name} (not in its allow-list)")
        if self._any(pats("deny_tools"), name):
            deny.add(f"tool {name} is on the deny-list of principal {pid}")
        ver = tool_d.get("verification", "unverified")
        up = self.d.get("upstreams", {}).get((inp.get("upstream") or {}).get("name"), {})
        if not (
            ver in ("verified", "pinned")
            or (ver in ("unverified", "off") and up.get("allow_unverified") is True)
        ):
            deny.add(f"tool {name} is {ver}: only verified or pinned tools may be called")
        scr = tool_d.get("screening", {})
        if (
            scr.get("highest") == "high"
            and scr.get("accepted", False) is not True
            and tool_d.get("verification_mode", "strict") in ("strict", "tofu")
        ):
            rules = sorted({f["rule"] for f in scr.get("findings", []) if f.get("severity") == "high"})
            deny.add(f"tool {name} is blocked by screening ({', '.join(rules)}): see `symbi scan`")
        return permitted

    def _arguments(self, args: Any, deny: set[str], where: str = "") -> None:
        d = self.d
        for k, raw in self._values(args, d.get("path_arguments", [])):
            if not self._path_ok(json.loads(raw)):
                deny.add(f"{where}argument {k} is not a path under an allowed root")
        for k, raw in self._values(args, d.get("url_arguments", [])):
            host = self._host(json.loads(raw))
            if host is None:
                deny.add(f"{where}argument {k} is not an http(s) URL")
            elif not any(self._glob(p.lower(), host) for p in d.get("url_hosts", [])):
                deny.add(f"{where}argument {k}: host {host} is not in the allow-list")

    def _tool_conditions(
        self, name: object, pe: dict[str, Any], roles: set[str], tool: dict[str, Any], cond: dict[str, Any]
    ) -> None:
        d = self.d
        if tool.get("code_tool") is True:
            cond["sandbox_tier"] = "docker" if "trusted" in roles else "gvisor"
        rates = {n for p, n in d.get("tool_rate_limits", {}).items() if self._glob(p, name)}
        cond["rate_limit"] = min(rates | {pe.get("rate_limit", d.get("default_rate_limit", 60))})
        caps = {n for p, n in d.get("max_result_bytes", {}).items() if self._glob(p, name)}
        if caps:
            cond["max_result_bytes"] = min(caps)
        for f in ("redact_arguments", "redact_result"):
            keys = sorted({k for p, ks in d.get(f, {}).items() if self._glob(p, name) for k in ks})
            if keys:
                cond[f] = keys
        cond["audit"] = "minimal" if self._any(d.get("audit_minimal", []), name) else "full"

    def _bus(
        self, inp: dict[str, Any], kind: str, pid: str, pats: Patterns, deny: set[str], cond: dict[str, Any]
    ) -> None:
        if kind not in ("bus/send", "bus/publish", "bus/subscribe"):
            return
        agent = inp.get("agent")
        if not (isinstance(agent, str) or (isinstance(agent, dict) and isinstance(agent.get("id"), str))):
            deny.add(f"{kind} needs an agent: the caller {pid} has no agent id")
        ok = False
        if kind == "bus/send":
            rcpt = inp.get("recipient")
            peer = rcpt.get("principal", _ABSENT) if isinstance(rcpt, dict) else _ABSENT
            mine = _qualified(inp["principal"])  # the same principal: source, issuer and id
            ok = (mine is not None and peer == mine) or self._any(pats("bus_peers"), peer)
            if not ok and peer is not _ABSENT:  # an undefined sprintf argument: no message
                who = mine if mine is not None else pid
                deny.add(f"principal {who} may not message agents of principal {json_v(peer)}")
        else:
            field = "publish_topics" if kind == "bus/publish" else "subscribe_topics"
            topic = inp.get("topic", _ABSENT)
            ok = isinstance(topic, str) and self._any(pats(field), topic, ".")
            if not ok and topic is not _ABSENT:
                deny.add(f"principal {pid} may not {kind.split('/')[1]} topic {json_v(topic)}")
        pe_rate = self._entry(inp["principal"]).get(
            "bus_rate_limit", self.d.get("default_bus_rate_limit", 600)
        )
        cond["rate_limit"] = pe_rate
        if ok:
            cond["bus_ok"] = True

    def _memory(self, inp: dict[str, Any], kind: str, pid: str, roles: set[str], deny: set[str]) -> bool:
        if kind == "knowledge/ingest":  # symbi knowledge add: conditions only
            return True
        if kind not in ("context/read", "context/write", "knowledge/search"):
            return False
        mcfg, mem = self.d.get("memory", {}), inp.get("memory", {})
        agent = inp.get("agent")
        agent_id = agent.get("id") if isinstance(agent, dict) else agent if isinstance(agent, str) else None
        if not (isinstance(agent_id, str) and agent_id != ""):
            deny.add(f"principal {pid} has no agent identity: memory and knowledge are per agent")
            return False
        if kind == "knowledge/search":
            base = mem.get("base", "")
            ok = any(self._glob(p, base) and roles & set(rs) for p, rs in mcfg.get("knowledge", {}).items())
            if not ok:
                deny.add(f"principal {pid} may not search knowledge base {json_v(base)}")
            return ok
        mode = "read" if kind == "context/read" else "write"
        mtype, owner = mem.get("memory_type", ""), mem.get("owner", "")
        if mtype == "shared":
            ns = mem.get("namespace", "")
            entry = mcfg.get("namespaces", {}).get(ns, {})
            ok = bool(roles & set(entry.get(mode, [])))
            if not ok:
                deny.add(f"principal {pid} may not {mode} shared namespace {json_v(ns)}")
            return ok
        if owner != agent_id:
            deny.add(f"agent {agent_id} may not {mode} the {mtype} memory of agent {owner}")
        return mtype in ("short_term", "working", "long_term") and owner == agent_id


_ABSENT = object()


def json_v(v: Any) -> str:
    """sprintf's %v: strings as they are, anything else as JSON."""
    return v if isinstance(v, str) else json.dumps(v, separators=(", ", ": "))


def _qualified(principal: dict[str, Any]) -> str | None:
    """The principal's qualified id, as policies.rego's principal_qualified makes it."""
    src, pid, iss = principal.get("source", ""), principal.get("id"), principal.get("issuer")
    if not isinstance(pid, str):
        return None
    if src == "jwt":
        return f"jwt:{iss}#{pid}" if isinstance(iss, str) else None
    return f"{src}:{pid}" if isinstance(src, str) else None
