"""The SQLite pin store: permissions, persistence, explicit approval, audit trail."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from schemapin import PinStatus, PinStore, PinStoreError

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
H1, H2 = "1" * 64, "2" * 64


def test_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "pins.db"
    PinStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    PinStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_persistence_and_normalised_domain(tmp_path: Path) -> None:
    with PinStore(tmp_path / "p.db") as s:
        assert (
            s.check_and_pin("Bücher.Example.", "t", FP_A.upper().replace("SHA256", "sha256"), H1)[0]
            is PinStatus.FIRST_USE
        )
    with PinStore(tmp_path / "p.db") as s:
        status, pin = s.check_and_pin("xn--bcher-kva.example", "t", FP_A, H1)
        assert status is PinStatus.PINNED
        assert pin.domain == "xn--bcher-kva.example" and pin.key_fingerprint == FP_A
        assert [p.tool_id for p in s.pins()] == ["t"]


def test_changes_are_pending_until_approved(tmp_path: Path) -> None:
    with PinStore(tmp_path / "p.db") as s:
        s.check_and_pin("d.example", "t", FP_A, H1)
        assert s.check_and_pin("d.example", "t", FP_B, H1)[0] is PinStatus.KEY_CHANGED
        assert s.check_and_pin("d.example", "t", FP_A, H2)[0] is PinStatus.DEFINITION_CHANGED
        pin = s.get("d.example", "t")
        assert pin is not None and pin.key_fingerprint == FP_A and pin.pending_definition_hash == H2
        s.approve("d.example", "t", key_fingerprint=FP_A, definition_hash=H2, actor="alice")
        assert s.check_and_pin("d.example", "t", FP_A, H2)[0] is PinStatus.PINNED
        assert s.history("d.example", "t")[-1]["actor"] == "alice"


def test_approve_explicit_values_and_remove(tmp_path: Path) -> None:
    with PinStore(tmp_path / "p.db") as s:
        pin = s.approve("d.example", "t", key_fingerprint=FP_B, definition_hash=H2, actor="bob")
        assert pin.key_fingerprint == FP_B
        assert s.remove("d.example", "t", actor="bob") is True
        assert s.remove("d.example", "t") is False
        assert s.get("d.example", "t") is None
        with pytest.raises(ValueError):
            s.check_and_pin("d.example", "t", "sha256:nothex", H1)


def test_unwritable_store_fails_closed(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir()
    (d / "pins.db").write_bytes(b"this is not a sqlite database" * 10)
    with pytest.raises(PinStoreError) as e:
        s = PinStore(d / "pins.db")
        s.check_and_pin("d.example", "t", FP_A, H1)
    assert e.value.code == "pin_store_error"


def test_concurrent_first_use_pins_once(tmp_path: Path) -> None:
    """Many stores (as in several gateway workers) racing on one file: one first use, no lost pin."""
    import threading

    path = tmp_path / "p.db"
    PinStore(path).close()
    results: list[PinStatus] = []
    lock = threading.Lock()

    def worker(fp: str) -> None:
        with PinStore(path) as s:
            status, _ = s.check_and_pin("race.example", "t", fp, H1)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=worker, args=(FP_A if i % 2 else FP_B,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(PinStatus.FIRST_USE) == 1
    with PinStore(path) as s:
        pin = s.get("race.example", "t")
    assert pin is not None
    winner = pin.key_fingerprint
    loser_status = [st for st in results if st is not PinStatus.FIRST_USE]
    assert all(st in (PinStatus.PINNED, PinStatus.KEY_CHANGED) for st in loser_status)
    assert loser_status.count(PinStatus.PINNED) == 3 and winner in (FP_A, FP_B)
