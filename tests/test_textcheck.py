"""Text that is not valid UTF-8 never reaches regorus, which crashes the process on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.errors import PolicyLoadError
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles, bundle_from_sources
from gateway.textcheck import not_utf8_at, shown

ALLOW_ALL = 'package symbi\nimport rego.v1\ndecision := {"allow": true, "reasons": [], "conditions": {}}\n'


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ("\ud800", "/"),
        ({"principal": {"claims": {"nick": "ok\udcff"}}}, "/principal/claims/nick"),
        ({"arguments": {"a/b~": ["x", "\udfff"]}}, "/arguments/a~1b~0/1"),
        ({"arguments": {"\ud800k": 1}}, "/arguments/\\ud800k"),
        ({"tags": ("a", {"\ud83d": None})}, "/tags/1/\\ud83d"),
        ({"big": 2**70, "s": {"\ud800"}, "t": "\udc80"}, "/t"),  # orjson refuses the int: walked
    ],
)
def test_the_first_bad_text_is_named_by_its_pointer(doc: object, where: str) -> None:
    found = not_utf8_at(doc)
    assert found == where
    found.encode("utf-8")  # the pointer itself can go into a reason, a log, the audit


@pytest.mark.parametrize("doc", [{}, {"a": ["é", "😀", "\u0000"], "n": 1.5}, {"big": 2**70}, {"s": {"x"}}])
def test_valid_text_passes(doc: object) -> None:
    assert not_utf8_at(doc) is None


def test_a_decision_on_such_an_input_is_denied_and_the_engine_keeps_deciding(tmp_path: Path) -> None:
    # without the check this test does not fail, it kills its process (SIGSEGV in regorus)
    (tmp_path / "p.rego").write_text(ALLOW_ALL)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load()
    for bad in ({"principal": {"claims": {"nick": "\ud800"}}}, {"arguments": {"\udcff": 1}}):
        d = eng.decide(bad)
        assert d.allow is False and d.reasons
    assert eng.decide({"principal": {"claims": {"nick": "ok"}}}).allow is True


def test_policy_data_with_such_text_is_refused_at_load() -> None:
    raw = json.dumps({"roles": {"dev\ud800": ["x"]}})  # json writes the escape, json.loads reads it back
    with pytest.raises(PolicyLoadError):
        bundle_from_sources(("p.rego", ALLOW_ALL), ("data.json", raw))
    assert bundle_from_sources(("p.rego", ALLOW_ALL), ("data.json", json.dumps({"roles": {}}))).data == {
        "roles": {}
    }


def test_shown_writes_only_bad_characters_as_escapes() -> None:
    assert shown("a\udcffb\ud800") == "a\\udcffb\\ud800"
    assert shown("é ✓ \U0001f600") == "é ✓ \U0001f600"  # valid text is unchanged, not escaped
