"""Redaction: the rules of ``redact_arguments`` / ``redact_result`` and the secret patterns
(what is done with results: ``gateway.policy.results``).

Redaction rules are strings:
- ``"/headers/authorization"``: a JSON-pointer-like path (RFC 6901 escapes ``~0`` ``~1``;
  array indexes are numbers). Only that location is replaced.
- ``"password"``, ``"api_key"``: a key name, matched at any depth by its words. Key and rule
  are compared after Unicode NFKC normalisation with invisible (format/control) characters
  dropped, split into lower-case words at separators and camelCase humps: a key matches when
  its words end with the rule's words, or both spell the same letters. So ``api_key`` covers
  ``apiKey``, ``API-KEY``, ``x-api-key``, ``apikey`` and ``OPENAI_API_KEY``; ``token`` covers
  ``access_token`` (not ``max_tokens``); ``password`` covers ``Pass\u200bword``.
Whenever a rule list applies, string values are also scrubbed of recognisable secrets by
value (``SECRET_PATTERNS``: bearer tokens, JWTs, private key blocks, provider API keys), in
prose too. A redacted value becomes the string ``"[REDACTED]"``. Inputs are never modified:
a deep copy is returned.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Callable, Container, Sequence
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"

# Secrets recognisable by their value alone (replaced wherever they occur in a string). Each
# pattern starts with literal text (or one of a few letters) and checks the word boundary
# before it in a look-behind after it: the engine then skips ahead to the literal in C, where
# a leading ``\b`` or ``(?i)`` made it try a match at every character (11 patterns over 3 MB
# of arguments took ~0.6 s of the event loop; now ~35 ms). The matches are the same as the
# plain forms' in the comments (tests/policy/test_redact_patterns.py compares them).
SECRET_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        # JWT / JWS: \beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*
        r"eyJ(?<=\beyJ)[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*",
        # Authorization values: (?i)\b(?:bearer|token|basic)\s+[A-Za-z0-9._~+/-]{16,}=*
        r"[BbTt](?i:earer(?<=\b......)|oken(?<=\b.....)|asic(?<=\b.....))(?i:\s+[A-Za-z0-9._~+/-]{16,}=*)",
        # Stripe, \b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}, as three (no match holds another's start)
        *(rf"{k}k_(?<=\b{k}k_)(?:live|test)_[A-Za-z0-9]{{16,}}" for k in "srp"),
        r"sk-(?<=\bsk-)(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic: \bsk-...
        # GitHub: \b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{50,})
        r"g(?<=\bg)(?:h[pousr]_[A-Za-z0-9]{36,}|ithub_pat_[A-Za-z0-9_]{50,})",
        r"A(?<=\bA)(?:KIA|SIA)[0-9A-Z]{16}\b",  # AWS access key id: \b(?:AKIA|ASIA)[0-9A-Z]{16}\b
        r"AIza(?<=\bAIza)[0-9A-Za-z_-]{35}",  # Google API key: \bAIza...
        r"xox(?<=\bxox)[abposr]-[A-Za-z0-9-]{10,}",  # Slack: \bxox[abposr]-...
        r"glpat-(?<=\bglpat-)[A-Za-z0-9_-]{20,}",  # GitLab: \bglpat-...
        r"symbi_(?<=\bsymbi_)[A-Za-z0-9_-]{20,}",  # this gateway's own API keys: \bsymbi_...
    )
)

_INVISIBLE = frozenset({"Cf", "Cc", "Co", "Cs", "Cn", "Zl", "Zp"})
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _visible(name: str) -> str:
    """``name`` NFKC-normalised with invisible (format/control) characters dropped."""
    return "".join(
        c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) not in _INVISIBLE
    )


def _shape(c: str) -> str:
    """The ASCII stand-in of one character for ``_WORDS``: an upper-case (or title-case)
    letter "A", any other letter or a combining mark "a", a digit "0", anything else " "."""
    if c.isupper() or c.istitle():
        return "A"
    if c.isalpha() or unicodedata.category(c).startswith("M"):
        return "a"
    return "0" if c.isdigit() else " "


@lru_cache(maxsize=4096)
def _words(name: str) -> tuple[str, ...]:
    """The lower-case words of a key or rule name (NFKC, invisible characters dropped), split
    at separators and camelCase humps. A key that is not all ASCII is split by the shape of
    its characters (``_shape``), so one non-ASCII letter (``clé_apiToken``) does not turn off
    the camelCase split."""
    text = _visible(name)
    if text.isascii():
        words = _WORDS.findall(text)
    else:
        shape = "".join(map(_shape, text))
        words = [text[m.start() : m.end()] for m in _WORDS.finditer(shape)]
    return tuple(w.casefold() for w in words)


@lru_cache(maxsize=4096)
def _folded(key: str) -> str:
    """A key as pointer parts are compared with it: NFKC, invisible characters dropped, case
    folded (``Authorization``, ``AUTHORIZATION`` and ``authori\u200bzation`` are one key)."""
    return _visible(key).casefold()


def key_matches(key: str, rule_words: tuple[str, ...]) -> bool:
    """Whether ``key`` names what the rule (already split with ``_words``) names."""
    words = _words(key)
    if not words or not rule_words:
        return False
    if words[-len(rule_words) :] == rule_words:
        return True
    return "".join(words) == "".join(rule_words)


# Every secret pattern as one alternation: a search of it finds nothing exactly when no pattern
# matches anywhere in the text, when every ``subn`` would be a no-op. One search of a short text
# (an argument like ``m123``) is a few times cheaper than the 13 scans; over longer text the
# alternation costs more per character than the 13 (each pattern's literal lets the engine skip
# ahead alone, not in an alternation), so only texts up to ``_ANY_SECRET_CHARS`` take it.
def one_alternation(patterns: Sequence[re.Pattern[str]]) -> re.Pattern[str]:
    """``patterns`` as one alternation, refused (``ValueError``, at import) where it would not be
    exact: a pattern with flags of its own (the alternation has none) or a group (numbered
    across the alternation: a backreference would point at another pattern's group, and the
    shortcut would pass a secret unscrubbed)."""
    plain = re.compile("").flags
    for p in patterns:
        if p.flags != plain or p.groups:
            raise ValueError(f"secret pattern {p.pattern!r}: flags or a capturing group (use (?:...))")
    return re.compile("|".join(f"(?:{p.pattern})" for p in patterns))


_ANY_SECRET = one_alternation(SECRET_PATTERNS)
_ANY_SECRET_CHARS = 128


def holds_secret(text: str) -> bool:
    """Whether any secret pattern matches anywhere in ``text`` (one search)."""
    return _ANY_SECRET.search(text) is not None


def scrub_secrets(
    text: str, patterns: Sequence[re.Pattern[str]] = SECRET_PATTERNS, *, replacement: str = REDACTED
) -> tuple[str, int]:
    """``text`` with every recognisable secret value (``patterns``) replaced (``replacement``),
    and how many were."""
    if patterns is SECRET_PATTERNS and len(text) <= _ANY_SECRET_CHARS and not holds_secret(text):
        return text, 0
    n = 0
    for pattern in patterns:
        text, k = pattern.subn(replacement, text)
        n += k
    return text, n


# How much of a text someone else wrote (an upstream's error) a record or a log line quotes.
EXCERPT_CHARS = 1000


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The start of ``text`` that someone else wrote (an upstream's error, up to
    ``mcp.max_message_bytes`` and saying what it likes): at most ``limit`` characters,
    recognisable secrets replaced, and how many more characters there were. Cut first: the
    patterns over a megabyte of text on every failure would be its writer's lever on our CPU."""
    kept = scrub_secrets(text[:limit])[0]
    if len(text) <= limit:
        return kept
    return f"{kept}... [{len(text) - limit} more characters not recorded]"


