"""Which parts of the input a policy can read, and a cache key made of exactly those parts.

A Rego decision is a function of the policy, its data and the input, as long as the policy
calls no builtin whose answer changes between evaluations (``time.now_ns``,
``uuid.rfc4122``). The policy reaches the input only through references rooted at ``input``,
so two inputs that agree on everything those references can reach get the same decision:
that is what makes ``EmbeddedEngine``'s decision cache sound.

``input_reads`` walks the regorus AST and collects, for every reference to ``input``, its
constant prefix (``input.tool.name`` -> ``tool.name``; ``input.arguments[k]`` with a variable
``k`` -> ``arguments``, the whole object); ``object.get(input.x, "k", d)`` reads ``x.k``
only. Anything else that touches ``input`` -- a bare ``input``, an import of it, a ``with``
on it -- reads all of it. ``projection_key`` copies every node along those paths with its
JSON type (a missing key, a wrong type and a value all differ), so the counters and times a
policy reads are part of the key and those it never reads are not. Only plain JSON values
are keyed (string keys; str, int, float, bool, None, list, tuple, dict): anything else is
evaluated, never cached.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import orjson

from gateway.policy.lint import _ref_name

# Builtins whose answer is not a function of their arguments: a policy calling one is never
# cached. (http.send, rand.*, opa.runtime are refused at load by lint.)
VOLATILE_BUILTINS: Final = frozenset({"time.now_ns", "uuid.rfc4122"})
MAX_KEY_CHARS: Final = 4096  # larger projections (big arguments) are evaluated, not cached


class _All:
    """Trie marker: the whole subtree is read."""

    def __repr__(self) -> str:
        return "ALL"


ALL: Final = _All()
Trie = dict[Any, "Trie"]  # {component: subtrie}; {ALL: {}} = the whole subtree


def _add(root: Trie, path: tuple[Any, ...]) -> None:
    node = root
    for part in path:
        if ALL in node:
            return  # an ancestor is read whole already
        node = node.setdefault(part, {})
    node.clear()
    node[ALL] = {}


def _const(node: Any) -> tuple[bool, Any]:
    """(usable as a path component, value): a string or a non-negative integer literal."""
    if isinstance(node, dict):
        for kind in ("String", "RawString"):
            if kind in node and isinstance(node[kind].get("value"), str):
                return True, node[kind]["value"]
        if "Number" in node:
            v = node["Number"].get("value")
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                return True, v
    return False, None


def _input_path(node: Any) -> tuple[tuple[Any, ...], bool] | None:
    """(constant prefix, whether the whole reference is constant) of a reference rooted at
    ``input``; None when it is not rooted there."""
    parts: list[Any] = []
    while isinstance(node, dict):
        if "Var" in node:
            if node["Var"].get("value") != "input":
                return None
            break
        if "RefDot" in node:
            field = node["RefDot"].get("field")
            ok = isinstance(field, list) and len(field) == 2 and isinstance(field[1], str)
            parts.append(field[1] if ok else _CUT)
            node = node["RefDot"]["refr"]
        elif "RefBrack" in node:
            ok, value = _const(node["RefBrack"].get("index"))
            parts.append(value if ok else _CUT)
            node = node["RefBrack"]["refr"]
        else:
            return None
    else:
        return None
    parts.reverse()
    if _CUT in parts:  # cut at the first non-constant component: that subtree is read whole
        return tuple(parts[: parts.index(_CUT)]), False
    return tuple(parts), True


_CUT: Final = object()


def _object_get_key(params: list[Any]) -> tuple[Any, ...] | None:
    """The constant key (or key path) of ``object.get(x, key, default)``, else None."""
    if len(params) != 3:
        return None
    ok, value = _const(params[1])
    if ok:
        return (value,)
    key = params[1]
    if isinstance(key, dict) and "Array" in key:
        out = []
        for item in key["Array"].get("items", []):
            ok, value = _const(item)
            if not ok:
                return None
            out.append(value)
        return tuple(out)
    return None


class _Walker:
    def __init__(self) -> None:
        self.root: Trie = {}
        self.volatile: set[str] = set()

    def walk(self, node: Any) -> None:
        if isinstance(node, list):
            for v in node:
                self.walk(v)
        elif isinstance(node, dict):
            self._node(node)

    def _node(self, node: dict[str, Any]) -> None:
        if "Var" in node:
            if node["Var"].get("value") == "input":
                _add(self.root, ())  # a bare input: all of it
            return
        if "RefDot" in node or "RefBrack" in node:
            found = _input_path(node)
            if found is not None:
                _add(self.root, found[0])
                self._indexes(node)
                return
        call = node.get("Call")
        if isinstance(call, dict) and "fcn" in call:
            name = _ref_name(call["fcn"])
            if name in VOLATILE_BUILTINS:
                self.volatile.add(name)
            params = call.get("params", [])
            if name == "object.get" and params:
                found = _input_path(params[0])
                sub = _object_get_key(params)
                if found is not None and found[1] and sub is not None:
                    _add(self.root, found[0] + sub)  # object.get reads only that key
                    self.walk(params[2])
                    return
        for field, value in node.items():
            if field == "with_mods" and value:
                _add(self.root, ())  # ``with ... as``: the policy may see another input
            self.walk(value)

    def _indexes(self, node: Any) -> None:
        """Walk the index expressions of a reference chain (``input.a[input.k]``)."""
        while isinstance(node, dict) and ("RefDot" in node or "RefBrack" in node):
            if "RefBrack" in node:
                self.walk(node["RefBrack"].get("index"))
                node = node["RefBrack"]["refr"]
            else:
                node = node["RefDot"]["refr"]


# A compiled trie: ALL, or ((key, tag, subplan), ...) in a fixed order.
Plan = Any


def _plan(trie: Trie) -> Plan:
    if ALL in trie:
        return ALL
    return tuple((k, f"s{k}" if isinstance(k, str) else f"i{k}", _plan(sub)) for k, sub in trie.items())


# The per-principal and per-tool call counts of an input's context (gateway.policy.inputdoc).
COUNTERS: Final = ("calls_last_minute", "calls_last_hour", "tool_calls_last_minute")


def _counters_read(trie: Trie) -> tuple[str, ...]:
    """The context counters a policy with these reads can read."""
    if ALL in trie:
        return COUNTERS
    ctx = trie.get("context")
    if ctx is None:
        return ()
    return COUNTERS if ALL in ctx else tuple(c for c in COUNTERS if c in ctx)


class InputReads:
    """The input paths a policy can read; builds cache keys from them."""

    def __init__(self, trie: Trie) -> None:
        self.trie = trie
        self._plan = _plan(trie)
        self.counters = _counters_read(trie)
        self._target = ALL in trie or "target" in trie
        who = {} if ALL in trie else trie.get("principal", {})
        self._principal = ALL in trie or ALL in who or "id" in who
        agent = {} if ALL in trie else trie.get("agent", {})
        self.agent_id = ALL in trie or ALL in agent or "id" in agent  # the key holds the agent's id

    def fingerprint(self, doc: Mapping[str, Any]) -> int | None:
        """A hash of the target, the principal's id and the counters the policy reads, for a
        policy that reads a counter (else None): two inputs with the same cache key have the
        same fingerprint, so a call whose fingerprint is new has a key never asked before
        (engine.py). The principal's id: callers whose counts run alike (many API keys under
        one load) would otherwise share fingerprints, and each call's key be made in vain."""
        ctx = doc.get("context")
        # a dict (what build_input makes) first: the ABC check costs three calls
        if not self.counters or not (type(ctx) is dict or isinstance(ctx, Mapping)):
            return None
        target = doc.get("target") if self._target else None
        who = doc.get("principal") if self._principal else None
        pid = who.get("id") if type(who) is dict or isinstance(who, Mapping) else None
        try:
            return hash((target, pid, *map(ctx.get, self.counters)))
        except TypeError:  # an unhashable value: no fingerprint, the key decides
            return None

    def paths(self) -> list[str]:
        """Readable, for reports and tests: ``["arguments", "tool.name", ...]``."""
        out: list[str] = []

        def walk(node: Trie, prefix: str) -> None:
            for k, child in node.items():
                if k is ALL:
                    out.append(prefix or "(all of input)")
                else:
                    walk(child, f"{prefix}.{k}" if prefix else str(k))

        walk(self.trie, "")
        return sorted(out)

    def key(self, doc: Mapping[str, Any]) -> str | None:
        """The cache key of ``doc``; None when it cannot or should not be cached."""
        try:
            tree = _prune(doc, self._plan)
            # OPT_SORT_KEYS orders the whole-subtree copies; the pruned levels are lists in plan
            # order. orjson (a tenth of json's time) would write NaN as null: _prune refused
            # non-finite floats already, and an integer beyond 64 bits raises (not keyed)
            key = orjson.dumps(tree, option=orjson.OPT_SORT_KEYS)
        except (_NotJSON, TypeError, ValueError, RecursionError):
            return None
        return key.decode() if len(key) <= MAX_KEY_CHARS else None


