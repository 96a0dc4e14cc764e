"""Approving a tool's current definition: shared by ``symbi tools`` and the admin API; and
approving or rejecting a SchemaPin pin's pending change (``symbi schemapin pins approve`` /
``reject``).

An approval names the hash of the definition the person reviewed (``symbi tools diff``, the
API's diff, the dashboard's tool page) and is refused when the current one differs: the
upstream can change its definition between the review and the approval (bait and switch).
A pin approval likewise names the pending key fingerprint and definition hash the person
read (``symbi schemapin pins show``), and is refused when the pending change differs; so is a
pin rejection, which clears the pending change and keeps the pinned key and definition. A
rejected change is then accepted only by a pin approval naming it, never by approving the tool.
"""

from __future__ import annotations

import contextlib
import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ApprovalError, DefinitionChanged, ReviewedHashRequired, ScreeningFlagged
from gateway.screen import Screening, screen_definition
from gateway.verify import MIN_HASH_HEX, hash_prefix
from gateway.verify.listed import is_listed, kind_of
from gateway.verify.state import ToolRecord, ToolStates
from schemapin import normalize_definition_hash, normalize_fingerprint  # as every pin store normalises them

if TYPE_CHECKING:
    from gateway.state.pins import PgPinStore
    from schemapin import Pin, PinStore


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


def _where(namespaced: str) -> str:
    return f"`symbi tools diff {namespaced}` (or GET /api/tools/{namespaced}/diff, current_hash)"


def reviewed_hash(given: str | None, namespaced: str) -> str:
    """``given`` normalised (lower case), or ``ReviewedHashRequired`` naming what is wrong.
    The messages never print the current hash: copying it from a refusal approves unseen."""
    if not given:
        raise ReviewedHashRequired(
            f"{namespaced}: an approval names the definition you reviewed: review it with "
            f'{_where(namespaced)} and pass its hash (--hash, or the body\'s "hash")'
        )
    h = hash_prefix(given)
    if h is None:
        raise ReviewedHashRequired(
            f"{namespaced}: the hash given ({given[:80]!r}) is not a definition hash: "
            f"{MIN_HASH_HEX} to 64 hex digits from {_where(namespaced)}"
        )
    return h


def check_reviewed(rec: ToolRecord, given: str | None) -> str:
    """The hash of ``rec``'s current definition when it is the one reviewed (``given``, a
    prefix of it); else ``DefinitionChanged``: the upstream changed it since the review."""
    from schemapin import definition_hash

    want = reviewed_hash(given, rec.namespaced)
    if rec.current_definition is None:
        raise DefinitionChanged(f"{rec.namespaced} has no current definition to approve")
    h = definition_hash(rec.current_definition)
    if not h.startswith(want):
        raise DefinitionChanged(
            f"{rec.namespaced}: its current definition is not the one you reviewed ({want[:16]}...): "
            f"the upstream changed it since; nothing approved, review it again with {_where(rec.namespaced)}"
        )
    return h


def _pin_where(domain: str, tool_id: str) -> str:
    return f"`symbi schemapin pins show --domain {domain} --tool {tool_id}`"


def _pin_value(given: str | None, option: str, field: str, where: str) -> str | None:
    """``given`` normalised (a full ``sha256:`` fingerprint, a full definition hash), None when
    not given, or ``ReviewedHashRequired``. Full values only: the pin store holds full ones."""
    if given is None:
        return None
    try:
        return normalize_fingerprint(given) if option == "--fingerprint" else normalize_definition_hash(given)
    except ValueError:
        raise ReviewedHashRequired(
            f"{option} {given[:80]!r} is not a full {field}: give it as {where} prints it"
        ) from None


def _pin_values(
    domain: str, tool_id: str, fingerprint: str | None, definition_hash: str | None
) -> tuple[str | None, str | None]:
    where = _pin_where(domain, tool_id)
    return (
        _pin_value(fingerprint, "--fingerprint", "key fingerprint (sha256:<64 hex>)", where),
        _pin_value(definition_hash, "--definition-hash", "definition hash (64 hex)", where),
    )


def reviewed_pin_change(
    pin: Pin | None, domain: str, tool_id: str, *, fingerprint: str | None, definition_hash: str | None
) -> tuple[str, str]:
    """The (key fingerprint, definition hash) to pin for ``tool_id@domain``: both explicit, so
    the store never fills one in with whatever is pending at the moment of the write.

    With a change pending, each part that changes (a new key, a new definition) must be named
    (``ReviewedHashRequired`` otherwise), and what is named must be the pending change
    (``DefinitionChanged`` otherwise: it was swapped since the review). A part not named is
    the pinned one. With nothing pending the given values are pinned (a pin's unnamed part
    stays); with no pin, both must be given. The change a person rejected is approved when
    named by the same rules (they changed their mind), even with another one pending since.
    The messages never print a pending value: copying it from a refusal approves unseen.
    """
    fp, h = _pin_values(domain, tool_id, fingerprint, definition_hash)
    if pin is None:
        if fp is None or h is None:
            raise ReviewedHashRequired(
                f"no pin for {tool_id}@{domain}: pinning one names both --fingerprint and --definition-hash"
            )
        return fp, h
    named = (fp or pin.key_fingerprint, h or pin.definition_hash)
    if (pin.pending_fingerprint is None and pin.pending_definition_hash is None) or pin.rejects(*named):
        return named
    return _named_pending(pin, domain, tool_id, fp, h, "an approval", "approved")


