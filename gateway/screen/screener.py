"""Screen one definition (tool, resource or prompt): findings with a rule id, a severity, the
field and the offending span."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from confusable_homoglyphs import confusables  # type: ignore[import-untyped]

from gateway.screen.rules import (
    INVISIBLE,
    SEVERITY_RANK,
    SIDE_CHANNEL_ASK,
    SIDE_CHANNEL_NAMES,
    TEXT_RULES,
    Severity,
)

Kind = Literal["tool", "resource", "prompt"]
SIGNATURE_KEY = "schemapin/signature"  # the in-band signature: base64, never screened
_NAMESPACED = re.compile(r"\b[A-Za-z0-9][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*__[A-Za-z0-9_-]+\b")


@dataclass(frozen=True)
class Finding:
    rule: str
    category: str
    severity: Severity
    field: str  # where: "description", "inputSchema.properties.sidenote.description", "name"...
    span: tuple[int, int]  # character offsets in that field's text
    excerpt: str
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "field": self.field,
            "span": list(self.span),
            "excerpt": self.excerpt,
            "summary": self.summary,
        }


@dataclass(frozen=True)
class Screening:
    findings: tuple[Finding, ...] = ()
    accepted: bool = False  # a person read these findings and accepted this definition

    @property
    def highest(self) -> Severity | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=SEVERITY_RANK.__getitem__)

    def at_least(self, severity: Severity) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if SEVERITY_RANK[f.severity] >= SEVERITY_RANK[severity])

    def as_input(self) -> dict[str, Any]:
        """The policy input's ``tool.screening``."""
        return {
            "highest": self.highest,
            "accepted": self.accepted,
            "findings": [{"rule": f.rule, "severity": f.severity, "field": f.field} for f in self.findings],
        }


def screen_definition(
    kind: Kind, definition: Mapping[str, Any], *, others: Collection[str] = ()
) -> Screening:
    """``others``: names of other servers' tools (namespaced and original), for shadowing and
    homoglyph checks."""
    findings: list[Finding] = []
    own = {str(definition.get("name", ""))}
    for field, text in _texts(kind, definition):
        findings.extend(_text_findings(field, text))
        findings.extend(_mentions(field, text, others, own))
    findings.extend(_name_findings(str(definition.get("name", "")), others))
    findings.extend(_identifier_findings("name", str(definition.get("name", ""))))
    for pname, pdesc, where in _parameters(kind, definition):
        findings.extend(_side_channel(pname, pdesc, where))
        findings.extend(_identifier_findings(where, pname))
    return Screening(tuple(_dedupe(findings)))


# What an identifier (a tool or parameter name, words joined by _ - or camelCase) may not say:
# instructions to the model and concealment. Not the secret or exfiltration rules: names such
# as send_password_reset are ordinary tools.
_NAME_RULES = frozenset({"SP001", "SP002", "SP003", "SP004"})
_HUMPS = re.compile(r"(?<=[a-z])(?=[A-Z])")


def screen_texts(
    texts: Iterable[tuple[str, str]], *, names: Iterable[tuple[str, str]] = (), joined: str | None = None
) -> Screening:
    """Free text one party writes for others to read (a shared memory and its metadata, a bus
    message), screened with the definitions' text rules: ``texts`` are (field, text) pairs.

    ``names``: (field, key) pairs read as identifiers are (words split at ``_``, ``-`` and case
    humps; the rules that speak to the model only), since a key reaches the reader's model as
    its value does (``ignore_all_previous_instructions``). ``joined``: the field under which the
    texts are screened again as one text, in order, for an instruction split over several
    strings (``["Ignore all previous", "instructions and ..."]``)."""
    texts = list(texts)
    found = [f for field, text in texts for f in _text_findings(field, text)]
    found += [f for field, name in names for f in _identifier_findings(field, name)]
    if joined is not None and len(texts) > 1:
        rules = {f.rule for f in found}
        whole = " ".join(text for _, text in texts)
        found += [f for f in _text_findings(joined, whole) if f.rule not in rules]
    return Screening(tuple(_dedupe(found)))


def json_texts(field: str, value: Any) -> Iterator[tuple[str, str]]:
    """(field, text) of every string in a JSON value, and of its keys long enough to say
    something: ``body.notes[2]``, ``body.<key>``."""
    return _strings(field, value, keys=True)


def json_keys(field: str, value: Any) -> Iterator[tuple[str, str]]:
    """(field, key) of every key in a JSON value long enough to say something (``names`` of
    ``screen_texts``)."""
    return _strings(field, value, keys=True, values=False)