def input_reads(ast_json: str) -> tuple[InputReads | None, list[str]]:
    """(what the policy reads, volatile builtins it calls), from ``Engine.get_ast_as_json()``.

    The first item is None (never cache) when the policy calls a volatile builtin."""
    w = _Walker()
    for m in json.loads(ast_json):
        ast = m.get("ast", {})
        for imp in ast.get("imports", []):
            if _input_path(imp.get("refr")) is not None:
                _add(w.root, ())  # an alias of input: key on all of it
        w.walk(ast.get("rules", []))
    if w.volatile:
        return None, sorted(w.volatile)
    return InputReads(w.root), []


class _NotJSON(Exception):
    pass


_SCALARS = (str, int, float, bool, type(None))


_LEAVES = frozenset({str, int, bool, type(None)})  # exactly these types: nothing to check


def _check(value: Any) -> None:
    """Raise unless ``value`` is plain JSON with string keys (regorus keeps a number key a
    number, where JSON would make it a string: such an input is evaluated, not keyed) and
    finite numbers (NaN and infinities have no JSON form). Integers beyond 64 bits make
    orjson raise, later. The input documents' own types (dict, list, str, ...) take the first
    branches; anything else (a subclass, another mapping) the general ones below."""
    t = type(value)
    if t in _LEAVES:
        return
    if t is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _NotJSON
            if type(v) not in _LEAVES:
                _check(v)
        return
    if t is list:
        for v in value:
            if type(v) not in _LEAVES:
                _check(v)
        return
    _check_other(value)


