"""Refuse, at load time, a policy that calls a function outside the portable builtin set.

regorus reports an unknown function only when the rule body holding it is reached, so a typo
in a rarely taken branch would surface as a deny at 3 a.m. instead of at load. The policy must
also run unchanged on a real OPA server, so only builtins both engines implement are allowed
(``PORTABLE_BUILTINS``). User-defined functions (rule heads of the loaded modules) and
``data.…`` references are always allowed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

# Builtins present and equivalent in regorus (OPA v1.2.0 conformance) and in OPA v1.x.
# Deliberately absent: crypto.*, io.jwt.*, http.send, net.cidr_merge, regex.globs_match,
# strings.render_template, rego.metadata.*, opa.runtime (see reference/rego-engines.md).
PORTABLE_BUILTINS = frozenset(
    [
        "abs",
        "all",
        "any",
        "array.concat",
        "array.reverse",
        "array.slice",
        "base64.decode",
        "base64.encode",
        "base64.is_valid",
        "base64url.decode",
        "base64url.encode",
        "base64url.encode_no_pad",
        "bits.and",
        "bits.lsh",
        "bits.negate",
        "bits.or",
        "bits.rsh",
        "bits.xor",
        "ceil",
        "concat",
        "contains",
        "count",
        "endswith",
        "floor",
        "format_int",
        "glob.match",
        "glob.quote_meta",
        "graph.reachable",
        "hex.decode",
        "hex.encode",
        "indexof",
        "indexof_n",
        "intersection",
        "is_array",
        "is_boolean",
        "is_null",
        "is_number",
        "is_object",
        "is_set",
        "is_string",
        "json.filter",
        "json.is_valid",
        "json.marshal",
        "json.patch",
        "json.remove",
        "json.unmarshal",
        "lower",
        "max",
        "min",
        "net.cidr_contains",
        "numbers.range",
        "object.filter",
        "object.get",
        "object.keys",
        "object.remove",
        "object.subset",
        "object.union",
        "object.union_n",
        "print",
        "regex.find_all_string_submatch_n",
        "regex.find_n",
        "regex.is_valid",
        "regex.match",
        "regex.replace",
        "regex.split",
        "regex.template_match",
        "replace",
        "round",
        "semver.compare",
        "semver.is_valid",
        "sort",
        "split",
        "sprintf",
        "startswith",
        "strings.any_prefix_match",
        "strings.any_suffix_match",
        "strings.replace_n",
        "strings.reverse",
        "strings.count",
        "substring",
        "sum",
        "time.add_date",
        "time.clock",
        "time.date",
        "time.diff",
        "time.now_ns",
        "time.parse_duration_ns",
        "time.parse_ns",
        "time.parse_rfc3339_ns",
        "time.weekday",
        "to_number",
        "trim",
        "trim_left",
        "trim_prefix",
        "trim_right",
        "trim_space",
        "trim_suffix",
        "type_name",
        "union",
        "units.parse",
        "units.parse_bytes",
        "upper",
        "urlquery.decode",
        "urlquery.encode",
        "urlquery.encode_object",
        "walk",
        "yaml.marshal",
        "yaml.unmarshal",
        "yaml.is_valid",
        "uuid.rfc4122",
        "uuid.parse",
    ]
)


def _ref_name(node: Any) -> str | None:
    if not isinstance(node, dict):
        return None
    if "Var" in node:
        return str(node["Var"]["value"])
    if "RefDot" in node:
        base = _ref_name(node["RefDot"]["refr"])
        field = node["RefDot"]["field"]
        return f"{base}.{field[1]}" if base and isinstance(field, list) and len(field) == 2 else None
    if "RefBrack" in node:
        return _ref_name(node["RefBrack"]["refr"])
    return None


def _leftmost_span(node: Any) -> dict[str, Any] | None:
    """Where a dotted name starts (``crypto`` of ``crypto.sha256``)."""
    while isinstance(node, dict):
        if "Var" in node:
            span = node["Var"].get("span")
            return span if isinstance(span, dict) else None
        inner = node.get("RefDot") or node.get("RefBrack")
        if not isinstance(inner, dict):
            return None
        node = inner.get("refr")
    return None


def _walk_calls(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        call = node.get("Call")
        if isinstance(call, dict) and "fcn" in call:
            yield call
        for v in node.values():
            yield from _walk_calls(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_calls(v)


def _heads(rules: list[Any]) -> set[str]:
    names: set[str] = set()
    for rule in rules:
        for kind, body in rule.items():
            if kind == "Default":
                name = _ref_name(body.get("refr"))
            else:
                head = body.get("head", {}) if isinstance(body, dict) else {}
                name = next((_ref_name(h.get("refr")) for h in head.values() if isinstance(h, dict)), None)
            if name:
                names.add(name.split(".")[0])
    return names


def unknown_calls(ast_json: str) -> list[tuple[str, str]]:
    """``[(function name, file:line:col)]`` for calls outside the portable set, from regorus'
    ``Engine.get_ast_as_json()``."""
    modules = json.loads(ast_json)
    user: set[str] = set()
    for m in modules:
        user |= _heads(m.get("ast", {}).get("rules", []))
    found: list[tuple[str, str]] = []
    for m in modules:
        fname = m.get("source", {}).get("file", "?")
        for call in _walk_calls(m.get("ast", {})):
            name = _ref_name(call["fcn"])
            if (
                name is None
                or name.startswith("data.")
                or name in PORTABLE_BUILTINS
                or name.split(".")[0] in user
            ):
                continue
            span = _leftmost_span(call["fcn"]) or call.get("span", {})
            found.append((name, f"{fname}:{span.get('line', 0)}:{span.get('col', 0)}"))
    return found
