"""Hot reload: a good edit takes effect without restart; a broken one is refused, the old
policy stays in force, and an event says which happened."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from tests.policy.conftest import RecordingSink

CI_BOT_ECHO: dict[str, Any] = {
    "action": "call",
    "kind": "tools/call",
    "target": "everything__echo",
    "principal": {"id": "ci-bot", "kind": "service", "roles": [], "claims": {}, "source": "key"},
    "agent": None,
    "upstream": {"name": "everything", "domain": None, "transport": "stdio"},
    "tool": {
        "name": "everything__echo",
        "original_name": "echo",
        "upstream": "everything",
        "annotations": {},
        "verification": "unverified",
        "key_fingerprint": None,
        "code_tool": False,
    },
    "arguments": {"message": "hi"},
    "context": {
        "time": "2026-11-26T10:00:00Z",
        "unix": 0,
        "session_id": None,
        "calls_last_minute": 0,
        "calls_last_hour": 0,
    },
}


def eventually(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll until pred() holds (bounded; this is not a timing assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def bump(path: os.PathLike[str]) -> None:
    # make sure the mtime moves even on filesystems with coarse timestamps
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def watched(policy_copy: PolicyFiles) -> Any:
    sink = RecordingSink()
    eng = EmbeddedEngine(policy_copy, events=sink)
    assert eng.load()
    eng.start_watching(interval_s=0.1)
    yield eng, sink, policy_copy
    eng.close()


def grant_echo_to_ci_bot(files: PolicyFiles) -> None:
    assert files.data is not None
    data = json.loads(files.data.read_text())
    data["symbi_data"]["principals"]["keys"]["ci-bot"]["tools"].append("everything__echo")
    files.data.write_text(json.dumps(data))
    bump(files.data)


def test_good_data_change_applies_without_restart(watched: Any) -> None:
    eng, sink, files = watched
    assert eng.decide(CI_BOT_ECHO).allow is False
    grant_echo_to_ci_bot(files)
    assert eventually(lambda: eng.decide(CI_BOT_ECHO).allow)
    assert "policy.reloaded" in sink.types()


def test_good_policy_change_applies(watched: Any) -> None:
    eng, _, files = watched
    inp = {**CI_BOT_ECHO, "principal": {"id": "admin", "roles": ["admin"], "kind": "user", "claims": {}}}
    assert eng.decide(inp).allow is True
    src = files.policy.read_text()
    extra = '\ndeny contains "echo is switched off" if tool_name == "everything__echo"\n'
    files.policy.write_text(src + extra)
    bump(files.policy)
    assert eventually(lambda: not eng.decide(inp).allow)
    assert "echo is switched off" in eng.decide(inp).reasons


def test_broken_policy_is_refused_and_old_policy_stays(
    watched: Any, caplog: pytest.LogCaptureFixture
) -> None:
    eng, sink, files = watched
    before = eng.bundle
    files.policy.write_text(files.policy.read_text() + "\nbroken_rule if {\n")  # does not parse
    bump(files.policy)
    with caplog.at_level(logging.ERROR, logger="symbi.policy"):
        assert eventually(lambda: "policy.reload_refused" in sink.types())
    refused = next(d for t, d in sink.events if t == "policy.reload_refused")
    assert refused["location"].startswith(f"{files.policy}:")
    assert eng.bundle is before
    # still the old policy: the stdio principal keeps its tool, the stranger stays out
    local = {
        **CI_BOT_ECHO,
        "principal": {"id": "local", "roles": ["developer"], "kind": "user", "claims": {}, "source": "stdio"},
    }
    assert eng.decide(local).allow is True
    assert eng.decide(CI_BOT_ECHO).allow is False
    # and a later good edit is still picked up
    files.policy.write_text(files.policy.read_text().replace("\nbroken_rule if {\n", "\n"))
    grant_echo_to_ci_bot(files)
    assert eventually(lambda: eng.decide(CI_BOT_ECHO).allow)


def test_change_failing_the_policy_tests_is_refused(watched: Any) -> None:
    eng, sink, files = watched
    # an edit that opens path traversal: parses fine, but the policy's own tests fail it
    src = files.policy.read_text()
    assert 'not contains(q, "/../")' in src
    files.policy.write_text(src.replace('not contains(q, "/../")', "true"))
    bump(files.policy)
    assert eventually(lambda: "policy.reload_refused" in sink.types())
    traversal = {
        **CI_BOT_ECHO,
        "principal": {"id": "local", "roles": ["developer"], "kind": "user", "claims": {}, "source": "stdio"},
        "target": "fs__read_text_file",
        "upstream": {"name": "fs", "domain": None, "transport": "stdio"},
        "tool": {**CI_BOT_ECHO["tool"], "name": "fs__read_text_file", "upstream": "fs"},
        "arguments": {"path": "/srv/symbi/../../etc/shadow"},
    }
    assert eng.decide(traversal).allow is False


def test_deleted_policy_file_keeps_the_old_policy(watched: Any) -> None:
    eng, sink, files = watched
    files.policy.unlink()
    assert eventually(lambda: "policy.reload_refused" in sink.types())
    local = {
        **CI_BOT_ECHO,
        "principal": {"id": "local", "roles": ["developer"], "kind": "user", "claims": {}, "source": "stdio"},
    }
    assert eng.decide(local).allow is True