def reviewed_pin_rejection(
    pin: Pin | None, domain: str, tool_id: str, *, fingerprint: str | None, definition_hash: str | None
) -> tuple[str, str]:
    """The pending (key fingerprint, definition hash) of ``tool_id@domain`` the person turned
    down, by the rules of ``reviewed_pin_change``: each part that changes is named, and what is
    named is the pending change. A rejection always names something (``ReviewedHashRequired``)
    and needs a change pending (``DefinitionChanged``: none, e.g. approved or rejected since).
    """
    fp, h = _pin_values(domain, tool_id, fingerprint, definition_hash)
    if fp is None and h is None:
        raise ReviewedHashRequired(
            f"a rejection names the pending change you reviewed: read it with {_pin_where(domain, tool_id)} "
            "and pass --fingerprint and/or --definition-hash"
        )
    if pin is None or (pin.pending_fingerprint is None and pin.pending_definition_hash is None):
        raise DefinitionChanged(f"{tool_id}@{domain} has no pending change: nothing rejected")
    return _named_pending(pin, domain, tool_id, fp, h, "a rejection", "rejected")


def _named_pending(
    pin: Pin, domain: str, tool_id: str, fp: str | None, h: str | None, act: str, done: str
) -> tuple[str, str]:
    """``pin``'s pending (key, definition) when ``fp`` / ``h`` name it (an unnamed part: the
    pinned one), else ``ReviewedHashRequired`` (a changing part unnamed) or ``DefinitionChanged``."""
    where = _pin_where(domain, tool_id)
    pending = (
        pin.pending_fingerprint or pin.key_fingerprint,
        pin.pending_definition_hash or pin.definition_hash,
    )
    missing = [
        f"{option} (its {field})"
        for option, field, given, changes in (
            ("--fingerprint", "pending_fingerprint", fp, pending[0] != pin.key_fingerprint),
            ("--definition-hash", "pending_definition_hash", h, pending[1] != pin.definition_hash),
        )
        if changes and given is None
    ]
    if missing:
        raise ReviewedHashRequired(
            f"{tool_id}@{domain} has a pending change: {act} names what you reviewed: "
            f"read it with {where} and pass {' and '.join(missing)}"
        )
    if (fp or pin.key_fingerprint, h or pin.definition_hash) != pending:
        raise DefinitionChanged(
            f"{tool_id}@{domain}: the pending change is not the one you named: it changed since "
            f"your review; nothing {done}, read it again with {where}"
        )
    return pending


def reject_pin_change(
    store: PinStore | PgPinStore,
    domain: str,
    tool_id: str,
    *,
    fingerprint: str | None,
    definition_hash: str | None,
    actor: str | None,
) -> Pin:
    """Turn down the pending change of ``tool_id@domain`` the person reviewed (named as for
    ``reviewed_pin_rejection``): cleared, the pin kept, a ``reject`` event recorded. Returns
    the pin. The upstream still presenting it is still refused, and not pending review again
    (the store remembers the rejection: ``schemapin.PinStore.reject``)."""
    fp, h = reviewed_pin_rejection(
        store.get(domain, tool_id), domain, tool_id, fingerprint=fingerprint, definition_hash=definition_hash
    )
    # the store clears it only if it is still the change checked here: one swapped in since the
    # read is not cleared (nor recorded as rejected) under a name nobody gave it
    pin = store.reject(domain, tool_id, key_fingerprint=fp, definition_hash=h, actor=actor)
    if pin is None:
        raise DefinitionChanged(
            f"{tool_id}@{domain}: the pending change is not the one you named: it changed since "
            f"your review; nothing rejected, read it again with {_pin_where(domain, tool_id)}"
        )
    return pin


def _pretty(d: Any) -> list[str]:
    return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False).splitlines(keepends=True)


def drift_diff(rec: ToolRecord) -> str:
    """Unified diff of the approved against the current definition; a tool never approved
    (pending) is all new lines. "" when nothing differs from the approved definition."""
    if rec.current_definition is None or not (rec.drifted or rec.approved_hash is None):
        return ""
    if rec.approved_hash is None:
        approved, since = [], "nothing approved"
    else:
        approved, since = _pretty(rec.approved_definition), f"approved {rec.approved_hash[:12]}"
    return "".join(
        difflib.unified_diff(
            approved,
            _pretty(rec.current_definition),
            fromfile=f"{rec.namespaced} ({since})",
            tofile=f"{rec.namespaced} (current {str(rec.current_hash)[:12]})",
        )
    )


