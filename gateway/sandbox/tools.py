"""The built-in ``sandbox`` upstream: code tools ``run_python`` and ``run_shell``.

The gateway core mounts this under the server name ``sandbox`` (so clients see
``sandbox__run_python`` / ``sandbox__run_shell``); policy and audit treat them like any
other tool. The risk pick reads the call (gateway/sandbox/inputs.py): an agent's code is
untrusted (gVisor at least), a person's starts from ``security.default_sandbox_tier``, and
code asking for the network or files climbs; never below the policy's ``sandbox_tier``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from opentelemetry import trace

from gateway.errors import ArgumentsInvalid, SandboxInterrupted, UnknownTool

from .inputs import needs_of, trust_of
from .manager import SandboxManager
from .types import Limits, RunCancel, SandboxRequest, SandboxResult, Tier, ToolNeeds

SERVER_NAME = "sandbox"
_tracer = trace.get_tracer("symbi.gateway")
MAX_FILES = 64

_FILES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Input files placed in the working directory before the run: name -> UTF-8 text.",
    "additionalProperties": {"type": "string"},
    "maxProperties": MAX_FILES,
}
_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "exit_code": {"type": "integer"},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
        "truncated": {"type": "boolean"},
        "tier": {"type": "string", "enum": ["bwrap", "docker", "gvisor"]},
        "killed": {"type": "string", "enum": ["none", "timeout", "memory", "pids", "output"]},
    },
    "required": ["exit_code", "stdout", "stderr", "truncated", "tier", "killed"],
}
_ANNOTATIONS = {
    "readOnlyHint": False,
    "destructiveHint": False,
    "idempotentHint": False,
    "openWorldHint": False,
}


def _tool(name: str, title: str, description: str, main: str, main_desc: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "description": description,
        "inputSchema": {
            "type": "object",
            "properties": {
                main: {"type": "string", "description": main_desc, "minLength": 1},
                "stdin": {"type": "string", "description": "Text given to the program on standard input."},
                "files": _FILES_SCHEMA,
            },
            "required": [main],
            "additionalProperties": False,
        },
        "outputSchema": _OUTPUT_SCHEMA,
        "annotations": {"title": title, **_ANNOTATIONS},
    }


TOOLS: tuple[dict[str, Any], ...] = (
    _tool(
        "run_python",
        "Run Python code in a sandbox",
        "Run Python 3 code in an isolated sandbox (no network, read-only system, temporary "
        "working directory, memory/CPU/time/output limits). Returns exit code, stdout and stderr.",
        "code",
        "Python 3 source to run.",
    ),
    _tool(
        "run_shell",
        "Run a shell command in a sandbox",
        "Run a POSIX shell command (/bin/sh -c) in an isolated sandbox (no network, read-only "
        "system, temporary working directory, memory/CPU/time/output limits).",
        "command",
        "Shell command line, run with /bin/sh -c.",
    ),
)


class SandboxTools:
    """``list_tools()`` / ``call()`` of the built-in ``sandbox`` server."""

    def __init__(self, config: Any, manager: SandboxManager) -> None:
        self.config = config
        self.manager = manager

    def list_tools(self) -> list[dict[str, Any]]:
        """MCP wire tool definitions (camelCase); empty when ``sandbox.code_tools`` is off."""
        if not self.config.sandbox.code_tools:
            return []
        return [dict(t) for t in TOOLS]

    @staticmethod
    def _request(name: str, arguments: dict[str, Any]) -> SandboxRequest:
        if not isinstance(arguments, dict):
            raise ArgumentsInvalid("arguments must be an object")
        main = "code" if name == "run_python" else "command"
        allowed = {main, "stdin", "files"}
        extra = set(arguments) - allowed
        if extra:
            raise ArgumentsInvalid(f"unknown argument(s): {', '.join(sorted(extra))}")
        text = arguments.get(main)
        if not isinstance(text, str) or not text:
            raise ArgumentsInvalid(f"'{main}' must be a non-empty string")
        stdin = arguments.get("stdin")
        if stdin is not None and not isinstance(stdin, str):
            raise ArgumentsInvalid("'stdin' must be a string")
        files = arguments.get("files") or {}
        if (
            not isinstance(files, dict)
            or len(files) > MAX_FILES
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
        ):
            raise ArgumentsInvalid(f"'files' must map at most {MAX_FILES} names to strings")
        common: dict[str, Any] = {
            "stdin": stdin.encode() if stdin is not None else None,
            "files": {k: v.encode() for k, v in files.items()},
        }
        if name == "run_python":
            return SandboxRequest(code=text, **common)
        return SandboxRequest(command=("/bin/sh", "-c", text), **common)

    def pick_tier(
        self,
        min_tier: str | None,
        request: SandboxRequest | None = None,
        *,
        principal_kind: str | None = None,
        annotations: Mapping[str, Any] | None = None,
    ) -> Tier:
        """The risk pick from what the code asks for, the tool's annotations and the caller:
        an agent's code gets gVisor at least, a person's the configured default tier at least,
        and never below the policy's tier."""
        needs = needs_of(request, annotations) if request is not None else ToolNeeds()
        return self.manager.assess_tier(needs, code_trust=trust_of(principal_kind), policy_min_tier=min_tier)

    async def call(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        min_tier: str | None,
        limits: Limits | None = None,
        principal_kind: str | None = None,
    ) -> tuple[dict[str, Any], Tier]:
        """Run one code tool; returns (CallToolResult wire dict, tier used).

        Raises ArgumentsInvalid / UnknownTool / SandboxUnavailable (a GatewayError the
        boundary turns into an error result); a program that fails or hits a limit is a
        normal result with ``isError: true`` and ``killed`` saying which limit.
        """
        if name not in ("run_python", "run_shell") or not self.config.sandbox.code_tools:
            raise UnknownTool(f"no sandbox tool {name!r}")
        request = self._request(name, arguments)
        annotations = next((t["annotations"] for t in TOOLS if t["name"] == name), None)
        tier = self.pick_tier(min_tier, request, principal_kind=principal_kind, annotations=annotations)
        lim = limits or self.manager.limits()
        attrs = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "symbi.sandbox.tier": tier,
        }
        with _tracer.start_as_current_span(f"sandbox {name}", attributes=attrs) as span:
            result = await self._run(tier, request, lim)
            span.set_attributes(
                {"process.exit.code": result.exit_code, "symbi.sandbox.killed": result.killed}
            )
        return to_call_result(result), tier

    async def _run(self, tier: Tier, request: SandboxRequest, lim: Limits) -> SandboxResult:
        """The run on a worker thread, stopped when its caller goes away (a client's
        ``notifications/cancelled``, a budget, a closing session): before, a cancelled call's
        program ran on to its time limit, and the call waited for it. A cancel scope's
        cancellation waits for the stop (the scheduler's slot frees when the program is gone);
        a task's native cancel returns at once, the stop going on on its thread."""
        cancel = RunCancel()

        async def watch() -> None:
            try:
                await anyio.sleep_forever()
            finally:  # cancelled: by the caller's cancellation, or below once the run ended
                cancel.cancel()

        got: SandboxResult | Exception
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                got = await anyio.to_thread.run_sync(
                    partial(self.manager.run, tier, request, lim, cancel=cancel), abandon_on_cancel=False
                )
            except Exception as e:  # noqa: BLE001 - re-raised below as itself, not in an ExceptionGroup
                got = e
            tg.cancel_scope.cancel()
        if isinstance(got, Exception):
            raise got
        if got.killed == "cancelled":  # stopped for a caller that went away: no result for anyone
            await anyio.lowlevel.checkpoint()  # raises that caller's cancellation
            raise SandboxInterrupted(f"the {tier} sandbox call was cancelled by its caller; no result")
        return got


def to_call_result(result: SandboxResult) -> dict[str, Any]:
    """A SandboxResult as an MCP CallToolResult wire dict."""
    data = result.as_dict()
    data.pop("duration_s", None)
    lines = [f"exit code: {result.exit_code} (tier {result.tier})"]
    if result.killed != "none":
        lines.append(f"stopped: {result.killed} limit exceeded")
    lines.append("--- stdout ---" + (" (truncated)" if result.stdout_truncated else ""))
    lines.append(data["stdout"])
    if result.stderr:
        lines.append("--- stderr ---" + (" (truncated)" if result.stderr_truncated else ""))
        lines.append(data["stderr"])
    return {
        "content": [{"type": "text", "text": "\n".join(lines)}],
        "isError": result.exit_code != 0 or result.killed != "none",
        "structuredContent": data,
    }
