"""The signing key on disk: created 0600, exported, refused when others can read it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.audit import AuditLog, exported_public_keys
from gateway.audit.keys import load_private_key, public_key_path
from gateway.errors import AuditError


def test_first_start_creates_key_0600_and_exports_public_key(log_paths: tuple[Path, Path]) -> None:
    log = AuditLog(*log_paths)
    try:
        key_path = log_paths[1]
        assert key_path.stat().st_mode & 0o777 == 0o600
        assert public_key_path(key_path).name == "audit-key.pub.pem"
        assert list(exported_public_keys(key_path)) == [log.key_id]
    finally:
        log.close()


def test_group_readable_key_is_refused(log_paths: tuple[Path, Path]) -> None:
    AuditLog(*log_paths).close()
    os.chmod(log_paths[1], 0o640)
    with pytest.raises(AuditError):
        load_private_key(log_paths[1])
    with pytest.raises(AuditError):
        AuditLog(*log_paths)


def test_a_different_key_cannot_continue_the_chain(log_paths: tuple[Path, Path]) -> None:
    log = AuditLog(*log_paths)
    log.append("x", {})
    log.close()
    log_paths[1].unlink()  # a fresh key would be generated: the log's head names the old one
    with pytest.raises(AuditError):
        AuditLog(*log_paths)


def test_one_writer_per_log(log_paths: tuple[Path, Path]) -> None:
    log = AuditLog(*log_paths)
    try:
        with pytest.raises(AuditError):
            AuditLog(*log_paths)
    finally:
        log.close()


def test_the_signing_key_is_never_written_through_a_link_planted_at_a_temporary_name(
    log_paths: tuple[Path, Path],
) -> None:
    """Attack: a symlink planted at ``.audit-key.pem.tmp<pid>`` (the name the key was written
    under) took the new private key into a file of the planter's choosing."""
    key_path = log_paths[1]
    key_path.parent.mkdir(parents=True, exist_ok=True)
    catch = key_path.parent.parent / "caught.pem"
    catch.write_text("")
    os.symlink(catch, key_path.with_name(f".{key_path.name}.tmp{os.getpid()}"))
    AuditLog(*log_paths).close()
    assert catch.read_text() == "" and not key_path.is_symlink()
    load_private_key(key_path)
