"""The ``symbi`` command line: thin, over the library.

Only this package reads ``sys.argv`` and maps errors to exit codes:
0 success / valid, 1 failure / invalid / denied, 2 usage or configuration error, 130
interrupted (Ctrl-C), 141 (``EXIT_PIPE``) the reader of stdout closed it (``symbi ... | head``).
Each sub-command lives in its own module with a ``register(subparsers)`` function that
sets ``func`` (returning the exit code) on its parser, named in ``COMMANDS`` with its one
line of help (``symbi --help`` lists them without importing the modules; a test holds the
table and the modules' parsers equal).
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import stat
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from gateway.cli.terminal import escaped_output
from gateway.errors import ConfigError, GatewayError
from gateway.textcheck import not_utf8_at


class Command(NamedTuple):
    """A sub-command: the module that registers it, and its one line of help."""

    module: str
    help: str


# The sub-commands in --help order. Only the module of the command being run is imported:
# importing all of them (mcp, the policy engine, the memory stack...) cost about a second of
# CPU at every `symbi` start. --help, no command or an unknown name lists the commands from
# here instead (tests/cli/test_main.py checks this table against the modules' own parsers).
COMMANDS: dict[str, Command] = {
    "mcp": Command("gateway.cli.run", "serve the gateway over stdio (for Claude Desktop, IDEs)"),
    "serve": Command(
        "gateway.cli.run", "serve the gateway over streamable HTTP (default 127.0.0.1:8080/mcp)"
    ),
    "config": Command("gateway.cli.config_cmd", "configuration tools"),
    "tools": Command("gateway.cli.tools_cmd", "upstream tools: verification state, drift, approvals"),
    "schemapin": Command(
        "gateway.cli.schemapin_cmd", "SchemaPin: sign and verify tool definitions, manage pins"
    ),
    "policy": Command("gateway.cli.policy_cmd", "Rego policy tools: check, eval, test, push, reload, status"),
    "audit": Command(
        "gateway.cli.audit_cmd", "the signed audit log: verify, tail, query, export, report, rotate-key"
    ),
    "sandbox": Command("gateway.cli.sandbox_cmd", "sandbox tiers: run, doctor, cleanup"),
    "keys": Command("gateway.cli.keys_cmd", "API keys for the HTTP front (create, list, revoke)"),
    "import": Command(
        "gateway.cli.import_cmd", "import the MCP servers your clients (Claude, VS Code, Cursor) use"
    ),
    "scan": Command("gateway.cli.scan_cmd", "screen tool, resource and prompt definitions for poisoning"),
    "discover": Command("gateway.cli.discover_cmd", "servers found by discovery, and their quarantine state"),
    "knowledge": Command("gateway.cli.memory_cmd", "knowledge bases for RAG (add, list, search, remove)"),
    "memory": Command("gateway.cli.memory_cmd", "agent memory (stats, purge)"),
    "bus": Command("gateway.cli.bus_cmd", "the agent bus: stats, verify, tail (metadata only)"),
    "agents": Command(
        "gateway.cli.agents_cmd", "agents of a running gateway (list, show, suspend, resume, terminate, run)"
    ),
    "status": Command(
        "gateway.cli.agents_cmd", "the gateway's HealthStatus (overall, components, resources, errors)"
    ),
}
# each command's one-line help, as its module registers it
HELP: dict[str, str] = {name: c.help for name, c in COMMANDS.items()}

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_PIPE = 128 + 13  # ended by its reader, as the shell reports a tool SIGPIPE ended


def whole_number(least: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``least`` (a count, ``--jobs``), else
    a usage error (exit 2) naming the option."""

    def number(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = least - 1
        if n < least:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {least}, not {text!r}")
        return n

    return number


def top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:  # type: ignore[type-arg]
    """The ``symbi`` parser with no command yet, and the action commands register into."""
    parser = argparse.ArgumentParser(prog="symbi", description="Symbi MCP security gateway")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``command``'s module; with no command, every command listed from HELP
    (its name and help only: --help and a bad name's error need no more)."""
    parser, sub = top_parser()
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command].module).register(sub)
    elif command is None:
        for name, c in COMMANDS.items():
            sub.add_parser(name, help=c.help, add_help=False)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The known sub-command ``argv`` runs (the first word that is not an option), if any."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


# stdout is the MCP protocol (mcp) or stderr the logs (serve): every other command's output is
# escaped (gateway.cli.terminal): what an upstream or a caller wrote never steers the terminal
_UNESCAPED = ("mcp", "serve")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _command(argv) in _UNESCAPED:
        return _main(argv)
    try:
        with escaped_output():
            code = _main(argv)
        sys.stdout.flush()  # a reader gone raises here, not in the interpreter's exit
        return code
    except (BrokenPipeError, ConnectionResetError):  # (a socket's reader closing with data unread)
        if not _stdout_closed():  # another pipe's: not the reader of our output
            raise
        # `symbi ... | head`: the reader took what it wanted; end quietly, as Unix tools do
        # (what is still buffered goes nowhere, so the exit's flush raises nothing)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
        return EXIT_PIPE


def _stdout_closed() -> bool:
    """Whether stdout's reader has closed it: a pipe's (poll reports POLLERR on Linux, POLLHUP
    on macOS and the BSDs) or a stream socket's (POLLHUP: a libuv parent's stdio, a
    socket-activated service). Not a terminal's hang-up (POLLHUP too): writing to one fails
    with EIO, so a broken pipe came from elsewhere."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode):
            closed = select.POLLERR | select.POLLHUP
        elif stat.S_ISSOCK(mode):
            closed = select.POLLHUP
        else:
            return False
        watch = select.poll()
        watch.register(fd, select.POLLOUT)
        return any(events & closed for _, events in watch.poll(0))
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout)
        return False


def _main(argv: list[str]) -> int:
    bad = not_utf8_at(argv)
    if bad is not None:  # Python decodes argv with surrogateescape: a name no record can hold
        print(f"symbi: argument {int(bad[1:]) + 1} is not valid UTF-8 text", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if args.version:
        from gateway import __version__

        print(f"symbi {__version__}")
        return EXIT_OK
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.environ = dict(os.environ)
    try:
        return int(func(args))
    except ConfigError as e:
        print(f"symbi: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as e:
        print(f"symbi: {e.diagnostics()}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as eg:
        import asyncio  # here: importing it costs every command's start ~0.08 s of CPU

        # Ctrl-C / SIGTERM while tasks were running arrives wrapped: that is a clean stop
        if eg.subgroup(lambda e: not isinstance(e, KeyboardInterrupt | asyncio.CancelledError)) is None:
            return 130
        raise


def setup_logging(level: str, fmt: str = "text") -> None:
    """Logging goes to stderr only: on stdio, stdout is the protocol."""
    from gateway.logs import configure

    configure(level, fmt)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
