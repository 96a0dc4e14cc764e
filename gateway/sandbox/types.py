"""Value types shared by every sandbox tier: what to run, within which limits, what came back."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gateway.errors import ArgumentsInvalid

Tier = Literal["bwrap", "docker", "gvisor"]
# "cancelled": its caller went away; such a result reaches no client (see ``RunCancel``)
KilledReason = Literal["none", "timeout", "memory", "pids", "output", "cancelled"]

# Weakest to strongest; "none" (no sandbox) is below every tier and never picked for code.
TIER_ORDER: tuple[str, ...] = ("none", "bwrap", "docker", "gvisor")
TIERS: tuple[Tier, ...] = ("bwrap", "docker", "gvisor")

# Label on every container we start; orphans are found by it.
LABEL = "symbi.sandbox"
LABEL_OWNER = "symbi.sandbox.owner"  # "<hostname>:<pid>" of the gateway process that started it

# Python run inside the sandbox (the host's /usr is bind-mounted read-only in every tier).
SANDBOX_PYTHON = "/usr/bin/python3"
WORKDIR = "/tmp/work"  # on the sandbox's tmpfs; input files are copied here first
MAX_CODE_BYTES = 120_000  # one argv string (Linux MAX_ARG_STRLEN is 128 KiB)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._/-]{0,199}$")


class RunCancel:
    """Stops a run from the event loop's thread: its caller went away (a cancelled
    ``tools/call``), so the program stops now, not at its time limit. The tiers' hooks run on
    a thread of their own: ``cancel`` never blocks the loop on a kill."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            threading.Thread(target=hook, name="sandbox-cancel", daemon=True).start()

    @contextlib.contextmanager
    def hooked(self, hook: Callable[[], None]) -> Iterator[None]:
        """``hook`` runs on a cancel while the block runs (at once if one came first); after
        the block it is dropped: a late cancel stops nothing that has ended."""
        with self._lock:
            now = self._cancelled
            if not now:
                self._hooks.append(hook)
        if now:
            hook()
        try:
            yield
        finally:
            with self._lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)


def cancel_hook(
    cancel: RunCancel | None, hook: Callable[[], None]
) -> contextlib.AbstractContextManager[None]:
    """``cancel.hooked(hook)``, or nothing for a run no caller can cancel (the CLI's)."""
    return cancel.hooked(hook) if cancel is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run. ``pids`` is raised to 512 on gVisor (see the tier)."""

    memory_mb: int = 256
    cpus: float = 1.0
    pids: int = 128
    timeout_s: float = 10.0
    output_bytes: int = 64 * 1024  # per stream (stdout and stderr each)
    tmpfs_mb: int = 64

    @classmethod
    def from_config(cls, section: Any, **overrides: Any) -> Limits:
        """Limits from ``Config.sandbox`` with per-call overrides (``None`` values are ignored)."""
        base = cls(
            memory_mb=section.memory_mb,
            cpus=section.cpus,
            pids=section.pids,
            timeout_s=section.timeout_s,
            output_bytes=section.output_bytes,
        )
        return base.override(**overrides)

    def override(self, **overrides: Any) -> Limits:
        """A copy with the given non-None fields replaced."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class SandboxRequest:
    """One thing to run: an argv (``command``) or Python source (``code``), never both.

    ``files`` (relative name -> content) are placed in the working directory
    (``/tmp/work``, on the sandbox's tmpfs) before the command starts.
    """

    command: tuple[str, ...] = ()
    code: str | None = None
    stdin: bytes | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if bool(self.command) == (self.code is not None):
            raise ArgumentsInvalid("exactly one of command or code is required")
        if self.code is not None and len(self.code.encode()) > MAX_CODE_BYTES:
            raise ArgumentsInvalid(f"code is larger than {MAX_CODE_BYTES} bytes")
        for name in self.files:
            parts = name.split("/")
            if not _SAFE_NAME.fullmatch(name) or any(p in ("", ".", "..") for p in parts):
                raise ArgumentsInvalid(f"input file name {name!r} is not a safe relative path")

    def argv(self) -> list[str]:
        """The argv run inside the sandbox."""
        if self.code is not None:
            return [SANDBOX_PYTHON, "-I", "-c", self.code]
        return list(self.command)


@dataclass(frozen=True)
class SandboxResult:
    """What a run produced. ``killed`` says which limit stopped it ("none" when none did)."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    killed: KilledReason
    tier: Tier
    duration_s: float

    @property
    def truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (text decoded with replacement)."""
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "truncated": self.truncated,
            "tier": self.tier,
            "killed": self.killed,
            "duration_s": round(self.duration_s, 4),
        }


@dataclass(frozen=True)
class ToolNeeds:
    """What a tool declares it needs (input to the risk assessment)."""

    network: bool = False
    filesystem: bool = False
    external_apis: tuple[str, ...] = ()
