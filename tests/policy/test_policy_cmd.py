"""``symbi policy check|eval|test``: exit codes 0 ok / 1 failed or denied / 2 usage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy.loader import PolicyFiles
from tests.policy.conftest import CASES, REPO


def cli(*argv: str) -> int:
    return main(list(argv))


def test_check_ok_on_the_repo_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("policy", "check") == 0
    assert "OK" in capsys.readouterr().out


def test_check_refuses_a_broken_policy_naming_the_location(
    policy_copy: PolicyFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_copy.policy.write_text(policy_copy.policy.read_text() + "\nbroken if {\n")
    assert cli("policy", "check", "--policy", str(policy_copy.policy)) == 1
    assert f"{policy_copy.policy}:" in capsys.readouterr().err


def test_eval_allow_and_deny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(CASES.read_text())
    allow = tmp_path / "allow.json"
    allow.write_text(json.dumps(doc["base"]))
    assert cli("policy", "eval", "--input", str(allow)) == 0
    assert json.loads(capsys.readouterr().out)["allow"] is True
    deny = tmp_path / "deny.json"
    deny.write_text(json.dumps({"input": {**doc["base"], "principal": {"id": "nobody", "roles": []}}}))
    assert cli("policy", "eval", "--input", str(deny)) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["allow"] is False and out["reasons"]


def test_eval_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert cli("policy", "eval", "--input", str(bad)) == 2


def test_test_runs_rego_tests_and_cases() -> None:
    assert cli("policy", "test", "--cases", str(CASES)) == 0


def test_test_fails_on_a_wrong_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(CASES.read_text())
    doc["cases"][0]["expected"]["allow"] = not doc["cases"][0]["expected"]["allow"]
    wrong = tmp_path / "cases.json"
    wrong.write_text(json.dumps(doc))
    assert cli("policy", "test", "--cases", str(wrong)) == 1
    assert "FAIL case" in capsys.readouterr().out


def test_test_fails_on_a_failing_rego_test(policy_copy: PolicyFiles) -> None:
    t = policy_copy.tests[0]
    t.write_text(t.read_text() + "\ntest_always_fails if false\n")
    assert cli("policy", "test", "--policy", str(policy_copy.policy)) == 1


def test_real_subprocess_with_a_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "symbi.toml"
    cfg.write_text(
        f'[policy]\npath = "{REPO / "policies.rego"}"\ndata = "{REPO / "policies" / "data.json"}"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr


def test_reload_and_status_against_a_running_gateway(policy_copy: PolicyFiles, tmp_path: Path) -> None:
    """``symbi policy reload|status`` drive a real ``symbi serve``: a changed policy is put in
    force (new digest); a broken one is refused with exit 1 and the previous one keeps deciding;
    a key without the admin role is refused."""
    from gateway.config import load_config
    from gateway.server.auth import ApiKeyStore
    from tests.conftest import SYMBI, peers_config, symbi_env
    from tests.server._http import serve

    # hot_reload off: only the command reloads, so what it reports is its own doing
    (tmp_path / "gw").mkdir()
    cfg = peers_config(
        tmp_path / "gw",
        f'\n[policy]\npath = "{policy_copy.policy}"\ndata = "{policy_copy.data}"\nhot_reload = false\n',
    )
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    admin, _ = store.create("ops", ("admin",))
    user, _ = store.create("tester", ("tester",))

    def symbi(key: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SYMBI), "policy", *args, "--config", str(cfg), "--url", base, "--json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=symbi_env(SYMBI_API_KEY=key),
        )

    with serve(cfg) as base:
        first = symbi(admin, "status")
        assert first.returncode == 0, first.stderr
        before = json.loads(first.stdout)
        assert before["loaded"] is True and before["digest"]

        policy_copy.policy.write_text(policy_copy.policy.read_text() + "\n# reviewed 2026-12-01\n")
        done = symbi(admin, "reload")
        assert done.returncode == 0, done.stderr
        after = json.loads(done.stdout)
        assert after["reloaded"] is True and after["digest"] != before["digest"]

        policy_copy.policy.write_text(policy_copy.policy.read_text() + "\nbroken if {\n")
        refused = symbi(admin, "reload")
        assert refused.returncode == 1
        assert json.loads(refused.stdout)["reloaded"] is False
        still = json.loads(symbi(admin, "status").stdout)
        assert still["loaded"] is True and still["digest"] == after["digest"]

        forbidden = symbi(user, "reload")
        assert forbidden.returncode == 1 and "403" in forbidden.stderr


@pytest.mark.parametrize("command", ["test", "check"])
def test_a_policy_test_file_whose_name_is_not_utf8_is_refused_by_name(
    policy_copy: PolicyFiles, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``*_test.rego`` found beside the policy is named by the file system (``surrogateescape``):
    regorus cannot take such a name. Refused (exit 1) with a reason that is valid UTF-8 text
    naming the file (it goes into the log line and a reload's audit record), not the codec's."""
    bad = policy_copy.policy.parent / "policies" / os.fsdecode(b"b\xff_test.rego")
    bad.write_text("package symbi_test\n\ntest_other if { true }\n")
    assert cli("policy", command, "--policy", str(policy_copy.policy)) == 1
    err = capsys.readouterr().err
    assert "b\\udcff_test.rego" in err and "not valid UTF-8" in err
    err.encode("utf-8")  # the reason itself is valid UTF-8
