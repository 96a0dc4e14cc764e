"""Request validation and limits from config (no sandbox needed)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from gateway.config.model import Config
from gateway.errors import ArgumentsInvalid
from gateway.sandbox import Limits, SandboxRequest
from gateway.sandbox.types import MAX_CODE_BYTES, RunCancel


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "/abs", "a/../../b", "", "a//b", "./x", "x/.", "bad\nname", "trailing\n"]
)
def test_unsafe_input_file_names_rejected(name: str) -> None:
    with pytest.raises(ArgumentsInvalid):
        SandboxRequest(code="pass", files={name: b"x"})


def test_exactly_one_of_command_or_code() -> None:
    with pytest.raises(ArgumentsInvalid):
        SandboxRequest()
    with pytest.raises(ArgumentsInvalid):
        SandboxRequest(command=("true",), code="pass")
    with pytest.raises(ArgumentsInvalid):
        SandboxRequest(code="x" * (MAX_CODE_BYTES + 1))
    assert SandboxRequest(code="print(1)").argv()[-1] == "print(1)"
    assert SandboxRequest(command=("echo", "hi"), files={"d/a.txt": b""}).argv() == ["echo", "hi"]


def test_limits_from_config_with_overrides() -> None:
    cfg = Config.model_validate({"sandbox": {"memory_mb": 512, "pids": 99, "timeout_s": 3.0}})
    lim = Limits.from_config(cfg.sandbox, timeout_s=1.5, pids=None)
    assert (lim.memory_mb, lim.pids, lim.timeout_s, lim.output_bytes) == (
        512,
        99,
        1.5,
        cfg.sandbox.output_bytes,
    )


def test_a_cancel_runs_the_hooks_of_the_runs_in_progress_only() -> None:
    """A hook runs on a cancel while its block runs (on a thread of its own), at once when the
    cancel came first, and never after its block: a late cancel stops nothing that ended."""
    ran: list[str] = []
    done = threading.Event()

    def hook(name: str) -> Callable[[], None]:
        def run() -> None:
            ran.append(name)
            done.set()

        return run

    ended = RunCancel()
    with ended.hooked(hook("ended")):
        pass
    ended.cancel()
    live = RunCancel()
    with live.hooked(hook("live")):
        live.cancel()
        assert done.wait(5)
    with live.hooked(hook("late")):  # cancelled before the block: at once, on this thread
        pass
    assert ran == ["live", "late"] and live.cancelled and ended.cancelled
