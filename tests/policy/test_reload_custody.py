"""A hot-reloaded policy or data change is audited with the file's owner, digest and a diff
summary; a changed file that others could write is refused (gateway/custody.py)."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import threading
from typing import Any

import pytest

from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from tests.conftest import RecordingSink


def test_a_reloaded_change_is_audited_with_owner_digest_and_diff(policy_copy: PolicyFiles) -> None:
    sink = RecordingSink()
    eng = EmbeddedEngine(policy_copy, events=sink)
    assert eng.load()
    assert policy_copy.data is not None
    doc = json.loads(policy_copy.data.read_text())
    doc["symbi_data"]["principals"]["keys"]["ci-bot"]["tools"].append("everything__echo")
    policy_copy.data.write_text(json.dumps(doc, indent=1))
    assert eng.reload()
    details = next(d for t, d in sink.events if t == "policy.reloaded")
    (change,) = details["changes"]
    assert change["file"] == str(policy_copy.data)
    assert change["sha256"] == hashlib.sha256(policy_copy.data.read_bytes()).hexdigest()
    assert change["previous_sha256"] and change["previous_sha256"] != change["sha256"]
    assert change["owner"] == f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    assert change["lines_added"] > 0 and change["hunks"]


def test_a_reload_from_a_file_others_can_write_is_refused(policy_copy: PolicyFiles) -> None:
    sink = RecordingSink()
    eng = EmbeddedEngine(policy_copy, events=sink)
    assert eng.load()
    before = eng.bundle
    assert policy_copy.data is not None
    policy_copy.data.write_text(policy_copy.data.read_text() + "\n")
    policy_copy.data.chmod(0o666)
    assert not eng.reload()
    assert eng.bundle is before
    refused: dict[str, Any] = next(d for t, d in sink.events if t == "policy.reload_refused")
    assert str(policy_copy.data) in refused["error"] and refused["changes"]


def test_a_data_file_replaced_by_a_link_into_a_folder_others_can_write_is_refused(
    policy_copy: PolicyFiles, tmp_path_factory: Any
) -> None:
    """The data file became a link to a file of ours (0644) in a folder anyone can write: the
    file passed, the folder it sits in was never looked at, so whoever can write that folder
    could re-point the data at any JSON root owns (a permissive one) and have it reloaded."""
    sink = RecordingSink()
    eng = EmbeddedEngine(policy_copy, events=sink)
    assert eng.load()
    before = eng.bundle
    assert policy_copy.data is not None
    shared = tmp_path_factory.mktemp("shared")
    shared.chmod(0o777)  # not sticky: anyone may rename entries here
    target = shared / "data.json"
    target.write_text(policy_copy.data.read_text() + "\n")
    target.chmod(0o644)
    policy_copy.data.unlink()
    policy_copy.data.symlink_to(target)
    assert not eng.reload()
    assert eng.bundle is before
    refused: dict[str, Any] = next(d for t, d in sink.events if t == "policy.reload_refused")
    assert str(shared) in refused["error"]


@pytest.mark.parametrize("which", ["data", "test", "policy"])
def test_a_file_replaced_by_a_fifo_is_refused_without_waiting_on_it(
    policy_copy: PolicyFiles, which: str
) -> None:
    """A FIFO in place of the data file, a policy test or the policy: the reload read it
    (first for the record of what changed) and waited forever for a writer, holding the reload
    lock, so the watcher and every later reload (an admin's too) hung. Refused unread now,
    naming the file, and the policy in force stays."""
    sink = RecordingSink()
    eng = EmbeddedEngine(policy_copy, events=sink)
    assert eng.load()
    before = eng.bundle
    assert policy_copy.data is not None
    path = {"data": policy_copy.data, "test": policy_copy.tests[0], "policy": policy_copy.policy}[which]
    path.unlink()
    os.mkfifo(path, 0o600)
    outcome: list[bool] = []
    reloading = threading.Thread(target=lambda: outcome.append(eng.reload()), daemon=True)
    reloading.start()
    reloading.join(timeout=20)
    if reloading.is_alive():  # free the reader before failing: open for writing, then close
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError(f"the reload waited on the {which} FIFO")
    assert outcome == [False] and eng.bundle is before
    refused: dict[str, Any] = next(d for t, d in sink.events if t == "policy.reload_refused")
    assert str(path) in refused["error"]


def test_a_policy_file_that_is_a_fifo_at_start_denies_everything_without_waiting(
    policy_copy: PolicyFiles,
) -> None:
    policy_copy.policy.unlink()
    os.mkfifo(policy_copy.policy, 0o600)
    loaded: list[bool] = []
    loading = threading.Thread(target=lambda: loaded.append(EmbeddedEngine(policy_copy).load()), daemon=True)
    loading.start()
    loading.join(timeout=20)
    if loading.is_alive():
        os.close(os.open(policy_copy.policy, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError("the load waited on the FIFO")
    assert loaded == [False]
