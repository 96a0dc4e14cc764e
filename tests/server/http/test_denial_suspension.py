"""Attack: a principal probes with calls the policy denies, reconnecting before its session's
agent reaches ``runtime.suspend_after_denials``. The denials are counted per principal, over
its sessions (gateway/runtime/core.py): a new session is no fresh start. A real gateway over
streamable HTTP with server-everything behind it and API keys."""

from __future__ import annotations

from pathlib import Path

from tests.server.http.conftest import DENY_FORBIDDEN_ECHO, everything_config, make_keys, run_server
from tests.server.http.test_refusal_flood import KeySession


def test_reconnecting_does_not_reset_the_count_of_denials(tmp_path: Path) -> None:
    (tmp_path / "policy.rego").write_text(DENY_FORBIDDEN_ECHO)
    runtime = "[runtime]\nsuspend_after_denials = 3\ndenial_window_s = 600\n"
    cfg = everything_config(tmp_path, top_extra=runtime, policy=tmp_path / "policy.rego")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        codes: list[str | None] = []
        for _ in range(3):  # two denials a session: under the threshold in each one
            s = KeySession(run.mcp, keys.user)
            codes += [s.call("everything__echo", {"message": "forbidden"}) for _ in range(2)]
            codes.append(s.call("everything__echo", {"message": "still here"}))
            s.close()
        other = KeySession(run.mcp, keys.other_user)  # another principal: its own count
        assert other.call("everything__echo", {"message": "hi"}) is None
    assert codes[:3] == ["policy_denied", "policy_denied", None]
    # the principal's third denial is its second session's first call: that session is suspended
    assert codes[3:6] == ["policy_denied", "agent_suspended", "agent_suspended"]
    # and a third session is refused from its first call: the suspension is the principal's
    # (gateway/runtime/holds.py); before, its first call was denied, and only that suspended it
    assert codes[6:] == ["agent_suspended", "agent_suspended", "agent_suspended"]