def _identifier_findings(field: str, name: str) -> Iterator[Finding]:
    if len(name) < 12:  # too short to hold an instruction
        return
    words = _HUMPS.sub(" ", name).replace("_", " ").replace("-", " ")
    for f in _text_findings(field, words):
        if f.rule in _NAME_RULES:
            yield replace(f, span=(0, len(name)), excerpt=name)


class Screener:
    """Screening cached by definition (a catalogue refresh screens only what changed).

    ``others`` changes only when another upstream's tools change; callers screening many tools
    of one upstream pass the same frozenset, whose hash Python computes once.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self._cache: dict[tuple[Any, ...], Screening] = {}
        self._tokens: dict[tuple[str, str], frozenset[str]] = {}  # namespaced names a definition mentions
        self._max = max_entries

    def screen(
        self,
        kind: Kind,
        definition: Mapping[str, Any],
        others: frozenset[str] = frozenset(),
        *,
        definition_hash: str | None = None,
    ) -> Screening:
        """``definition_hash``: the caller's hash of ``definition`` when it has one (the
        verifier does), so a cached refresh does not serialise every definition again."""
        digest = (
            definition_hash
            or hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()
        )
        key: tuple[Any, ...]
        if str(definition.get("name", "")).isascii():
            # Other upstreams' names count only where this definition mentions them (SP011):
            # a tool added or removed elsewhere does not screen every definition again (with
            # 50 upstreams, every rebuild after a list change re-screened all 2,000 tools).
            mentions = self._mentions_of(kind, digest, definition)
            key = (digest, frozenset(t for t in mentions if t in others))
        else:  # a look-alike name is compared with every other name (SP012)
            key = (digest, len(others), hash(others))  # a frozenset caches its own hash
        hit = self._cache.get(key)
        if hit is None:
            hit = screen_definition(kind, definition, others=others)
            if len(self._cache) >= self._max:
                self._cache.clear()  # bounded: a full cache starts over rather than grow
            self._cache[key] = hit
        return hit

    def _mentions_of(self, kind: Kind, digest: str, definition: Mapping[str, Any]) -> frozenset[str]:
        """Every namespaced tool name the definition's texts mention (cached by definition)."""
        found = self._tokens.get((kind, digest))
        if found is None:
            found = frozenset(
                m.group() for _, text in _texts(kind, definition) for m in _NAMESPACED.finditer(text)
            )
            if len(self._tokens) >= self._max:
                self._tokens.clear()
            self._tokens[(kind, digest)] = found
        return found


# -- what is read -------------------------------------------------------------------------