def _scrub_values(doc: Any) -> tuple[Any, int]:
    if isinstance(doc, str):
        return scrub_secrets(doc)
    if isinstance(doc, dict):
        n = 0
        for k in list(doc):
            doc[k], m = _scrub_values(doc[k])
            n += m
        return doc, n
    if isinstance(doc, list):
        n = 0
        for i, item in enumerate(doc):
            doc[i], m = _scrub_values(item)
            n += m
        return doc, n
    return doc, 0


# The audit's keys are scrubbed through a cache (a request's keys repeat from call to call):
# of keys of at most this many characters (longer ones are scrubbed each time).
_KEY_CACHE_CHARS = 128


@lru_cache(maxsize=4096)
def _scrubbed_key(key: str) -> str:
    return scrub_secrets(key)[0]


def audit_key(key: Any, *taken: Container[Any]) -> Any:
    """``key`` as the audit records it: with recognisable secrets replaced like a value's
    (``{"sk-proj-...": true}`` names a secret as surely as it holds one), made unique among
    ``taken`` (the object's own keys and those recorded so far) with a ``#2``, ``#3``..."""
    if type(key) is not str:
        return key
    text = _scrubbed_key(key) if len(key) <= _KEY_CACHE_CHARS else scrub_secrets(key)[0]
    if text == key:
        return key
    unique, n = text, 1
    while any(unique in t for t in taken):
        n += 1
        unique = f"{text}#{n}"
    return unique


