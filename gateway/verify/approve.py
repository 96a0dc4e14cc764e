"""Approving a tool's current definition: shared by ``symbi tools`` and the admin API."""

from __future__ import annotations

import contextlib
import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ScreeningFlagged
from gateway.screen import Screening, screen_definition
from gateway.verify.listed import is_listed, kind_of
from gateway.verify.state import ToolRecord, ToolStates

if TYPE_CHECKING:
    from gateway.state.pins import PgPinStore
    from schemapin import PinStore


def screen_record(store: ToolStates, rec: ToolRecord) -> Screening:
    """Screen a recorded tool's current definition against the other upstreams' tools."""
    if rec.current_definition is None:
        return Screening()
    others = {r.namespaced for r in store.all() if r.upstream != rec.upstream}
    others |= {r.name for r in store.all() if r.upstream != rec.upstream}
    kind = kind_of(rec.namespaced) or "tool"
    return screen_definition(
        "resource" if kind == "template" else kind, rec.current_definition, others=others
    )


def unsigned_under_strict(mode: str, has_manifest: bool, rec: ToolRecord) -> str | None:
    """Why approving ``rec`` here would change nothing, or None. Under strict a tool passes on a
    verified signature only: a recorded approval admits an unsigned tool nowhere, so saying
    "approved" would leave it blocked while the person thinks it is callable."""
    if mode != "strict" or has_manifest or rec.key_fingerprint is not None or is_listed(rec.namespaced):
        return None  # prompts, resources and templates: strict pins them as tofu does
    return (
        f"{rec.namespaced}: upstream {rec.upstream!r} is strict and its tools are unsigned: approving "
        f"means signing with an organisation key; set servers.{rec.upstream}.approved = FILE.json and "
        "run `symbi tools approve --key ORG_PRIV.pem` (key listed in mcp.org_keys), or choose "
        f'servers.{rec.upstream}.verification = "tofu"'
    )


def check_screening(store: ToolStates, rec: ToolRecord, *, accept: bool) -> Screening:
    """A definition is screened again before it can be approved: high findings need
    ``accept`` (``--accept-screening``), a person's explicit word."""
    result = screen_record(store, rec)
    high = result.at_least("high")
    if high and not accept:
        raise ScreeningFlagged(
            f"{rec.namespaced}: screening found {len(high)} high-severity finding(s); approve with "
            "--accept-screening only after reading them",
            reasons=[f"{f.rule} {f.field}: {f.summary}: {f.excerpt}" for f in high],
        )
    return result


def _pretty(d: Any) -> list[str]:
    return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False).splitlines(keepends=True)


def drift_diff(rec: ToolRecord) -> str:
    """Unified diff of the approved against the current definition ("" when not drifted)."""
    if not rec.drifted:
        return ""
    return "".join(
        difflib.unified_diff(
            _pretty(rec.approved_definition),
            _pretty(rec.current_definition),
            fromfile=f"{rec.namespaced} (approved {str(rec.approved_hash)[:12]})",
            tofile=f"{rec.namespaced} (current {str(rec.current_hash)[:12]})",
        )
    )


def approve_current(
    store: ToolStates,
    pins: Path | PinStore | PgPinStore,
    rec: ToolRecord,
    *,
    domain: str | None,
    actor: str | None,
) -> str:
    """Make the current definition the approved one (and accept a pending SchemaPin pin change).

    ``pins``: an open pin store (the data dir's or PostgreSQL's), or the data dir's file.
    Returns the approved definition hash. Signing into a manifest is the caller's job.
    """
    from schemapin import PinStore, PinStoreError, definition_hash

    if rec.current_definition is None:
        raise ValueError(f"{rec.namespaced} has no current definition to approve")
    h = definition_hash(rec.current_definition)
    store.approve(rec.upstream, rec.name, h, rec.current_definition)
    if domain:
        with contextlib.ExitStack() as stack:
            opened = stack.enter_context(PinStore(pins)) if isinstance(pins, Path) else pins
            pin = opened.get(domain, rec.name)
            if pin is not None and (pin.pending_fingerprint or pin.pending_definition_hash):
                try:
                    opened.approve(domain, rec.name, actor=actor or "symbi")
                except PinStoreError:
                    pass  # nothing pending any more: the current pin stands
    return h
