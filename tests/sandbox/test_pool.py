"""Warm pool: served calls behave like cold ones, stay isolated, and leave nothing behind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.config.model import Config
from gateway.sandbox import SandboxManager, SandboxRequest

from .conftest import own_leftovers, require_tier

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


@pytest.fixture(scope="module", params=["docker", "gvisor"])
def pooled(request: pytest.FixtureRequest, manager: SandboxManager) -> Iterator[tuple[SandboxManager, str]]:
    require_tier(manager, request.param)
    cfg = Config.model_validate({"sandbox": {"timeout_s": 5.0, "memory_mb": 128}})
    m = SandboxManager(cfg, sweep_orphans=False)
    m.start_warm_pool(1)
    pool = m.warm_pool
    assert pool is not None and pool.wait_ready(request.param, timeout_s=60)
    yield m, str(request.param)
    m.close()
    assert own_leftovers(m, request.param) == []


def served(m: SandboxManager, tier: str, req: SandboxRequest):  # type: ignore[no-untyped-def]
    pool = m.warm_pool
    assert pool is not None and pool.wait_ready(tier, timeout_s=60)
    r = m.run(tier, req, m.limits())
    assert pool.last_served_from_pool(tier), "the call did not come from the pool"
    return r


def test_pooled_call_matches_a_cold_one(pooled: tuple[SandboxManager, str]) -> None:
    m, tier = pooled
    code = (
        "import os,sys\nprint(open('d/in.txt').read(), sys.stdin.read(), os.getuid(), os.getcwd())\n"
        "print('warn', file=sys.stderr)\nsys.exit(4)"
    )
    r = served(m, tier, SandboxRequest(code=code, stdin=b"IN", files={"d/in.txt": b"FILE"}))
    assert (r.exit_code, r.stdout, r.stderr, r.killed) == (4, b"FILE IN 65534 /tmp/work\n", b"warn\n", "none")
    r = served(m, tier, SandboxRequest(command=("/bin/sh", "-c", "echo $HOME; exit 3")))
    assert (r.exit_code, r.stdout) == (3, b"/tmp\n")


def test_pooled_python_ends_like_python_c(pooled: tuple[SandboxManager, str]) -> None:
    m, tier = pooled
    code = (
        "import atexit, threading, time\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "print('main done')"
    )
    r = served(m, tier, SandboxRequest(code=code))
    assert (r.exit_code, r.stdout) == (0, b"main done\nthread done\natexit ran\n")
    r = served(m, tier, SandboxRequest(code="raise ValueError('boom')"))
    assert r.exit_code == 1
    assert r.stderr.startswith(b"Traceback") and r.stderr.endswith(b"ValueError: boom\n")
    assert r.stderr.count(b'File "<string>"') == 1  # the runner's own frame is not shown
    r = served(m, tier, SandboxRequest(code="raise SystemExit('bye')"))
    assert (r.exit_code, r.stderr) == (1, b"bye\n")


def test_a_forged_exit_trailer_does_not_win(pooled: tuple[SandboxManager, str]) -> None:
    m, tier = pooled
    code = "import os\nos.write(2, b'\\0symbi-exit:0\\0')\nraise SystemExit(9)"
    r = served(m, tier, SandboxRequest(code=code))
    assert r.exit_code == 9


def test_calls_do_not_share_state(pooled: tuple[SandboxManager, str]) -> None:
    m, tier = pooled
    served(m, tier, SandboxRequest(command=("/bin/sh", "-c", "echo secret > /tmp/left-behind")))
    r = served(m, tier, SandboxRequest(command=("/bin/sh", "-c", "cat /tmp/left-behind || echo clean")))
    assert r.stdout == b"clean\n"


def test_limits_hold_in_the_pool(pooled: tuple[SandboxManager, str]) -> None:
    m, tier = pooled
    r = served(m, tier, SandboxRequest(code="while True: pass"))
    assert r.killed == "timeout"
    r = served(m, tier, SandboxRequest(code="x = []\nwhile True: x.append(bytearray(8 << 20))"))
    assert r.killed == "memory"
    r = served(
        m, tier, SandboxRequest(code="import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)")
    )
    assert r.exit_code == 1 and b"Error" in r.stderr
