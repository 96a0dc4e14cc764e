"""One catalogue of tools, resources, templates and prompts from every upstream.

Names are ``server__tool`` and must match ``^[A-Za-z0-9_-]{1,64}$`` so every major client
accepts them. A name that cannot be made valid, or that two tools would share, is refused
(both tools are left out and the refusal is reported): no tool may shadow another. The
catalogue is rebuilt as a whole and swapped in one assignment, so a reader never sees half
an update.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp import types
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from gateway.config.model import RESERVED_SERVER_NAMES
from gateway.context import ToolInfo, UpstreamInfo
from gateway.errors import (
    CatalogError,
    HeldForApproval,
    ResourceAmbiguous,
    UnknownTool,
    UpstreamUnavailable,
)
from gateway.handouts import HandedOut
from gateway.verify.listed import hold_reason

_logger = logging.getLogger("symbi.catalog")

TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
SEP = "__"
# Upstream names (and so tool-name prefixes) taken by the gateway's built-in servers: an
# upstream may not use them, and a pass-through tool may not start with ``NAME__``.
RESERVED_PREFIXES = RESERVED_SERVER_NAMES


@dataclass(frozen=True)
class UpstreamListing:
    """What the catalogue needs from one upstream (decoupled from the session object)."""

    name: str
    pass_through: bool
    tools: list[types.Tool]
    resources: list[types.Resource] = field(default_factory=list)
    templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)


@dataclass(frozen=True)
class CatalogTool:
    info: ToolInfo
    tool: types.Tool  # as listed to clients (namespaced name)
    # the upstream's own listing entry it was made from: while a rebuild sees that same
    # object (the upstream did not re-list) with the same verdict, the entry is reused
    source: types.Tool | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CatalogPrompt:
    name: str
    original_name: str
    upstream: str
    prompt: types.Prompt


@dataclass(frozen=True)
class Refusal:
    upstream: str
    kind: str
    name: str
    reason: str


def is_reserved(name: str) -> bool:
    """Whether ``name`` (an upstream name) or its ``PREFIX__`` belongs to a built-in server."""
    head = name.split(SEP, 1)[0] if SEP in name else name
    return head.lower() in RESERVED_PREFIXES


def namespaced(upstream: str, original: str, pass_through: bool) -> str:
    """The client-facing name of ``original`` from ``upstream`` (raises CatalogError).

    Every mode validates: an empty name, or one with control, format or bidi characters
    (U+202E...), is refused rather than repaired; pass-through names must already be
    valid and may not take a built-in server's prefix.
    """
    where = f"tool {original[:80]!r} of upstream {upstream!r}"
    if not original or not original.strip():
        raise CatalogError(f"{where}: an empty name is not a valid tool name")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in original):
        raise CatalogError(f"{where}: the name holds control, format or invisible characters")
    if pass_through:
        if not TOOL_NAME_RE.match(original):
            raise CatalogError(
                f"{where}: not a valid tool name (^[A-Za-z0-9_-]{{1,64}}$; pass_through keeps names)"
            )
        if SEP in original and is_reserved(original):
            raise CatalogError(
                f"{where}: the prefix {original.split(SEP, 1)[0]!r} is reserved for a built-in server"
            )
        return original
    candidate = f"{upstream}{SEP}{_INVALID_CHARS.sub('_', original)}"
    if not TOOL_NAME_RE.match(candidate):
        raise CatalogError(f"{where}: {candidate[:80]!r} is not a valid tool name (^[A-Za-z0-9_-]{{1,64}}$)")
    return candidate


class Catalog:
    """An immutable snapshot; build a new one with ``Catalog.build``."""

    def __init__(
        self,
        tools: dict[str, CatalogTool],
        resources: dict[str, tuple[str, types.Resource]],
        templates: list[tuple[str, types.ResourceTemplate, UriTemplate | None]],
        prompts: dict[str, CatalogPrompt],
        refusals: list[Refusal],
        pass_through: str | None = None,
        listed: Mapping[str, ToolInfo] | None = None,
        held: Mapping[str, str] | None = None,
    ) -> None:
        self.tools = tools
        # verdicts on prompts, resources and templates (gateway.verify.listed), and why each
        # one not served is held, by "prompt:NAME" / "resource:URI" / "template:URI_TEMPLATE"
        self.listed = dict(listed or {})
        self.held = dict(held or {})
        # the one upstream in pass-through mode (config allows no other), if any
        self.pass_through = pass_through
        self.resources = resources
        # URIs refused (listed by two upstreams): refused at lookup too, never left to a template
        self.refused_uris = frozenset(r.name for r in refusals if r.kind == "resource")
        self.templates = templates
        self.prompts = prompts
        self.refusals = refusals
        # URIs upstreams handed out in relayed tool results: not part of the snapshot, the
        # one memory of the ``LiveCatalog`` that serves it (a bare snapshot has its own)
        self.handed_out = HandedOut()

    @classmethod
    def empty(cls) -> Catalog:
        return cls({}, {}, [], {}, [])

    @classmethod
    def fresh_infos(
        cls, listings: Iterable[UpstreamListing], previous: Catalog | None = None
    ) -> list[ToolInfo]:
        """Every tool the catalogue would hold, not yet assessed (the verifier's input), in
        listing order; no client copies are made. ``previous``: reuse the definitions of
        tools whose upstream did not re-list."""
        seen: dict[str, str] = {}
        collided: set[str] = set()
        refusals: list[Refusal] = []
        prior = previous.tools if previous is not None else {}
        named = [(up, t, name) for up in listings for t, name in _named_tools(up, seen, collided, refusals)]
        return [_fresh_info(up, t, name, prior.get(name)) for up, t, name in named if name not in collided]

    @classmethod
    def build(
        cls,
        listings: Iterable[UpstreamListing],
        infos: Mapping[str, ToolInfo] | None = None,
        previous: Catalog | None = None,
        listed: Mapping[str, ToolInfo] | None = None,
    ) -> Catalog:
        """Build from upstream listings. ``infos`` overrides per-tool verification state;
        ``previous``: entries of tools its upstream did not re-list, with the same verdict,
        are reused (one server's list change costs its own tools, not every server's).
        ``listed``: verdicts on prompts, resources and templates; one without an admitting
        verdict is held, not served (None: not verified, all served)."""
        listings = list(listings)
        held: dict[str, str] = {}
        if listed is not None:
            listings = [_admitted(up, listed, held) for up in listings]
        prior = previous.tools if previous is not None else {}
        tools: dict[str, CatalogTool] = {}
        refusals: list[Refusal] = []
        seen: dict[str, str] = {}
        collided: set[str] = set()
        resources: dict[str, tuple[str, types.Resource]] = {}
        dup_uris: set[str] = set()
        templates: list[tuple[str, types.ResourceTemplate, UriTemplate | None]] = []
        prompts: dict[str, CatalogPrompt] = {}
        dup_prompts: set[str] = set()
        for up in listings:  # per upstream, in order: its refusals are listed in listing order
            for t, name in _named_tools(up, seen, collided, refusals):
                tools[name] = _entry(up, t, name, (infos or {}).get(name), prior.get(name))
            _add_resources(up, resources, dup_uris, refusals)
            templates += _parsed_templates(up)
            _add_prompts(up, prompts, dup_prompts, refusals)
        for name in collided:
            # fail closed: neither side of a collision is reachable
            tools.pop(name, None)
        _log_refusals(refusals)
        pass_through = next((up.name for up in listings if up.pass_through), None)
        return cls(tools, resources, templates, prompts, refusals, pass_through, listed, held)

    def tool(self, name: str) -> CatalogTool:
        try:
            return self.tools[name]
        except KeyError:
            raise UnknownTool(f"unknown tool {name!r}") from None

    def resource_owner(self, uri: str) -> str:
        """Which upstream serves ``uri``: the one that lists it, else the one that claims it,
        by a matching template or by having handed it out in a result (``handed_out``).
        A URI two upstreams list, or that two upstreams claim, is refused: a template or a
        hand-out never takes a URI another upstream lists, nor one refused as listed twice.
        A held one is refused too, and no template of anyone else's stands in for it."""
        if (why := self.held.get(f"resource:{uri}")) is not None:
            raise HeldForApproval(f"resource {uri!r} is held until approved: {why}")
        hit = self.resources.get(uri)
        if hit is not None:
            return hit[0]
        if uri in self.refused_uris:
            raise ResourceAmbiguous(f"resource {uri!r} is listed by several upstreams: refused for all")
        owners = {up for up, _tpl, parsed in self.templates if parsed is not None and _matches(parsed, uri)}
        owners |= self.handed_out.claimants(uri)
        if len(owners) == 1:
            return owners.pop()
        if len(owners) > 1:
            raise ResourceAmbiguous(
                f"resource {uri!r} is claimed (by a template or a hand-out) by several upstreams: "
                f"{sorted(owners)}"
            )
        raise CatalogError(f"unknown resource {uri!r}")

    def subscription_owner(self, uri: str) -> str:
        """Who takes ``resources/subscribe`` for ``uri``: its owner, else the pass-through upstream.

        A server may accept subscriptions to URIs it does not list (server-everything's
        ``test://watched-resource``); in pass-through mode the gateway stands in for that one
        server, so the request goes to it (the policy still decides, as for a read).
        """
        try:
            return self.resource_owner(uri)
        except (ResourceAmbiguous, HeldForApproval):
            raise  # claimed by several, or held: not the pass-through upstream's to take either
        except CatalogError:
            if self.pass_through is None:
                raise
            return self.pass_through

    def template_owner(self, uri_template: str) -> str:
        owners = {up for up, tpl, _ in self.templates if tpl.uri_template == uri_template}
        if not owners and (why := self.held.get(f"template:{uri_template}")) is not None:
            raise HeldForApproval(f"resource template {uri_template!r} is held until approved: {why}")
        if len(owners) != 1:
            raise CatalogError(f"unknown resource template {uri_template!r}")
        return owners.pop()

    def prompt(self, name: str) -> CatalogPrompt:
        try:
            return self.prompts[name]
        except KeyError:
            if (why := self.held.get(f"prompt:{name}")) is not None:
                raise HeldForApproval(f"prompt {name!r} is held until approved: {why}") from None
            raise CatalogError(f"unknown prompt {name!r}") from None


def _add_resources(
    up: UpstreamListing,
    resources: dict[str, tuple[str, types.Resource]],
    dup_uris: set[str],
    refusals: list[Refusal],
) -> None:
    """``up``'s resources by URI; a URI two upstreams list is refused for both (fail closed)."""
    for r in up.resources:
        if r.uri in resources or r.uri in dup_uris:
            dup_uris.add(r.uri)
            resources.pop(r.uri, None)
            refusals.append(Refusal(up.name, "resource", r.uri, "URI listed by two upstreams"))
            continue
        resources[r.uri] = (up.name, r)


def _parsed_templates(up: UpstreamListing) -> list[tuple[str, types.ResourceTemplate, UriTemplate | None]]:
    """``up``'s resource templates, each with its parsed form (None: it matches no URI)."""
    out: list[tuple[str, types.ResourceTemplate, UriTemplate | None]] = []
    for tpl in up.templates:
        try:
            parsed: UriTemplate | None = UriTemplate.parse(tpl.uri_template)
        except (InvalidUriTemplate, ValueError):
            parsed = None
        out.append((up.name, tpl, parsed))
    return out


def _add_prompts(
    up: UpstreamListing,
    prompts: dict[str, CatalogPrompt],
    dup_prompts: set[str],
    refusals: list[Refusal],
) -> None:
    """``up``'s prompts under their namespaced names; a name two upstreams give is refused for both."""
    for p in up.prompts:
        try:
            pname = namespaced(up.name, p.name, up.pass_through)
        except CatalogError as e:
            refusals.append(Refusal(up.name, "prompt", p.name, e.message))
            continue
        if pname in prompts or pname in dup_prompts:
            dup_prompts.add(pname)
            prompts.pop(pname, None)
            refusals.append(Refusal(up.name, "prompt", p.name, f"name {pname!r} collides"))
            continue
        prompts[pname] = CatalogPrompt(pname, p.name, up.name, p.model_copy(update={"name": pname}))


def _admitted(up: UpstreamListing, listed: Mapping[str, ToolInfo], held: dict[str, str]) -> UpstreamListing:
    """``up`` with only the prompts, resources and templates its verdicts admit; why each of
    the others is held goes to ``held`` (by the name or URI a client asks for)."""
    prompts, resources, templates = [], [], []
    for p in up.prompts:
        if (why := hold_reason(listed, "prompt", up.name, p.name)) is None:
            prompts.append(p)
            continue
        try:
            held[f"prompt:{namespaced(up.name, p.name, up.pass_through)}"] = why
        except CatalogError:
            pass  # a name the catalogue refuses anyway
    for r in up.resources:
        if (why := hold_reason(listed, "resource", up.name, str(r.uri))) is None:
            resources.append(r)
        else:
            held[f"resource:{r.uri}"] = why
    for t in up.templates:
        if (why := hold_reason(listed, "template", up.name, t.uri_template)) is None:
            templates.append(t)
        else:
            held[f"template:{t.uri_template}"] = why
    return dataclasses.replace(up, prompts=prompts, resources=resources, templates=templates)


def _log_refusals(refusals: list[Refusal]) -> None:
    for refusal in refusals:
        _logger.error(
            "catalogue refused %s %r of upstream %r: %s",
            refusal.kind,
            refusal.name,
            refusal.upstream,
            refusal.reason,
        )


def order_digest(names: Iterable[str]) -> str:
    """The name of an order of tool names (SHA-256, 128 bits, hex). Catalogue names never hold
    NUL (``namespaced`` refuses control characters), so joining on it is unambiguous."""
    return hashlib.sha256(b"symbi catalogue order/v1\0" + "\0".join(names).encode()).hexdigest()[:32]


class LiveCatalog:
    """The catalogue being served: one snapshot, replaced whole on every rebuild.

    The gateway swaps ``snapshot``; the steps read it (one object shared by both, so the
    steps need no reference to the gateway). It also knows what each upstream is, for the
    policy input.
    """

    # tool orders kept by digest after their snapshot is replaced: a paginated listing that
    # began on one finishes on it (a cursor names its digest), unless this many other orders
    # were served since. A start-up makes several snapshots in a fraction of a second (5 with
    # one upstream and the built-ins); one kept costs a tuple of its names.
    RETAINED = 16

    def __init__(self, upstreams: Mapping[str, UpstreamInfo], handed_out: HandedOut | None = None) -> None:
        self._snapshot = Catalog.empty()
        self._names: tuple[str, ...] = ()
        self._digest = order_digest(self._names)
        self._recent: collections.OrderedDict[str, tuple[str, ...]] = collections.OrderedDict()
        self._upstreams = dict(upstreams)
        # who handed out which URI (gateway.handouts): kept across rebuilds, given to every snapshot
        self.handed_out = handed_out if handed_out is not None else HandedOut()
        self._snapshot.handed_out = self.handed_out

    @property
    def snapshot(self) -> Catalog:
        return self._snapshot

    @snapshot.setter
    def snapshot(self, new: Catalog) -> None:
        names = tuple(new.tools)
        digest = order_digest(names)
        self._recent[self._digest] = self._names
        self._recent.move_to_end(self._digest)
        # the current order is found as the current one (a rebuild that kept the order, or an
        # order served again): retained, it would push out another
        self._recent.pop(digest, None)
        while len(self._recent) > self.RETAINED:
            self._recent.popitem(last=False)
        new.handed_out = self.handed_out
        self._snapshot, self._names, self._digest = new, names, digest

    @property
    def digest(self) -> str:
        """The current snapshot's name: the digest of its ordered tool names, the same in every
        process that serves the same catalogue (replicas of one config)."""
        return self._digest

    def order(self, digest: str) -> tuple[str, ...] | None:
        """The tool names, in order, of the snapshot named ``digest``: the current one or a
        recently replaced one (None: not known here)."""
        if digest == self._digest:
            return self._names
        return self._recent.get(digest)

    def add_upstream(self, info: UpstreamInfo) -> None:
        self._upstreams[info.name] = info

    def remove_upstream(self, name: str) -> None:
        self._upstreams.pop(name, None)

    def upstream_info(self, name: str) -> UpstreamInfo:
        try:
            return self._upstreams[name]
        except KeyError:
            raise UpstreamUnavailable(f"upstream {name!r} is not configured") from None


def _named_tools(
    up: UpstreamListing, seen: dict[str, str], collided: set[str], refusals: list[Refusal]
) -> list[tuple[types.Tool, str]]:
    """``up``'s tools with their catalogue names; a name that cannot be made valid or that
    an earlier upstream's tool took is refused (``collided``: both sides are left out)."""
    out: list[tuple[types.Tool, str]] = []
    for t in up.tools:
        try:
            name = namespaced(up.name, t.name, up.pass_through)
        except CatalogError as e:
            refusals.append(Refusal(up.name, "tool", t.name, e.message))
            continue
        if name in seen:
            collided.add(name)
            refusals.append(
                Refusal(up.name, "tool", t.name, f"name {name!r} collides with a tool of {seen[name]!r}")
            )
            continue
        seen[name] = up.name
        out.append((t, name))
    return out


def _unchanged(prev: CatalogTool | None, up: UpstreamListing, t: types.Tool) -> bool:
    """``prev`` was made from this very listing entry (listed tools are never edited in place)."""
    return prev is not None and prev.source is t and prev.info.upstream == up.name


def _fresh_info(up: UpstreamListing, t: types.Tool, name: str, prev: CatalogTool | None) -> ToolInfo:
    definition = (
        prev.info.definition
        if prev is not None and _unchanged(prev, up, t)
        else t.model_dump(by_alias=True, mode="json", exclude_unset=True)
    )
    return ToolInfo(
        name=name,
        original_name=t.name,
        upstream=up.name,
        definition=definition,
        annotations=definition.get("annotations") or {},
    )


def _entry(
    up: UpstreamListing, t: types.Tool, name: str, given: ToolInfo | None, prev: CatalogTool | None
) -> CatalogTool:
    if given is not None and prev is not None and _unchanged(prev, up, t) and prev.info is given:
        return prev  # the same listing entry with the same verdict: the same client copy
    info = given or _fresh_info(up, t, name, prev)
    update: dict[str, Any] = {"name": name}
    if given is not None:
        meta = dict(t.meta or {})
        meta["symbi/verification"] = {
            "status": info.verification,
            "key_fingerprint": info.key_fingerprint,
            "definition_hash": info.definition_hash,
        }
        update["meta"] = meta
    return CatalogTool(info=info, tool=t.model_copy(update=update), source=t)


def _matches(tpl: UriTemplate, uri: str) -> bool:
    try:
        return tpl.match(uri) is not None
    except Exception:  # noqa: BLE001 - a template that cannot match is no match
        return False
