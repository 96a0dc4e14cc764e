"""Loading refuses what cannot be trusted and says where: file:line:column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import PolicyError, PolicyLoadError
from gateway.policy.loader import (
    PolicyFiles,
    find_test_rules,
    load_checked,
    read_bundle,
    run_tests,
)

LOC = re.compile(r"^(.+):(\d+):(\d+)$")


def test_repo_policy_passes_its_own_tests(policy_copy: PolicyFiles) -> None:
    bundle = load_checked(policy_copy)
    outcomes = run_tests(bundle, [(str(p), p.read_text()) for p in policy_copy.tests])
    assert len(outcomes) >= 10 and all(o.passed for o in outcomes)


def test_parse_error_names_file_line_column(policy_copy: PolicyFiles) -> None:
    src = policy_copy.policy.read_text().splitlines()
    src.insert(30, "allow if {  # unclosed")
    policy_copy.policy.write_text("\n".join(src) + "\n")
    with pytest.raises(PolicyLoadError) as info:
        load_checked(policy_copy)
    assert isinstance(info.value, PolicyError)  # one error family
    m = LOC.match(info.value.location or "")
    assert m and m.group(1) == str(policy_copy.policy) and int(m.group(2)) > 30


def test_failing_policy_test_is_refused_with_its_location(policy_copy: PolicyFiles) -> None:
    test_file = policy_copy.tests[0]
    test_file.write_text(
        test_file.read_text() + '\ntest_broken if {\n\tdata.symbi.decision.allow == "maybe"\n}\n'
    )
    with pytest.raises(PolicyLoadError) as info:
        load_checked(policy_copy)
    m = LOC.match(info.value.location or "")
    assert m and m.group(1) == str(test_file)
    line = test_file.read_text().splitlines()[int(m.group(2)) - 1]
    assert line.startswith("test_broken")


def test_policy_change_that_breaks_a_test_is_refused(policy_copy: PolicyFiles) -> None:
    # weaken the traversal rule: the policy's own test_path_traversal_denied must catch it
    src = policy_copy.policy.read_text()
    assert 'not ".." in parts' in src
    policy_copy.policy.write_text(src.replace('not ".." in parts', "true"))
    with pytest.raises(PolicyLoadError):
        load_checked(policy_copy)


def test_bad_data_json_names_line_and_column(policy_copy: PolicyFiles) -> None:
    assert policy_copy.data is not None
    policy_copy.data.write_text('{\n  "symbi_data": {,}\n}\n')
    with pytest.raises(PolicyLoadError) as info:
        read_bundle(policy_copy)
    assert info.value.location == f"{policy_copy.data}:2:18"


def test_data_must_be_an_object(policy_copy: PolicyFiles) -> None:
    assert policy_copy.data is not None
    policy_copy.data.write_text("[1, 2]")
    with pytest.raises(PolicyLoadError):
        read_bundle(policy_copy)


def test_unknown_function_reached_by_the_canary_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "p.rego"
    p.write_text("package symbi\nimport rego.v1\ndecision := x if { x := crypto.sha256(input.target) }\n")
    with pytest.raises(PolicyLoadError) as info:
        load_checked(PolicyFiles(policy=p))
    assert info.value.location == f"{p}:3:25"


def test_unknown_function_in_an_unreached_branch_is_refused_at_load(tmp_path: Path) -> None:
    # the canary never reaches this body; the builtin lint still names the call
    p = tmp_path / "p.rego"
    p.write_text(
        "package symbi\nimport rego.v1\n"
        'default decision := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
        'decision := {"allow": io.jwt.verify_hs256(input.jwt, "k"), "reasons": [], "conditions": {}} if input.never\n'
    )
    with pytest.raises(PolicyLoadError) as info:
        load_checked(PolicyFiles(policy=p))
    assert info.value.location == f"{p}:4:23"  # where io.jwt.verify_hs256 starts


def test_user_functions_and_portable_builtins_pass_the_lint(policy_copy: PolicyFiles) -> None:
    from gateway.policy.lint import unknown_calls
    from gateway.policy.loader import new_engine

    assert unknown_calls(new_engine(read_bundle(policy_copy)).get_ast_as_json()) == []


def test_test_rules_are_found_like_opa_test() -> None:
    src = "package a.b\nimport rego.v1\ntest_x if true\nnot_a_test if true\ntest_y := true\n  test_indented if true\n"
    assert [r for r, _ in find_test_rules([("f.rego", src)])] == ["data.a.b.test_x", "data.a.b.test_y"]
