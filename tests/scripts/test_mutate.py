"""scripts/mutate.py and its sibling modules (_mutate_base, _mutate_groups[_agents], _mutate_run,
_mutate_render): the entry point runs from its own path (its siblings are found next to it), the
run's scratch/seconds file is read back in each format the script has written, and a group's
note carries its scope. The mutation runs themselves are not tested here (minutes each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # the script's own sys.path[0] when run as scripts/mutate.py

from _mutate_base import Group  # noqa: E402
from _mutate_groups import BY_NAME, DEFAULT, GROUPS  # noqa: E402
from _mutate_render import verdict  # noqa: E402
from _mutate_run import _note, parse_seconds  # noqa: E402


def test_the_entry_point_lists_every_group_from_another_directory(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "mutate.py"), "--list"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert [line.split(":")[0] for line in out.splitlines()] == [g.name for g in GROUPS]


def test_a_driver_loading_the_entry_point_by_its_path_gets_its_run_and_groups(tmp_path: Path) -> None:
    driver = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('mutate', {str(SCRIPTS / 'mutate.py')!r})\n"
        "m = importlib.util.module_from_spec(spec)\n"
        "sys.modules['mutate'] = m\n"
        "spec.loader.exec_module(m)\n"
        "print(callable(m.run_group), len(m.GROUPS))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", driver], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert out.split() == ["True", str(len(GROUPS))]


def test_an_unknown_group_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "mutate.py"), "no-such-group"], capture_output=True, text=True
    )
    assert done.returncode == 2


def test_the_default_run_names_only_known_groups_once() -> None:
    assert len(BY_NAME) == len(GROUPS)
    assert len(set(DEFAULT)) == len(DEFAULT)
    assert set(DEFAULT) <= set(BY_NAME)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("426 0 276a737 76 12", (426, 0, "276a737", 76, 12)),
        ("426 0 276a737 76 -1", (426, 0, "276a737", 76, None)),  # mutmut never reached the mutants
        ("300 -9 abc1234 50", (300, -9, "abc1234", 50, None)),  # before set-up was recorded
        ("300 1 abc1234", (300, 1, "abc1234", None, None)),  # before CPU-seconds were recorded
    ],
)
def test_a_runs_seconds_file_is_read_in_each_format(
    text: str, expected: tuple[int, int, str, int | None, int | None]
) -> None:
    assert parse_seconds(text) == expected


def test_a_truncated_seconds_file_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_seconds("300 1")


def test_a_groups_note_has_the_runs_note_its_scope_and_its_own(tmp_path: Path) -> None:
    group = Group("g", ("gateway/x.py",), ("tests/x.py",), note="Own.", only=("gateway.x.*",))
    assert _note(group, tmp_path) == "Only the mutants of gateway.x.*. Own."
    (tmp_path / "note").write_text("stopped by --timeout\n")
    assert _note(group, tmp_path) == "stopped by --timeout Only the mutants of gateway.x.*. Own."
    assert _note(Group("h", (), ()), tmp_path / "none") == ""


def test_a_survivor_not_accounted_for_is_unexplained() -> None:
    reasons = {"equivalent": {"a": "same"}, "killed_by": {"b": "tests/x.py::t"}, "gap": {"c": "open"}}
    assert verdict("a", reasons) == ("equivalent", "same")
    assert verdict("b", reasons) == ("killed_by", "tests/x.py::t")
    assert verdict("c", reasons) == ("gap", "open")
    assert verdict("d", reasons) == ("unexplained", "")


def test_a_module_run_adds_its_new_mutants_and_replaces_only_its_own() -> None:
    from mutate import merge_recheck

    def m(name: str, status: str) -> dict[str, str]:
        return {"name": name, "status": status}

    run = {"commit": "c1", "seconds": 60, "tests": [], "cpu_s": 10}
    old = {**run, "mutants": [m("gateway.policy.engine.x_f__mutmut_1", "survived")]}
    new = {
        **run,
        "commit": "c2",
        "mutants": [
            m("gateway.policy.engine.x_f__mutmut_1", "killed"),  # not the module's: kept as it was
            m("gateway.textcheck.x_not_utf8_at__mutmut_1", "killed"),
            m("gateway.textcheck.x_walk__mutmut_2", "not checked"),  # not reached: not added
        ],
    }
    merged = merge_recheck(old, new, ["gateway.textcheck.*"], "of gateway/textcheck.py")
    assert {x["name"]: x["status"] for x in merged["mutants"]} == {
        "gateway.policy.engine.x_f__mutmut_1": "survived",
        "gateway.textcheck.x_not_utf8_at__mutmut_1": "killed",
    }
    assert "the 1 mutants of gateway/textcheck.py" in merged["note"]  # counts mutants, not patterns