def _rejects(pin: Pin | None, rec: ToolRecord, signed: str) -> bool:
    """Whether approving ``rec`` (its definition hashed to ``signed``) would move ``pin`` to the
    change a person rejected (``pins reject``)."""
    key = normalize_fingerprint(rec.key_fingerprint) if rec.key_fingerprint else None
    return pin is not None and pin.rejects(key or pin.key_fingerprint, signed)


def _refuse_rejected(pin: Pin | None, rec: ToolRecord, signed: str, domain: str) -> None:
    """``ApprovalError`` (409) when approving ``rec`` would move ``pin`` to the change a person
    rejected (``pins reject``): a tool approval, from a diff that shows a definition, never
    overrides that decision; ``pins approve`` naming the change does."""
    if not _rejects(pin, rec, signed):
        return
    raise ApprovalError(
        f"{rec.namespaced}: this change to the SchemaPin pin of {rec.name}@{domain} was rejected "
        "(`symbi schemapin pins reject`): nothing approved; to accept it after all, "
        f"`symbi schemapin pins approve` naming it (read it with {_pin_where(domain, rec.name)})",
        409,
    )


@contextlib.contextmanager
def _pin_store(pins: Path | PinStore | PgPinStore) -> Iterator[PinStore | PgPinStore]:
    """An open pin store: ``pins`` itself, or the data dir's file opened for the block."""
    from schemapin import PinStore

    if not isinstance(pins, Path):
        yield pins
        return
    with PinStore(pins) as opened:
        yield opened


def _pin_moves_to(pin: Pin | None, rec: ToolRecord) -> str | None:
    """The key ``approve_current`` moves ``pin`` to with ``rec``'s definition: the one the
    reviewed record names (a key change pending since, a rotation no one reviewed, is not
    accepted with it); None when it moves no pin (none, or no change pending)."""
    if pin is None or not (pin.pending_fingerprint or pin.pending_definition_hash):
        return None
    return normalize_fingerprint(rec.key_fingerprint) if rec.key_fingerprint else pin.key_fingerprint


@dataclass(frozen=True)
class PinReview:
    """What approving a tool's current definition would do to its SchemaPin pin, shown with its
    diff (``symbi tools diff``, the API's diff, the dashboard), from one read of the pin."""

    # (the pinned key, the key that signed the definition) when the approval would move the
    # pin to another key (a rotation: the approval accepts the key too); None when it would not
    key_change: tuple[str, str] | None = None
    # the change is the one a person rejected (``pins reject``): approving the tool is refused
    rejected: bool = False


def pin_review(pins: Path | PinStore | PgPinStore, rec: ToolRecord, domain: str | None) -> PinReview:
    """``PinReview`` of approving ``rec``'s current definition (no domain: no pin, nothing)."""
    from schemapin import definition_hash, split_carrier

    if not domain:
        return PinReview()
    with _pin_store(pins) as opened:
        pin = opened.get(domain, rec.name)
    if pin is None:
        return PinReview()
    rejected = rec.current_definition is not None and _rejects(
        pin, rec, definition_hash(split_carrier(rec.current_definition)[0])
    )
    key = _pin_moves_to(pin, rec)
    moved = None if key is None or key == pin.key_fingerprint else (pin.key_fingerprint, key)
    return PinReview(moved, rejected)


def approve_current(
    store: ToolStates,
    pins: Path | PinStore | PgPinStore,
    rec: ToolRecord,
    *,
    reviewed: str | None,
    domain: str | None,
    actor: str | None,
) -> str:
    """Make the current definition the approved one (and move its SchemaPin pin to it, with the
    key the reviewed record names), if it is the one reviewed (``reviewed``: its hash or a
    prefix, ``check_reviewed``).

    ``pins``: an open pin store (the data dir's or PostgreSQL's), or the data dir's file.
    Returns the approved definition hash. Signing into a manifest is the caller's job.
    """
    from schemapin import PinStoreError, definition_hash, split_carrier

    h = check_reviewed(rec, reviewed)
    assert rec.current_definition is not None  # check_reviewed refuses a record without one
    if domain:
        # the pin moves first: a pin store that cannot be written refuses the approval whole
        # (approved in the tool state alone, the tool stayed blocked by its pin, unexplained).
        # It moves to the reviewed definition (the signed part: without _meta), not to
        # whatever is pending by now: the verifier records a change in the pins before the
        # tool state, so a switch can be pending there while the state still shows the bait
        signed = definition_hash(split_carrier(rec.current_definition)[0])
        try:
            with _pin_store(pins) as opened:
                pin = opened.get(domain, rec.name)
                _refuse_rejected(pin, rec, signed, domain)
                key = _pin_moves_to(pin, rec)
                if key is not None:
                    opened.approve(
                        domain, rec.name, key_fingerprint=key, definition_hash=signed, actor=actor or "symbi"
                    )
        except PinStoreError as e:
            raise ApprovalError(
                f"the SchemaPin pin of {rec.name}@{domain} cannot be moved ({e.message}): nothing approved",
                503,
            ) from None
    # the definition of ``rec`` as read, whose hash was checked; never the row as it is now
    store.approve(rec.upstream, rec.name, h, rec.current_definition)
    return h