def audit_names(arguments: Any) -> dict[str, str]:
    """The names-only record of ``arguments`` (a denied call's, ``audit: minimal``): each key,
    as ``audit_key`` records it, with ``"[not recorded]"``."""
    keys = sorted(map(str, arguments))
    out: dict[str, str] = {}
    for k in keys:
        out[audit_key(k, keys, out)] = "[not recorded]"
    return out


def _scrub_keys(doc: Any, seen: set[int]) -> Any:
    """``doc`` (a copy the audit keeps) with every object key through ``audit_key``, in place
    (a copy ``deepcopy`` made keeps its sharing; a container met again is done already)."""
    if isinstance(doc, dict | list) and id(doc) not in seen:
        seen.add(id(doc))
        for v in doc.values() if isinstance(doc, dict) else doc:
            _scrub_keys(v, seen)
        if isinstance(doc, dict) and any(type(k) is str for k in doc):
            out: dict[Any, Any] = {}
            for k, v in doc.items():
                out[audit_key(k, doc, out)] = v
            if list(out) != list(doc):
                doc.clear()
                doc.update(out)
    return doc


def scrub_values(doc: Any) -> Any:
    """A deep copy of ``doc`` with recognisable secret values (and keys) replaced (what the
    audit keeps)."""
    return _scrub_keys(_scrub_values(copy.deepcopy(doc))[0], set())


def _pointer(path: str) -> tuple[str, ...]:
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:])


def _redact_pointer(doc: Any, parts: tuple[str, ...]) -> int:
    """Replace what the pointer ``parts`` names in ``doc``; how many values were replaced. An
    object's keys are compared folded (``_folded``): header names and the like are
    case-insensitive in practice, and every spelling of the key is taken, not just the first
    (``{"authorization": "decoy", "AUTHORIZATION": secret}`` redacts both)."""
    if not parts:
        return 0
    part, rest = parts[0], parts[1:]
    if isinstance(doc, dict):
        want = _folded(part)
        keys = [k for k in doc if k == part or (isinstance(k, str) and _folded(k) == want)]
        if not rest:
            for k in keys:
                doc[k] = REDACTED
            return len(keys)
        return sum(_redact_pointer(doc[k], rest) for k in keys)
    if isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
        if not rest:
            doc[int(part)] = REDACTED
            return 1
        return _redact_pointer(doc[int(part)], rest)
    return 0


# A compiled rule list remembers whether each key it met matches (a request's keys repeat from
# call to call): up to this many keys, of at most this many characters each (memory bounded).
HITS_KEYS = 1024
HITS_KEY_CHARS = 128


class Rules:
    """A rule list compiled once (``compile_rules``): the key rules' words, the pointer rules
    parsed, in the list's order, and which keys met so far match a key rule."""

    __slots__ = ("hits", "keys", "pointers")

    def __init__(self, rules: tuple[str, ...]) -> None:
        self.keys = tuple(w for w in (_words(r) for r in rules if not r.startswith("/")) if w)
        self.pointers = tuple(_pointer(r) for r in rules if r.startswith("/") and len(r) > 1)
        self.hits: dict[str, bool] = {}  # key -> whether a key rule names it (see key_hit)

    def key_hit(self, key: str) -> bool:
        """Whether a key rule names ``key`` (``key_matches``), remembered for short keys."""
        hit = any(key_matches(key, rule) for rule in self.keys)
        if len(key) <= HITS_KEY_CHARS:
            if len(self.hits) >= HITS_KEYS:
                self.hits.clear()
            self.hits[key] = hit
        return hit


@lru_cache(maxsize=256)
def compile_rules(rules: tuple[str, ...]) -> Rules:
    """The compiled form of a rule list: the same decision's rules are compiled once."""
    return Rules(rules)


def _redact_keys(doc: Any, rules: Rules) -> int:
    n = 0
    if isinstance(doc, dict):
        hits = rules.hits
        for k in list(doc):
            if isinstance(k, str):
                hit = hits.get(k)
                if hit is None:
                    hit = rules.key_hit(k)
                if hit:
                    doc[k] = REDACTED
                    n += 1
                    continue
            n += _redact_keys(doc[k], rules)
    elif isinstance(doc, list):
        for item in doc:
            n += _redact_keys(item, rules)
    return n


def _redact_rules(out: Any, rules: Sequence[str]) -> int:
    """Replace, in place, what the key and path rules name; how many values were replaced."""
    compiled = compile_rules(tuple(rules))
    n = _redact_keys(out, compiled) if compiled.keys else 0
    for parts in compiled.pointers:
        n += _redact_pointer(out, parts)
    return n


