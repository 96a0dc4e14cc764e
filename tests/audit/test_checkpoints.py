"""The checkpoint file (and export) are written off the writer thread: a commit never waits for
their fsync, the newest anchor is the one kept, a flush or close returns with it written, and a
failed write is logged while the log goes on (the in-database anchor covers the same head)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit import AuditLog, checkpoints, exported_public_keys, store, verify_log
from tests.audit.conftest import LogPaths


def test_a_flush_returns_with_the_newest_anchor_in_the_file_and_the_export(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, tmp_path: Path
) -> None:
    db, key = log_paths
    export = tmp_path / "witness" / "checkpoints.jsonl"
    log = open_log(checkpoint_every=5, checkpoint_export=export)
    for i in range(1, 13):
        log.append("tool.call", {"n": i})
    log.flush()
    anchor = store.read_checkpoint_file(store.checkpoint_path(db))
    assert anchor is not None and anchor.seq == 10  # the last batch that crossed a multiple of 5
    exported = store.read_exported(export, db.name)
    assert (
        exported and exported[-1] == anchor and [a.seq for a in exported] == sorted(a.seq for a in exported)
    )
    log.close()
    final = store.read_checkpoint_file(store.checkpoint_path(db))
    assert final is not None and final.seq == 12  # close writes the head's
    verify_log(db, exported_public_keys(key), extra_anchors=store.read_exported(export, db.name)).check()


def test_a_commit_does_not_wait_for_the_checkpoint_file(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's write is held until the test lets it go: commits are acknowledged meanwhile."""
    db, _ = log_paths
    release, started = threading.Event(), threading.Event()
    real = checkpoints.write_files

    def held(log_path: Path, export: Path | None, anchor: store.Anchor) -> None:
        started.set()
        assert release.wait(60)
        real(log_path, export, anchor)

    monkeypatch.setattr(checkpoints, "write_files", held)
    log = open_log(checkpoint_every=2)
    assert log.append("tool.call", {"n": 1}) == 1
    assert log.append("tool.call", {"n": 2}) == 2  # hands anchor 2 over
    assert started.wait(60)
    for i in range(3, 8):  # committed and acknowledged while anchor 2's write is held
        assert log.append("tool.call", {"n": i}) == i
    assert store.read_checkpoint_file(store.checkpoint_path(db)) is None
    release.set()
    log.flush()
    anchor = store.read_checkpoint_file(store.checkpoint_path(db))
    assert anchor is not None and anchor.seq == 6  # 4 was replaced by 6 while 2 was held


def test_a_failed_checkpoint_write_is_logged_and_the_log_goes_on(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, caplog: pytest.LogCaptureFixture
) -> None:
    db, key = log_paths
    log = open_log(checkpoint_every=2)
    store.checkpoint_path(db).mkdir()  # the file cannot be replaced: a directory holds its name
    for i in range(1, 6):
        assert log.append("tool.call", {"n": i}) == i
    log.flush()
    assert any("checkpoint file not written" in r.getMessage() for r in caplog.records)
    store.checkpoint_path(db).rmdir()
    log.close()
    anchor = store.read_checkpoint_file(store.checkpoint_path(db))
    assert anchor is not None and anchor.seq == 5
    assert verify_log(db, exported_public_keys(key)).check().last_seq == 5
