"""Screening on every catalogue refresh: each upstream tool, resource, template and prompt
screened (cached by definition), the tools' results attached for the policy
(``input.tool.screening``), and new findings of medium or high severity on the record once per
definition (``tool.screening``)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from gateway.context import ToolInfo
from gateway.events import Event, EventSink, record_acted
from gateway.screen.screener import Kind, Screener, Screening

if TYPE_CHECKING:  # annotations only: `symbi tools approve` imports this (via the verifier) without the SDK
    from mcp import types


# What screening reads of a catalogue (``gateway.catalog.Catalog`` has it): structural, so
# verification and screening need not import the catalogue that is built from their verdicts.
class _ListedTool(Protocol):
    @property
    def info(self) -> ToolInfo: ...


class _ListedPrompt(Protocol):
    @property
    def upstream(self) -> str: ...
    @property
    def original_name(self) -> str: ...
    @property
    def prompt(self) -> types.Prompt: ...


class Listings(Protocol):
    @property
    def tools(self) -> Mapping[str, _ListedTool]: ...
    @property
    def resources(self) -> Mapping[str, tuple[str, types.Resource]]: ...
    @property
    def templates(self) -> Sequence[tuple[str, types.ResourceTemplate, object]]: ...
    @property
    def prompts(self) -> Mapping[str, _ListedPrompt]: ...


_logger = logging.getLogger("symbi.screen")


class RefreshScreening:
    def __init__(self, events: EventSink) -> None:
        self._events = events
        self._screener = Screener()
        # what -> definition hash whose findings were recorded (or refused)
        self._screened: dict[str, str | None] = {}
        self._every: frozenset[str] = frozenset()
        self._others: dict[str, tuple[frozenset[str], frozenset[str]]] = {}  # upstream -> (own, others)

    def tools(
        self, infos: dict[str, ToolInfo], builtins: Collection[str], accepted: Mapping[str, str]
    ) -> dict[str, ToolInfo]:
        """Every upstream tool screened for poisoning (cached by definition); ``accepted``: the
        definition hash a person accepted the findings of, per tool. New findings of medium or
        high severity are recorded once per definition."""
        names_by_upstream: dict[str, set[str]] = defaultdict(set)
        for t in infos.values():
            names_by_upstream[t.upstream] |= {t.name, t.original_name}
        others_of = self._others_sets(names_by_upstream)
        out: dict[str, ToolInfo] = {}
        for name, info in infos.items():
            if info.upstream in builtins:
                out[name] = info
                continue
            others = others_of[info.upstream]
            result = self._screener.screen(
                "tool", info.definition, others, definition_hash=info.definition_hash
            )
            if not result.findings:  # most tools: nothing to attach (a ToolInfo copy costs more)
                out[name] = info if not info.screening.findings else replace(info, screening=result)
                self._screened[name] = None
                continue
            if accepted.get(name) == info.definition_hash:
                result = replace(result, accepted=True)
            out[name] = info if info.screening == result else replace(info, screening=result)
            flagged = result.at_least("medium")
            if flagged and self._screened.get(name) != info.definition_hash:
                # refused: logged once there, not tried at each rebuild (``refused_for_good``)
                record_acted(
                    self._events,
                    Event.TOOL_SCREENING,
                    {
                        "tool": name,
                        "upstream": info.upstream,
                        "highest": result.highest,
                        "definition_hash": info.definition_hash,
                        "findings": [
                            {"rule": f.rule, "severity": f.severity, "field": f.field} for f in flagged
                        ],
                    },
                )
                _logger.warning(
                    "tool %s: screening found %s", name, ", ".join(f"{f.rule}({f.severity})" for f in flagged)
                )
            self._screened[name] = info.definition_hash if flagged else None
        return out

    def _others_sets(self, names_by_upstream: Mapping[str, set[str]]) -> dict[str, frozenset[str]]:
        """Per upstream, the other upstreams' tool names (shadowing, homoglyphs). Kept between
        refreshes while every name is the same: the same frozenset objects (their hash cached)
        key the screener's cache, and 50 upstreams x 2,000 names are not rebuilt each time."""
        every = frozenset().union(*names_by_upstream.values())
        if every != self._every:
            self._every, self._others = every, {}
        out: dict[str, frozenset[str]] = {}
        for up, names in names_by_upstream.items():
            own = frozenset(names)
            kept = self._others.get(up)
            if kept is None or kept[0] != own:
                kept = self._others[up] = (own, every - own)
            out[up] = kept[1]
        return out

    def listings(self, catalog: Listings, builtins: Collection[str]) -> dict[str, Screening]:
        """Resources, resource templates and prompts screened on every refresh, as tools are
        (cached by definition): findings of medium or high severity are on the record once per
        definition. Returns the findings by ``kind:name`` (``symbi scan`` shows them too)."""
        entries: list[tuple[Kind, str, str, dict[str, Any]]] = []
        for uri, (up, res) in catalog.resources.items():
            entries.append(
                ("resource", uri, up, res.model_dump(mode="json", by_alias=True, exclude_none=True))
            )
        for up, tpl, _ in catalog.templates:
            d = tpl.model_dump(mode="json", by_alias=True, exclude_none=True)
            entries.append(("resource", tpl.uri_template, up, d))
        for name, p in catalog.prompts.items():
            d = p.prompt.model_dump(mode="json", by_alias=True, exclude_none=True)
            entries.append(("prompt", name, p.upstream, {**d, "name": p.original_name}))
        own: dict[str, set[str]] = defaultdict(set)
        for t in catalog.tools.values():
            own[t.info.upstream] |= {t.info.name, t.info.original_name}
        others_of = self._others_sets(own)  # the sets tools() built, when the names are the same
        out: dict[str, Screening] = {}
        for kind, name, up, d in entries:
            if up in builtins:
                continue
            others = others_of.get(up, self._every)  # an upstream without tools: every tool is another's
            digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
            result = self._screener.screen(kind, d, others, definition_hash=digest)
            key = f"{kind}:{name}"
            out[key] = result
            flagged = result.at_least("medium")
            if flagged and self._screened.get(key) != digest:
                record_acted(  # refused: logged once there, not tried again (``refused_for_good``)
                    self._events,
                    Event.TOOL_SCREENING,
                    {
                        "kind": kind,
                        "name": name,
                        "upstream": up,
                        "highest": result.highest,
                        "findings": [
                            {"rule": f.rule, "severity": f.severity, "field": f.field} for f in flagged
                        ],
                    },
                )
                _logger.warning(
                    "%s %s: screening found %s",
                    kind,
                    name,
                    ", ".join(f"{f.rule}({f.severity})" for f in flagged),
                )
            self._screened[key] = digest if flagged else None
        return out