def redact(doc: Any, rules: Sequence[str]) -> tuple[Any, int]:
    """(a redacted deep copy of ``doc``, how many values were replaced)."""
    out = copy.deepcopy(doc)
    n = _redact_rules(out, rules)
    if rules:
        out, m = _scrub_values(out)
        n += m
    return out, n


class _Irregular(Exception):
    """Not a tree of plain JSON values (another type, a container met twice): the general
    path (``copy.deepcopy`` and the in-place scrub) decides."""


_ATOMS = frozenset((int, float, bool, type(None)))  # what ``copy.deepcopy`` returns as is


_STR = frozenset((str,))


def _string_keys(doc: dict[Any, Any]) -> None:
    """Raise ``_Irregular`` unless every key is a string (what ``copy.deepcopy`` keeps as is)."""
    if not _STR.issuperset(map(type, doc)):
        raise _Irregular


def _scrubbed(text: str) -> str:
    return scrub_secrets(text)[0]


def _json_copy(doc: Any, seen: set[int], leaf: Callable[[str], str]) -> Any:
    """A copy of a tree of plain JSON values with each string through ``leaf`` (new dicts and
    lists, the same numbers): ``copy.deepcopy(doc)`` with ``leaf=str`` (``str`` of a ``str`` is
    that very string), ``scrub_values(doc)`` with ``leaf=_scrubbed``. Raises ``_Irregular`` for
    anything else: another type, a non-string key, a container met twice (shared or cyclic:
    ``deepcopy`` keeps the sharing, and the in-place scrub sees it twice)."""
    t = type(doc)
    if t is str:
        return leaf(doc)
    if t in _ATOMS:
        return doc
    if (t is not dict and t is not list) or id(doc) in seen:
        raise _Irregular
    seen.add(id(doc))
    # a leaf is copied here, without a call of this function for it (most values are leaves)
    if t is dict:
        _string_keys(doc)
        if leaf is _scrubbed:  # the audit's copy: its keys name no secret either
            out: dict[str, Any] = {}
            for k, v in doc.items():
                out[audit_key(k, doc, out)] = (
                    leaf(v) if type(v) is str else v if type(v) in _ATOMS else _json_copy(v, seen, leaf)
                )
            return out
        return {
            k: leaf(v) if type(v) is str else v if type(v) in _ATOMS else _json_copy(v, seen, leaf)
            for k, v in doc.items()
        }
    return [leaf(v) if type(v) is str else v if type(v) in _ATOMS else _json_copy(v, seen, leaf) for v in doc]


def _scrub_pair(doc: Any) -> tuple[Any, Any, int]:
    """(``doc`` scrubbed in place as ``_scrub_values`` does, a copy of that scrubbed again as
    ``scrub_values`` does, replacements of the first scrub), for ``_json_copy``'s tree (plain
    JSON values, string keys, nothing shared). A string the first scrub left as it was is left
    so by the second (the same function of the same text): only a string it changed is
    scrubbed again."""
    t = type(doc)
    if t is str:
        text, n = scrub_secrets(doc)
        return text, (scrub_secrets(text)[0] if n else text), n
    n = 0
    if t is dict:
        audit: dict[str, Any] = {}
        for k in list(doc):
            doc[k], a, m = _scrub_pair(doc[k])
            audit[audit_key(k, doc, audit)] = a  # the audit's keys name no secret either
            n += m
        return doc, audit, n
    if t is list:
        copied: list[Any] = []
        for i, item in enumerate(doc):
            doc[i], a, m = _scrub_pair(item)
            copied.append(a)
            n += m
        return doc, copied, n
    return doc, doc, 0  # a number, a bool or null


def audit_copy(doc: Any) -> Any:
    """``scrub_values(doc)`` (what the audit keeps of arguments no rule redacted), without a
    ``deepcopy`` when ``doc`` is a tree of plain JSON values (the arguments of a request)."""
    try:
        return _json_copy(doc, set(), _scrubbed)
    except (_Irregular, RecursionError):
        return scrub_values(doc)


def redact_with_audit(doc: Any, rules: Sequence[str]) -> tuple[Any, Any]:
    """(``redact(doc, rules)[0]``, ``scrub_values`` of that): the arguments the upstream gets and
    those the audit keeps, with no ``deepcopy`` and one scrub of each string when ``doc`` is a
    tree of plain JSON values (a request's arguments); exactly the two calls otherwise."""
    if not rules:
        return doc, audit_copy(doc)
    try:
        out = _json_copy(doc, set(), str)
        _redact_rules(out, rules)
        out, audit, _ = _scrub_pair(out)
    except (_Irregular, RecursionError):
        out, _ = redact(doc, rules)
        return out, scrub_values(out)
    return out, audit
