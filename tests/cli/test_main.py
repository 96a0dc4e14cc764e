"""The ``symbi`` entry point imports only the module of the command it runs."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys

import pytest

from gateway.cli import COMMANDS, EXIT_USAGE, HELP, _command, build_parser, main, top_parser
from tests.conftest import ROOT

# each sub-command module and the commands COMMANDS lists for it, in --help order
_MODULES: dict[str, list[str]] = {}
for _name, _c in COMMANDS.items():
    _MODULES.setdefault(_c.module, []).append(_name)


def test_each_module_registers_exactly_the_commands_listed_for_it() -> None:
    for mod, names in _MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(mod).register(sub)
        assert list(sub.choices) == names, mod


def test_the_command_is_the_first_word_and_only_a_known_one() -> None:
    assert _command(["audit", "verify", "--config", "x"]) == "audit"
    assert _command(["--version"]) is None and _command([]) is None
    assert _command(["nosuch", "audit"]) is None  # argparse names the bad choice (the parser listing HELP)


def _loaded(probe: str, arg: str, package: str) -> list[str]:
    """The modules of ``package`` (it and those under it) loaded by ``probe`` (Python run with
    ``arg`` as ``sys.argv[1]``) in a fresh process, as a ``symbi`` command starts; every
    module loaded when ``package`` is empty."""
    if package:
        listed = f"sorted(m for m in sys.modules if m == {package!r} or m.startswith({package!r} + '.'))"
    else:
        listed = "sorted(sys.modules)"
    code = f"import importlib, json, sys; {probe}; print(json.dumps({listed}))"
    out = subprocess.run(
        [sys.executable, "-c", code, arg], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return list(json.loads(out))


def test_a_command_imports_its_module_and_no_other() -> None:
    loaded = _loaded(
        "from gateway.cli import build_parser; build_parser(sys.argv[1])", "audit", "gateway.cli"
    )
    assert "gateway.cli.audit_cmd" in loaded
    assert not set(loaded) & (set(_MODULES) - {"gateway.cli.audit_cmd"})


# the commands that serve MCP themselves; every other one is an admin command
_SERVES_MCP = ("mcp", "serve")
_ADMIN = [n for n in COMMANDS if n not in _SERVES_MCP]


def _sdk_loaded(probe: str, arg: str) -> list[str]:
    """The MCP SDK's modules loaded by ``probe`` (Python run with ``arg``)."""
    return _loaded(probe, arg, "mcp")


@pytest.mark.parametrize("command", _ADMIN)
def test_an_admin_command_starts_without_the_mcp_sdk(command: str) -> None:
    # importing the SDK costs ~1 s of every such command's start; it only needs the store,
    # the config or the admin API
    assert _sdk_loaded("from gateway.cli import build_parser; build_parser(sys.argv[1])", command) == []


# what admin commands import inside their functions (run time, not parser build): `symbi tools
# approve --key` reaches the verifier and the screening refresh, discover the onboarding, ...
_RUN_TIME = (
    "gateway.verify.verifier",
    "gateway.verify.manifest",
    "gateway.screen.refresh",
    "gateway.screen.scan",
    "gateway.onboard.discovery",
)


@pytest.mark.parametrize("module", _RUN_TIME)
def test_what_an_admin_command_imports_as_it_runs_does_not_load_the_mcp_sdk(module: str) -> None:
    assert _sdk_loaded("importlib.import_module(sys.argv[1])", module) == []


def test_checking_a_principal_as_the_agents_command_parses_does_not_import_the_runtime() -> None:
    # gateway.runtime (the agent registry, screening, redis) was a third of `symbi agents`'s start
    probe = (
        "from gateway.cli import build_parser; "
        "build_parser(sys.argv[1]).parse_args([sys.argv[1], 'suspend', '--principal', 'key:bob'])"
    )
    assert _loaded(probe, "agents", "gateway.runtime") == []


def test_a_hung_up_terminal_is_not_a_closed_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal whose master went away reports POLLHUP as a closed socket does, but writing
    to it fails with EIO: a broken pipe met meanwhile came from another pipe, and ending with
    141 (a reader that took what it wanted) would hide it. A real pty, its master closed."""
    import pty

    from gateway import cli

    master, slave = pty.openpty()
    os.close(master)
    try:
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.FileIO(slave, "w", closefd=False)))
        assert cli._stdout_closed() is False
    finally:
        os.close(slave)


def _every_command_registered() -> argparse.ArgumentParser:
    """``symbi`` with every module's own parser, as before --help listed them from HELP."""
    parser, sub = top_parser()
    for mod in _MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def test_help_lists_every_command_as_its_own_module_registers_it() -> None:
    # the listing comes from COMMANDS, not the modules: a command renamed, added or
    # re-described in its module and not there fails this, so `symbi --help` cannot drift
    assert build_parser().format_help() == _every_command_registered().format_help()


def test_a_bad_command_is_refused_naming_the_same_choices() -> None:
    for parser in (build_parser(), _every_command_registered()):
        with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()) as err:
            parser.parse_args(["nosuch"])
        assert e.value.code == 2
        assert all(repr(n) in err.getvalue() for n in HELP)


def test_symbi_help_imports_no_command_module() -> None:
    # importing every command module was ~1 s of CPU for `symbi --help` (and a mistyped name)
    loaded = _loaded("from gateway.cli import build_parser; build_parser().format_help()", "", "gateway.cli")
    assert not set(loaded) & set(_MODULES)


# what only running a command needs: the config models, httpx, the bus, the memory stack, the
# stores and approval code. `symbi <command> --help` (and a parse error) loads none of them.
_HEAVY = (
    "gateway.config",
    "httpx",
    "gateway.bus",
    "gateway.memory",
    "gateway.policy",
    "gateway.verify.approve",
    "gateway.verify.state",
    "gateway.cli.stores",
    "gateway.screen",
    "gateway.server",
    "gateway.onboard.apply",
    "gateway.onboard.plan",
    "gateway.onboard.undo",
    "gateway.sandbox",
    "pydantic",
    "schemapin",
    "asyncio",
)


@pytest.mark.parametrize(
    "command",
    # session 51: policy, import, sandbox, discover, config, schemapin loaded the config, the policy
    # engine, gateway.onboard or schemapin at their parse (0.35-0.85 s of CPU for `--help`)
    [
        *("audit", "bus", "tools", "memory", "knowledge", "agents", "status", "keys", "scan"),
        *("policy", "import", "sandbox", "discover", "config", "schemapin"),
    ],
)
def test_parsing_an_admin_command_loads_none_of_what_running_it_needs(command: str) -> None:
    probe = "from gateway.cli import build_parser; build_parser(sys.argv[1])"
    loaded = _loaded(probe, command, "")  # every module: one process for all of _HEAVY
    assert [m for m in loaded if any(m == h or m.startswith(h + ".") for h in _HEAVY)] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "tail", "-n", "-1"],  # was clamped to 0: nothing printed, exit 0
        ["audit", "verify", "--jobs", "0"],
        ["bus", "tail", "-n", "-1"],
        ["bus", "tail", "-n", "x"],
        ["audit", "query", "--limit", "-1"],  # was SQLite's LIMIT -1: every row
        ["knowledge", "search", "base", "q", "--top-k", "0"],
        ["sandbox", "run", "--tier", "bwrap", "--pids", "0"],
        ["sandbox", "run", "--tier", "bwrap", "--output", "-1"],
        ["serve", "--workers", "0"],
    ],
)
def test_a_count_below_its_least_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--config", "/nonexistent/symbi.toml"])
    assert refused.value.code == EXIT_USAGE and capsys.readouterr().out == ""