def _texts(kind: Kind, d: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for key in ("title", "description", "uri", "uriTemplate", "mimeType"):
        if isinstance(d.get(key), str):
            yield key, d[key]
    yield from _strings("annotations", d.get("annotations"))
    meta = d.get("_meta")
    if isinstance(meta, Mapping):
        yield from _strings("_meta", {k: v for k, v in meta.items() if k != SIGNATURE_KEY})
    for schema_key in ("inputSchema", "outputSchema"):
        # every string of a schema, its keys included: a client hands the whole schema to the
        # model, so an `x-` key, `$comment`, `if`, `prefixItems` or a `required` entry reads as
        # well as a description does
        yield from _strings(schema_key, d.get(schema_key), keys=True)
    if kind == "prompt":
        for i, arg in enumerate(d.get("arguments") or []):
            if isinstance(arg, Mapping):
                yield from _strings(f"arguments[{i}]", {k: arg.get(k) for k in ("description", "title")})


def _strings(
    prefix: str, value: Any, *, keys: bool = False, values: bool = True
) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if values:
            yield prefix, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if keys and isinstance(k, str) and len(k) >= _KEY_TEXT:
                yield f"{prefix}.{k}", k  # a key long enough to say something
            yield from _strings(f"{prefix}.{k}", v, keys=keys, values=values)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(f"{prefix}[{i}]", v, keys=keys, values=values)


_KEY_TEXT = 12  # keys shorter than this ("properties", "additionalProperties"...) hold no sentence


def _parameters(kind: Kind, d: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    if kind == "prompt":
        for i, arg in enumerate(d.get("arguments") or []):
            if isinstance(arg, Mapping):
                yield str(arg.get("name", "")), str(arg.get("description") or ""), f"arguments[{i}].name"
        return
    props = (d.get("inputSchema") or {}).get("properties")
    if isinstance(props, Mapping):
        for name, s in props.items():
            desc = s.get("description", "") if isinstance(s, Mapping) else ""
            yield str(name), str(desc or ""), f"inputSchema.properties.{name}"


# -- the checks -------------------------------------------------------------------------


def _text_findings(field: str, text: str) -> Iterator[Finding]:
    hit: set[str] = set()
    for f in _rule_findings(field, text):
        hit.add(f.rule)
        yield f
    folded = _fold(text)
    if folded != text:  # fullwidth letters, a phrase broken over lines: read as the model reads it
        yield from (f for f in _rule_findings(f"{field} (folded)", folded) if f.rule not in hit)
    inv = INVISIBLE.search(text)
    if inv:
        yield Finding(
            "SP014",
            "invisible-unicode",
            "high",
            field,
            inv.span(),
            repr(inv.group()),
            f"an invisible or bidirectional character (U+{ord(inv.group()):04X})",
        )


_SPACES = re.compile(r"\s+")


def _fold(text: str) -> str:
    """``text`` in compatibility form (NFKC: fullwidth and styled letters become plain ones),
    without accents and with look-alike letters read as the Latin ones they imitate (a model
    reads "Ign\u043ere" and "Ign\u00f3re" as "Ignore"), with each run of white space, line breaks
    included, one space."""
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        bare = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        text = _skeleton(unicodedata.normalize("NFC", bare))
    return _SPACES.sub(" ", text)


def _skeleton(text: str) -> str:
    """``text`` with each look-alike of a Latin letter (Cyrillic, Greek...) replaced by it."""
    found = confusables.is_confusable(text, preferred_aliases=["latin"], greedy=True) or []
    for c in found:
        latin = next((h["c"] for h in c["homoglyphs"] if h["c"].isascii()), None)
        if latin == "l" and c["character"].isupper():
            latin = "I"  # the table lists only "l" for capital Iota and Cyrillic І: an I here
        if latin:
            text = text.replace(c["character"], latin)
    return text


def _rule_findings(field: str, text: str) -> Iterator[Finding]:
    low = text.lower()
    for rule in TEXT_RULES:
        if rule.triggers and not any(t in low for t in rule.triggers):
            continue
        hit = rule.pattern.search(text)  # one finding per rule and field: the first span
        if hit:
            yield Finding(
                rule.id,
                rule.category,
                rule.severity,
                field,
                hit.span(),
                _excerpt(text, hit.span()),
                rule.summary,
            )


def _mentions(field: str, text: str, others: Collection[str], own: set[str]) -> Iterator[Finding]:
    if not others:
        return
    for m in _NAMESPACED.finditer(text):
        if m.group() in others and m.group() not in own:
            yield Finding(
                "SP011", "shadowing", "high", field, m.span(), m.group(), "refers to another server's tool"
            )
            return


def _name_findings(name: str, others: Collection[str]) -> Iterator[Finding]:
    m = INVISIBLE.search(name)
    if m:
        yield Finding(
            "SP014",
            "invisible-unicode",
            "high",
            "name",
            m.span(),
            repr(m.group()),
            f"an invisible or bidirectional character in the name (U+{ord(m.group()):04X})",
        )
    if name.isascii():
        return
    confusable = confusables.is_confusable(name, preferred_aliases=["latin"], greedy=True) or []
    if confusable or confusables.is_mixed_script(name):
        skeleton = _skeleton(name)
        imitates = next((o for o in others if o == skeleton or o.endswith("__" + skeleton)), None)
        summary = (
            f"a homoglyph name imitating {imitates!r}" if imitates else "a name with look-alike characters"
        )
        yield Finding("SP012", "homoglyph", "high", "name", (0, len(name)), name, summary)


def _side_channel(name: str, desc: str, where: str) -> Iterator[Finding]:
    if INVISIBLE.search(name):
        yield Finding(
            "SP014",
            "invisible-unicode",
            "high",
            where,
            (0, len(name)),
            repr(name),
            "an invisible or bidirectional character in a parameter name",
        )
    if not SIDE_CHANNEL_NAMES.match(name):
        return
    ask = SIDE_CHANNEL_ASK.search(desc)
    if ask:
        yield Finding(
            "SP013",
            "side-channel",
            "high",
            where,
            (0, len(name)),
            f"{name}: {_excerpt(desc, ask.span())}",
            "a parameter that asks the model for conversation, files or secrets",
        )
    else:
        yield Finding(
            "SP013",
            "side-channel",
            "low",
            where,
            (0, len(name)),
            name,
            "a parameter name often used as a side channel",
        )


def _excerpt(text: str, span: tuple[int, int], room: int = 30) -> str:
    start, end = max(0, span[0] - room), min(len(text), span[1] + room)
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def _dedupe(findings: list[Finding]) -> Iterator[Finding]:
    seen: set[tuple[str, str]] = set()
    for f in findings:
        if (f.rule, f.field) not in seen:
            seen.add((f.rule, f.field))
            yield f