def _check_other(value: Any) -> None:
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            raise _NotJSON
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if type(k) is not str:
                raise _NotJSON
            _check(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check(v)
    else:
        raise _NotJSON


def _prune(value: Any, plan: Plan) -> Any:
    """``value`` reduced to what ``plan`` reaches, each node tagged with its JSON type."""
    if plan is ALL:
        if type(value) not in _LEAVES:
            _check(value)
        return ["v", value]
    if type(value) is dict or isinstance(value, Mapping):
        if not _STR.issuperset(map(type, value)):
            raise _NotJSON
        # a number component never names an object member: those stay missing (None); a
        # string, number, bool or null read whole (most of what a policy reads: a name, an id,
        # a counter) is tagged here, without a call more
        return [
            "o",
            [
                [tag, (["v", v] if type(v := value[k]) in _LEAVES and sub is ALL else _prune(v, sub))]
                if k in value
                else [tag, None]
                for k, tag, sub in plan
            ],
        ]
    if isinstance(value, (list, tuple)):
        n = len(value)
        return [
            "a",
            [[tag, _prune(value[k], sub) if type(k) is int and 0 <= k < n else None] for k, tag, sub in plan],
        ]
    _check(value)
    return ["s", value]  # a scalar: any deeper reference is undefined


_STR: Final = frozenset((str,))
