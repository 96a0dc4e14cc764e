"""``symbi scan``: start the configured upstreams, screen every tool, resource and prompt
definition they offer, and report (the same screening the catalogue applies on refresh)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gateway.config.model import Config
from gateway.screen.screener import Finding, Kind, Screener


@dataclass(frozen=True)
class ScanEntry:
    kind: Kind
    name: str  # as the gateway lists it (namespaced) or the resource URI
    upstream: str
    findings: tuple[Finding, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "upstream": self.upstream,
            "findings": [f.as_dict() for f in self.findings],
        }


async def scan_configured(config: Config, only: Collection[str] = ()) -> tuple[list[ScanEntry], list[str]]:
    """Every definition of the configured upstreams (or ``only`` those), screened.
    Returns the entries and the upstreams that did not come up."""
    from gateway.assemble import make_gateway

    wanted = set(only) or set(config.servers)
    entries: list[ScanEntry] = []
    screener = Screener()
    async with make_gateway(config).running() as gw:
        cat = gw.catalog
        names_by_upstream: dict[str, set[str]] = {}
        for t in cat.tools.values():
            names_by_upstream.setdefault(t.info.upstream, set()).update({t.info.name, t.info.original_name})

        every = set().union(*names_by_upstream.values()) if names_by_upstream else set()
        others_of: dict[str, frozenset[str]] = {}

        def others(upstream: str) -> frozenset[str]:
            if upstream not in others_of:
                others_of[upstream] = frozenset(every - names_by_upstream.get(upstream, set()))
            return others_of[upstream]

        for name, t in sorted(cat.tools.items()):
            if t.info.upstream in wanted:
                s = screener.screen("tool", t.info.definition, others(t.info.upstream))
                entries.append(ScanEntry("tool", name, t.info.upstream, s.findings))
        for uri, (up, res) in sorted(cat.resources.items()):
            if up in wanted:
                d = res.model_dump(mode="json", by_alias=True, exclude_none=True)
                entries.append(
                    ScanEntry("resource", uri, up, screener.screen("resource", d, others(up)).findings)
                )
        for up, tpl, _ in cat.templates:
            if up in wanted:
                d = tpl.model_dump(mode="json", by_alias=True, exclude_none=True)
                entries.append(
                    ScanEntry(
                        "resource", tpl.uri_template, up, screener.screen("resource", d, others(up)).findings
                    )
                )
        for name, p in sorted(cat.prompts.items()):
            if p.upstream in wanted:
                d = p.prompt.model_dump(mode="json", by_alias=True, exclude_none=True)
                d["name"] = p.original_name
                entries.append(
                    ScanEntry(
                        "prompt", name, p.upstream, screener.screen("prompt", d, others(p.upstream)).findings
                    )
                )
        down = sorted(n for n, u in gw.upstreams.items() if n in wanted and u.state != "up")
    return entries, down
