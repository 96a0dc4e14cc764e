"""``symbi schemapin pins approve`` approves the pending change the person reviewed, in-process
over a real SQLite pin store (gateway/cli/schemapin_cmd.py; the rule is
gateway.verify.approve.reviewed_pin_change). A key rotation or a re-signed definition is
pending until approved; an upstream can swap the pending change between ``pins show`` and the
approval (bait and switch), so the approval names the values read and nothing else is pinned.
``pins reject`` turns the reviewed change down by the same naming rules and keeps the pin; the
rejected change presented again is listed as rejected, not pending, until ``pins approve`` names it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from schemapin import PinStatus, PinStore

DOMAIN, TOOL = "acme.example", "create_issue"
FP_OLD, FP_BAIT, FP_SWITCH = ("sha256:" + c * 64 for c in "abc")
EXIT_OK, EXIT_INVALID = 0, 1


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def pins_cli(
    capsys: pytest.CaptureFixture[str], db: Path, action: str, *extra: str
) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(
        ["schemapin", "pins", action, "--pins", str(db), "--domain", DOMAIN, "--tool", TOOL, *extra, "--json"]
    )
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


def pinned(db: Path) -> tuple[Any, list[str]]:
    with PinStore(db) as store:
        return store.get(DOMAIN, TOOL), [e["action"] for e in store.history(DOMAIN, TOOL)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "pins.db"
    with PinStore(path) as store:
        assert store.check_and_pin(DOMAIN, TOOL, FP_OLD, h("v1"))[0] is PinStatus.FIRST_USE
    return path


def pend(db: Path, fp: str, definition: str) -> None:
    with PinStore(db) as store:
        assert store.check_and_pin(DOMAIN, TOOL, fp, h(definition))[0] is not PinStatus.PINNED


@pytest.mark.parametrize(
    ("fp", "definition", "given"),
    [
        (FP_BAIT, "v1", ()),  # a key rotation, nothing named
        (FP_BAIT, "v1", ("--definition-hash", h("v1"))),  # the hash named, not the new key
        (FP_OLD, "v2", ()),  # a re-signed definition, nothing named
        (FP_OLD, "v2", ("--fingerprint", FP_OLD)),  # the key named, not the new definition
        (FP_BAIT, "v2", ("--fingerprint", FP_BAIT)),  # both change, only the key named
    ],
    ids=["key", "key-hash-named", "definition", "definition-key-named", "both-key-named"],
)
def test_a_pending_change_not_named_is_refused_and_nothing_changes(
    db: Path, capsys: pytest.CaptureFixture[str], fp: str, definition: str, given: tuple[str, ...]
) -> None:
    pend(db, fp, definition)
    before = pinned(db)
    code, out = pins_cli(capsys, db, "approve", *given, "--actor", "sec")
    assert (code, out["error_code"]) == (EXIT_INVALID, "reviewed_hash_required")
    assert pinned(db) == before  # still the old pin, the change still pending, no approve event


@pytest.mark.parametrize("swap", [(FP_SWITCH, "v1"), (FP_BAIT, "v3")], ids=["key", "definition"])
def test_the_reviewed_change_swapped_since_is_refused_and_nothing_changes(
    db: Path, capsys: pytest.CaptureFixture[str], swap: tuple[str, str]
) -> None:
    pend(db, FP_BAIT, "v1")  # the key rotation the person reads with `pins show`
    code, shown = pins_cli(capsys, db, "show")
    assert code == EXIT_OK
    reviewed = ("--fingerprint", shown["pending_fingerprint"])
    pend(db, *swap)  # swapped in while they read: another key, or the same key and a new definition
    before = pinned(db)
    code, out = pins_cli(capsys, db, "approve", *reviewed, "--actor", "sec")
    assert code == EXIT_INVALID
    assert out["error_code"] == ("definition_changed" if swap[0] == FP_SWITCH else "reviewed_hash_required")
    # a definition pending as well now needs naming: the reviewed key alone does not approve it
    assert pinned(db) == before
    full = (*reviewed, "--definition-hash", h("v1"))  # both named, as reviewed: still not the pending
    assert pins_cli(capsys, db, "approve", *full)[1]["error_code"] == "definition_changed"
    assert pinned(db) == before


def test_the_pending_change_named_as_show_printed_it_is_approved(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pend(db, FP_BAIT, "v2")  # a new key and a new definition
    shown = pins_cli(capsys, db, "show")[1]
    assert (shown["pending_fingerprint"], shown["pending_definition_hash"]) == (FP_BAIT, h("v2"))  # full
    code, out = pins_cli(
        capsys,
        db,
        "approve",
        "--fingerprint",
        shown["pending_fingerprint"].upper(),  # case does not matter
        "--definition-hash",
        shown["pending_definition_hash"],
        "--actor",
        "sec",
    )
    assert code == EXIT_OK and (out["key_fingerprint"], out["definition_hash"]) == (FP_BAIT, h("v2"))
    pin, actions = pinned(db)
    assert pin.pending_fingerprint is None and actions[-1] == "approve"


def test_a_definition_change_needs_only_the_hash(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pend(db, FP_OLD, "v2")
    code, out = pins_cli(capsys, db, "approve", "--definition-hash", h("v2"))
    assert code == EXIT_OK and (out["key_fingerprint"], out["definition_hash"]) == (FP_OLD, h("v2"))


@pytest.mark.parametrize(
    "given",
    [
        ("--fingerprint", FP_BAIT[:40]),  # a prefix: the store holds full values
        ("--fingerprint", FP_BAIT[7:]),  # no sha256: scheme
        ("--definition-hash", h("v2")[:32]),
        ("--definition-hash", "z" * 64),
    ],
    ids=["fingerprint-prefix", "fingerprint-bare-hex", "hash-prefix", "hash-not-hex"],
)
def test_a_value_that_is_not_a_full_one_is_refused(
    db: Path, capsys: pytest.CaptureFixture[str], given: tuple[str, str]
) -> None:
    pend(db, FP_BAIT, "v2")
    before = pinned(db)
    code, out = pins_cli(capsys, db, "approve", *given)
    assert (code, out["error_code"]) == (EXIT_INVALID, "reviewed_hash_required")
    assert pinned(db) == before


def test_given_values_are_pinned_when_nothing_is_pending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "pins.db"
    code, out = pins_cli(capsys, db, "approve")  # no pin and nothing named: nothing to pin
    assert (code, out["error_code"]) == (EXIT_INVALID, "reviewed_hash_required")
    code, out = pins_cli(capsys, db, "approve", "--fingerprint", FP_OLD, "--definition-hash", h("v1"))
    assert code == EXIT_OK and (out["key_fingerprint"], out["definition_hash"]) == (FP_OLD, h("v1"))
    code, out = pins_cli(capsys, db, "approve", "--fingerprint", FP_BAIT)  # re-pin the key only
    assert code == EXIT_OK and (out["key_fingerprint"], out["definition_hash"]) == (FP_BAIT, h("v1"))


# -- pins reject: the reviewed pending change turned down, the pin kept ------------------------


def pins_cli_raw(capsys: pytest.CaptureFixture[str], db: Path, action: str, *extra: str) -> tuple[int, str]:
    """As ``pins_cli``, the whole output as text (stdout and stderr)."""
    capsys.readouterr()
    code = main(["schemapin", "pins", action, "--pins", str(db), "--domain", DOMAIN, "--tool", TOOL, *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(
    ("fp", "definition", "given"),
    [
        (FP_BAIT, "v1", ()),  # a key rotation, nothing named
        (FP_BAIT, "v1", ("--definition-hash", h("v1"))),  # the hash named, not the new key
        (FP_OLD, "v2", ("--fingerprint", FP_OLD)),  # the key named, not the new definition
        (FP_BAIT, "v2", ("--fingerprint", FP_BAIT)),  # both change, only the key named
        (FP_BAIT, "v2", ("--fingerprint", FP_BAIT[:40])),  # not a full value
    ],
    ids=["key", "key-hash-named", "definition-key-named", "both-key-named", "fingerprint-prefix"],
)
def test_a_rejection_not_naming_the_pending_change_is_refused_and_nothing_changes(
    db: Path, capsys: pytest.CaptureFixture[str], fp: str, definition: str, given: tuple[str, ...]
) -> None:
    pend(db, fp, definition)
    before = pinned(db)
    code, out = pins_cli(capsys, db, "reject", *given, "--actor", "sec")
    assert (code, out["error_code"]) == (EXIT_INVALID, "reviewed_hash_required")
    assert pinned(db) == before  # the change still pending (for a person to decide), no reject event


@pytest.mark.parametrize("swap", [(FP_SWITCH, "v1"), (FP_BAIT, "v3")], ids=["key", "definition"])
def test_a_rejection_of_a_change_swapped_since_the_review_is_refused_without_printing_it(
    db: Path, capsys: pytest.CaptureFixture[str], swap: tuple[str, str]
) -> None:
    pend(db, FP_BAIT, "v1")  # the rotation the person reads with `pins show`
    shown = pins_cli(capsys, db, "show")[1]
    reviewed = ("--fingerprint", shown["pending_fingerprint"], "--definition-hash", h("v1"))
    pend(db, *swap)  # swapped in while they read
    before = pinned(db)
    code, out = pins_cli(capsys, db, "reject", *reviewed, "--actor", "sec")
    assert (code, out["error_code"]) == (EXIT_INVALID, "definition_changed")
    assert pinned(db) == before  # the swapped-in change is still pending: nobody rejected it
    code, text = pins_cli_raw(capsys, db, "reject", *reviewed)
    assert code == EXIT_INVALID
    # never the pending value: copying it from the refusal would decide on a change unseen
    assert FP_SWITCH not in text and h("v3") not in text


def test_a_rejection_with_nothing_pending_is_refused(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = pinned(db)
    code, out = pins_cli(capsys, db, "reject", "--fingerprint", FP_BAIT)
    assert (code, out["error_code"]) == (EXIT_INVALID, "definition_changed")
    assert pinned(db) == before


@pytest.mark.parametrize(
    ("fp", "definition", "given"),
    [
        (FP_BAIT, "v1", lambda s: ("--fingerprint", s["pending_fingerprint"].upper())),
        (FP_OLD, "v2", lambda s: ("--definition-hash", s["pending_definition_hash"])),
        (
            FP_BAIT,
            "v2",
            lambda s: (
                "--fingerprint",
                s["pending_fingerprint"],
                "--definition-hash",
                s["pending_definition_hash"],
            ),
        ),
    ],
    ids=["key", "definition", "both"],
)
def test_the_pending_change_named_as_show_printed_it_is_rejected_and_stays_refused(
    db: Path, capsys: pytest.CaptureFixture[str], fp: str, definition: str, given: Any
) -> None:
    pend(db, fp, definition)
    shown = pins_cli(capsys, db, "show")[1]
    code, out = pins_cli(capsys, db, "reject", *given(shown), "--actor", "sec")
    assert code == EXIT_OK and (out["key_fingerprint"], out["definition_hash"]) == (FP_OLD, h("v1"))
    pin, actions = pinned(db)
    assert (pin.key_fingerprint, pin.definition_hash, pin.pending_fingerprint) == (FP_OLD, h("v1"), None)
    assert actions[-1] == "reject"
    with PinStore(db) as store:  # the upstream presents the rejected change again: refused, not pending
        assert store.check_and_pin(DOMAIN, TOOL, fp, h(definition))[0] is not PinStatus.PINNED
        again = store.get(DOMAIN, TOOL)
        assert again is not None and again.pending_fingerprint is None
        assert store.check_and_pin(DOMAIN, TOOL, FP_OLD, h("v1"))[0] is PinStatus.PINNED


def pins_list(capsys: pytest.CaptureFixture[str], db: Path) -> str:
    capsys.readouterr()
    assert main(["schemapin", "pins", "list", "--pins", str(db)]) == EXIT_OK
    return capsys.readouterr().out


def test_a_rejected_change_presented_again_is_listed_as_rejected_not_pending(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pins list`` is the review queue: the change a person rejected, presented again by the
    upstream, is marked rejected there, not pending (it was listed as a new pending change)."""
    pend(db, FP_BAIT, "v1")
    assert "PENDING CHANGE" in pins_list(capsys, db)
    assert pins_cli(capsys, db, "reject", "--fingerprint", FP_BAIT, "--actor", "sec")[0] == EXIT_OK
    pend(db, FP_BAIT, "v1")  # presented again: refused
    listed = pins_list(capsys, db)
    assert "REJECTED CHANGE" in listed and "PENDING CHANGE" not in listed
    pin, _ = pinned(db)
    assert (pin.pending_fingerprint, pin.rejected_fingerprint) == (None, FP_BAIT)


def test_pins_approve_naming_the_rejected_change_pins_it_even_with_another_pending(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pend(db, FP_BAIT, "v1")
    assert pins_cli(capsys, db, "reject", "--fingerprint", FP_BAIT, "--actor", "sec")[0] == EXIT_OK
    pend(db, FP_SWITCH, "v1")  # another rotation, pending review
    code, out = pins_cli(capsys, db, "approve", "--fingerprint", FP_BAIT, "--actor", "sec")
    assert code == EXIT_OK and (out["key_fingerprint"], out["rejected_fingerprint"]) == (FP_BAIT, None)
    pin, actions = pinned(db)
    assert (pin.key_fingerprint, pin.pending_fingerprint) == (FP_BAIT, None) and actions[-1] == "approve"
