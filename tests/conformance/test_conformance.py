"""The MCP conformance suite against the fixture server directly and through the gateway.

In one run: the fixture server (``fixture_server.py``, SDK ``MCPServer``) on a free
127.0.0.1 port, the suite against it; then ``symbi serve`` in pass-through mode in front of
it (the fixture as an HTTP upstream, and again as a stdio upstream), the same suite against
the gateway. The gateway must pass every check the fixture passes directly: a check that
passes directly and not through the gateway is a forwarding gap and fails the test.
Both counts go to ``tests/conformance/last-run.json`` (not committed) and to stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conformance._suite import (
    HERE,
    INSTALL_HINT,
    NOT_FORWARDABLE,
    Run,
    assert_gateway_keeps_up,
    missing_tools,
    regressions,
    retry_lost,
    run_suite,
)
from tests.conftest import free_port, port_owner, write_config
from tests.server._http import serve

pytestmark = [pytest.mark.npm, pytest.mark.slow]

FIXTURE = HERE / "fixture_server.py"
LAST_RUN = HERE / "last-run.json"
# (suite version, --requirements): 0.1.16 runs all active scenarios (protocol <= 2025-11-25);
# the alpha runs exactly what each spec revision requires.
SUITE_RUNS = [("0.1.16", None), ("0.2.0-alpha.11", "2025-11-25"), ("0.2.0-alpha.11", "2026-07-28")]
IDS = ["0.1.16-active", "alpha-2025-11-25", "alpha-2026-07-28"]


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fixture server exited {proc.returncode}: {log.read_text()[-2000:]}")
        if port_owner(proc.pid, port):  # its own socket: another run's server may answer there
            return
        time.sleep(0.05)
    raise TimeoutError(f"fixture server not listening on {port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module", autouse=True)
def _tools_present() -> None:
    missing = missing_tools()
    if missing:
        pytest.fail(f"conformance tooling missing ({INSTALL_HINT}): {', '.join(missing)}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    LAST_RUN.write_text("{}\n")  # this run's numbers only
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="module")
def fixture_url(workdir: Path) -> Iterator[str]:
    port = free_port()
    log = workdir / "fixture.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(FIXTURE), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_port(port, proc, log)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _gateway_config(workdir: Path, name: str, upstream: str, protocol: str = "legacy") -> Path:
    folder = workdir / name
    folder.mkdir()
    # Policy enforcement is off on purpose: this measures protocol forwarding, and the
    # conformance principal is not in any policy. Verification "warn" lists the unsigned
    # fixture's tools. Anonymous HTTP access is the explicit opt-in for tests.
    return write_config(
        folder,
        f"""
        [security]
        enforce_policies = false

        [sandbox]
        code_tools = false

        [bus]
        enabled = false

        [http]
        anonymous_principal = "conformance"
        access_log = false

        [servers.fixture]
        {upstream}
        pass_through = true
        verification = "warn"
        protocol = "{protocol}"
        """,
    )


# The 2026-07-28 run needs the gateway to speak 2026-07-28 to its upstream too (input-required
# results exist only there), so that run goes through a gateway with `protocol = "auto"`.
PROTOCOL = {"0.1.16-active": "legacy", "alpha-2025-11-25": "legacy", "alpha-2026-07-28": "auto"}


@pytest.fixture(scope="module")
def gateways(workdir: Path, fixture_url: str) -> Iterator[dict[tuple[str, str], str]]:
    """One gateway per (upstream transport, upstream protocol), started on first use."""
    import contextlib

    upstreams = {
        "http": f'url = "{fixture_url}"',
        "stdio": f'command = "{sys.executable}"\nargs = ["{FIXTURE}", "--stdio"]',
    }
    urls: dict[tuple[str, str], str] = {}
    with contextlib.ExitStack() as stack:

        class Lazy(dict):  # type: ignore[type-arg]
            def __missing__(self, key: tuple[str, str]) -> str:
                transport, protocol = key
                cfg = _gateway_config(workdir, f"gw-{transport}-{protocol}", upstreams[transport], protocol)
                self[key] = stack.enter_context(serve(cfg)) + "/mcp"
                return str(self[key])

        yield Lazy(urls)


@pytest.fixture(scope="module")
def direct_runs(workdir: Path, fixture_url: str) -> dict[str, Run]:
    """The suite against the fixture directly, once per suite run, shared by the tests."""
    return {
        ident: run_suite(version, fixture_url, workdir / f"direct-{ident}", req)
        for ident, (version, req) in zip(IDS, SUITE_RUNS, strict=True)
    }


def _record(key: str, direct: Run, gateway: Run, lost: list[str], recovered: list[str]) -> None:
    data = json.loads(LAST_RUN.read_text() or "{}")
    data[key] = {
        "direct": direct.summary(),
        "gateway": gateway.summary(),
        "lost_through_gateway": lost,
        "passed_only_on_a_second_run": recovered,
        "not_compared": sorted(f"{s}/{c}" for s, c in NOT_FORWARDABLE),
    }
    LAST_RUN.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(
        f"\n{key}: direct {direct.passed}/{direct.passed + direct.failed} passed, "
        f"gateway {gateway.passed}/{gateway.passed + gateway.failed} passed"
        + (f" (passed only on a second run: {', '.join(recovered)})" if recovered else "")
    )


def _compare(key: str, direct: Run, run_gateway: Callable[[], Run]) -> None:
    gateway, recovered = retry_lost(direct, run_gateway(), run_gateway)
    _record(key, direct, gateway, regressions(direct, gateway), recovered)
    assert_gateway_keeps_up(direct, gateway)


def test_fixture_passes_the_active_suite(direct_runs: dict[str, Run]) -> None:
    # The fixture is the baseline: if it fails the 2025-11-25 scenarios, the comparison means little.
    run = direct_runs["0.1.16-active"]
    assert run.passed >= 40, run.summary()
    assert run.failed == 0, run.summary()
    assert direct_runs["alpha-2025-11-25"].failed == 0, direct_runs["alpha-2025-11-25"].summary()


@pytest.mark.parametrize("ident", IDS)
def test_gateway_http_upstream_passes_what_the_fixture_passes(
    ident: str, direct_runs: dict[str, Run], gateways: dict[tuple[str, str], str], workdir: Path
) -> None:
    version, req = SUITE_RUNS[IDS.index(ident)]
    url, tries = gateways["http", PROTOCOL[ident]], iter(range(2))
    _compare(
        f"{ident} http-upstream",
        direct_runs[ident],
        lambda: run_suite(version, url, workdir / f"gw-http-{ident}-{next(tries)}", req),
    )


@pytest.mark.parametrize("ident", IDS)
def test_gateway_stdio_upstream_passes_what_the_fixture_passes(
    ident: str, direct_runs: dict[str, Run], gateways: dict[tuple[str, str], str], workdir: Path
) -> None:
    version, req = SUITE_RUNS[IDS.index(ident)]
    url, tries = gateways["stdio", PROTOCOL[ident]], iter(range(2))
    _compare(
        f"{ident} stdio-upstream",
        direct_runs[ident],
        lambda: run_suite(version, url, workdir / f"gw-stdio-{ident}-{next(tries)}", req),
    )


def test_comparison_flags_a_check_lost_through_the_gateway(tmp_path: Path) -> None:
    # The comparison itself must be able to fail: a check passing directly and failing via
    # the gateway is reported even when the totals are equal.
    direct = Run("direct", {("tools-list", "tools-list"): "SUCCESS", ("ping", "ping"): "FAILURE"})
    gateway = Run("gateway", {("tools-list", "tools-list"): "FAILURE", ("ping", "ping"): "SUCCESS"})
    assert gateway.passed == direct.passed
    assert regressions(direct, gateway) == ["tools-list/tools-list: FAILURE"]
    with pytest.raises(AssertionError):
        assert_gateway_keeps_up(direct, gateway)
    assert_gateway_keeps_up(direct, Run("gateway", dict(direct.checks)))  # equal runs pass
    # Only the listed transport-only checks are left out; anything else lost still fails.
    (excluded,) = NOT_FORWARDABLE
    with_excluded = Run("direct", {**direct.checks, excluded: "SUCCESS"})
    assert_gateway_keeps_up(with_excluded, Run("gateway", {**direct.checks, excluded: "INFO"}))


def test_a_check_lost_once_is_taken_from_a_second_run_and_one_lost_twice_still_fails() -> None:
    a, b = ("server-stateless", "no-independent-requests-on-stream"), ("tools-list", "tools-list")
    direct = Run("direct", {a: "SUCCESS", b: "SUCCESS"})
    first = Run("gateway", {a: "FAILURE", b: "FAILURE"}, {a: "timed out", b: "lost"})
    runs: list[Run] = []

    def again() -> Run:
        runs.append(Run("gateway-2", {a: "SUCCESS", b: "FAILURE"}))
        return runs[-1]

    merged, recovered = retry_lost(direct, first, again)
    assert len(runs) == 1 and recovered == ["server-stateless/no-independent-requests-on-stream"]
    assert merged.checks == {a: "SUCCESS", b: "FAILURE"}
    with pytest.raises(AssertionError):
        assert_gateway_keeps_up(direct, merged)  # lost in both runs: still a forwarding gap
    # Nothing lost: no second run.
    same, none = retry_lost(direct, Run("gateway", dict(direct.checks)), again)
    assert len(runs) == 1 and none == [] and same.checks == direct.checks
