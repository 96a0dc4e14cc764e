"""Docker API calls and container removal hold on a busy host: real daemon, real containers."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import SandboxError, SandboxInterrupted
from gateway.sandbox import SandboxManager, SandboxRequest
from gateway.sandbox.base import owner_tag
from gateway.sandbox.docker_api import (
    RUNSC_WRAPPER,
    Reclaims,
    _transient,
    answer_lost,
    backoff,
    docker_errors,
    docker_knows,
    reclaim,
    remove_container,
    runsc_refusal,
)
from gateway.sandbox.docker_tier import DockerTier, GvisorTier, docker_client
from gateway.sandbox.types import LABEL_OWNER

from .conftest import require_tier

pytestmark = pytest.mark.sandbox


@pytest.fixture
def churned_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Another thread sets and unsets a variable without pause, as pytest's main thread does with
    PYTEST_CURRENT_TEST at every test phase while a warm pool's reaper calls Docker. A few
    thousand variables make each read of the environment long enough for the race to show."""
    for i in range(3000):
        monkeypatch.setenv(f"SYMBI_TEST_PAD_{i}", "x")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            os.environ["SYMBI_TEST_CHURN"] = "1"
            del os.environ["SYMBI_TEST_CHURN"]

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    yield
    stop.set()
    t.join()


def test_docker_calls_hold_while_another_thread_changes_the_environment(
    manager: SandboxManager, churned_environ: None
) -> None:
    require_tier(manager, "docker")
    api = docker_client().api
    for _ in range(100):
        api.ping()  # the SDK's HTTP layer read proxies from os.environ here: KeyError mid-read


def _removing(api: Any, cid: str) -> bool:
    try:
        return bool(api.inspect_container(cid)["State"]["Status"] == "removing")
    except Exception:  # noqa: BLE001 - gone already
        return False


def _raw_remove(api: Any, cid: str) -> None:
    with contextlib.suppress(Exception):  # this one may lose the race: only the other is checked
        api.remove_container(cid, force=True)


@pytest.mark.parametrize("tier_name", ["docker", "gvisor"])
def test_a_removal_refused_while_another_is_in_progress_returns_once_the_container_is_gone(
    manager: SandboxManager, tier_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Docker answers 409 to a removal while another is in progress (a reaper and a pool close
    can meet so): the second one must not return while the container is still there."""
    import docker.errors

    require_tier(manager, tier_name)
    tier, client = manager.tiers[tier_name], docker_client()
    assert isinstance(tier, DockerTier)
    for _ in range(10):  # until the other removal is caught in progress (it takes a moment)
        cid = tier.create(client, ["/bin/sleep", "60"], {}, stdin_open=False, limits=manager.limits())
        client.api.start(cid)
        other = threading.Thread(target=_raw_remove, args=(client.api, cid))
        other.start()
        end = time.monotonic() + 10
        while not _removing(client.api, cid) and other.is_alive() and time.monotonic() < end:
            time.sleep(0.001)
        if _removing(client.api, cid):
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="symbi.sandbox"):
                tier.remove(cid)
            with pytest.raises(docker.errors.NotFound):
                client.api.inspect_container(cid)
            other.join()
            if any(r.levelno == logging.DEBUG and cid[:12] in r.getMessage() for r in caplog.records):
                return  # it was refused (409) at least once, retried, and returned once gone
        other.join()
    pytest.fail("no removal was refused as in progress: the race was not attacked")


@pytest.mark.parametrize("tier_name", ["docker", "gvisor"])
def test_a_running_container_is_removed_in_one_call(
    manager: SandboxManager, tier_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The removal is forced: a running container goes at once (without force Docker refuses
    it with 409 until it stops, which the retries would wait out)."""
    import docker.errors

    require_tier(manager, tier_name)
    tier, client = manager.tiers[tier_name], docker_client()
    assert isinstance(tier, DockerTier)
    cid = tier.create(client, ["/bin/sleep", "60"], {}, stdin_open=False, limits=manager.limits())
    client.api.start(cid)
    with caplog.at_level(logging.DEBUG, logger="symbi.sandbox"):
        assert tier.remove(cid) is True
    with pytest.raises(docker.errors.NotFound):
        client.api.inspect_container(cid)
    assert [r for r in caplog.records if cid[:12] in r.getMessage()] == []  # no refusal, no retry


def test_a_removal_that_keeps_failing_is_retried_then_logged_with_the_container_id(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import docker

    # a real client with nothing listening on its socket: every attempt is refused
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-daemon.sock", version="1.41")
    cid = "ab12" * 16
    with caplog.at_level(logging.DEBUG, logger="symbi.sandbox"):
        assert remove_container(cid, client=client, deadline_s=1.0) is False
    retries = [r for r in caplog.records if r.levelno == logging.DEBUG and cid[:12] in r.getMessage()]
    failed = [r for r in caplog.records if r.levelno == logging.WARNING and cid[:12] in r.getMessage()]
    # pauses 0.1, 0.2, 0.4 fit in the 1 s deadline, the next (0.8) does not: at most 3 retries
    # (a slow host makes fewer, never more), and at least 2
    assert 2 <= len(retries) <= 3 and len(failed) == 1


def test_retries_back_off_from_a_tenth_of_a_second_doubling_up_to_five() -> None:
    assert list(itertools.islice(backoff(), 8)) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_a_removal_with_no_time_left_is_tried_once_and_not_retried(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import docker

    client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-daemon.sock", version="1.41")
    with caplog.at_level(logging.DEBUG, logger="symbi.sandbox"):
        assert remove_container("cd34" * 16, client=client, deadline_s=0.0) is False
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_a_container_already_gone_counts_as_removed(
    manager: SandboxManager, caplog: pytest.LogCaptureFixture
) -> None:
    require_tier(manager, "docker")
    with caplog.at_level(logging.WARNING, logger="symbi.sandbox"):
        assert remove_container("0" * 64) is True
    assert caplog.records == []


def test_only_a_404_says_docker_does_not_know_a_container(manager: SandboxManager, tmp_path: Path) -> None:
    """The orphan sweep force-deletes the runsc state of containers Docker does not know: an
    error that is not a 404 (no daemon, a timeout) must not count as "unknown" (a live one's)."""
    import docker

    require_tier(manager, "docker")
    assert docker_knows("0" * 64) is False
    dead = docker.DockerClient(base_url=f"unix://{tmp_path}/no-daemon.sock", version="1.41")
    assert docker_knows("0" * 64, client=dead) is True


def test_docker_failures_become_the_sandbox_error_family(manager: SandboxManager, tmp_path: Path) -> None:
    """A container gone under a call is SandboxInterrupted; any other Docker failure (here: no
    daemon on the socket) SandboxError; the gateway's own errors pass through unchanged."""
    import docker

    require_tier(manager, "docker")
    with pytest.raises(SandboxInterrupted) as gone, docker_errors("a call"):
        docker_client().api.inspect_container("0" * 64)
    assert all(isinstance(r, str) and r for r in gone.value.reasons)
    dead = docker.DockerClient(base_url=f"unix://{tmp_path}/no-daemon.sock", version="1.41")
    with pytest.raises(SandboxError) as caught, docker_errors("a call"):
        dead.api.inspect_container("0" * 64)
    assert type(caught.value) is SandboxError
    assert all(isinstance(r, str) and r for r in caught.value.reasons)  # a reason to show a user
    with pytest.raises(SandboxInterrupted) as passed, docker_errors("a call"):
        raise SandboxInterrupted("ours")
    assert passed.value.message == "ours"


def _own_container(marker: str, timeout_s: float = 60) -> str:
    """The id of this process's running container whose command carries ``marker``."""
    api, end = docker_client().api, time.monotonic() + timeout_s
    while time.monotonic() < end:
        for c in api.containers(filters={"label": f"{LABEL_OWNER}={owner_tag()}"}):
            if marker in c["Command"]:
                return str(c["Id"])
        time.sleep(0.05)
    raise AssertionError(f"no running container with {marker!r}")


@pytest.mark.parametrize("tier_name", ["docker", "gvisor"])
def test_a_call_whose_container_is_removed_under_it_is_interrupted(
    manager: SandboxManager, tier_name: str
) -> None:
    """Another party (an operator, another gateway's sweep) removes the container of a running
    call: the call fails with SandboxInterrupted, not a raw Docker error nor a made-up result
    (the kill's exit 137 read as the memory limit's)."""
    require_tier(manager, tier_name)
    marker = f"{time.monotonic_ns()}"
    outcome: list[object] = []
    # The call's own time limit must not fire: with the default 10 s a loaded host (the full
    # suite) can take longer to list the container and remove it, and a call its own timeout
    # stopped first ends with that result, rightly (see tests/sandbox/test_docker_killed.py for
    # the limit firing while the removal kills)
    limits = manager.limits(timeout_s=120.0)

    def call() -> None:
        request = SandboxRequest(command=("/bin/sleep", f"600.{marker}"))
        try:
            outcome.append(manager.run(tier_name, request, limits))
        except Exception as e:  # noqa: BLE001 - the outcome under test
            outcome.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    docker_client().api.remove_container(_own_container(marker), force=True)
    caller.join(150)
    assert [type(x) for x in outcome] == [SandboxInterrupted]


def _impatient_client() -> Any:
    """A real client of the real daemon that gives up after 1 ms: a create's answer is lost for
    certain (a real loss is a 30 s timeout on a daemon too loaded to answer, which a test cannot
    make on purpose); the daemon still makes the container. The one stand-in of these tests."""
    import docker

    impatient = docker.DockerClient(**docker.utils.kwargs_from_env(), version="1.41", timeout=0.001)
    impatient.api.trust_env = False
    return impatient


def _container_events(since: str, owner: str) -> dict[str, set[str]]:
    """Docker's own record: the ids of ``owner``'s containers per action (create, destroy)."""
    events = docker_client().api.events(
        since=since,
        until=f"{time.time():.6f}",
        filters={"type": "container", "label": f"{LABEL_OWNER}={owner}"},
        decode=True,
    )
    seen: dict[str, set[str]] = {}
    for e in events:
        seen.setdefault(str(e.get("Action")), set()).add(str(e["Actor"]["ID"]))
    return seen


def _lost_create(tier: DockerTier, manager: SandboxManager, tries: int = 10) -> str:
    """Make a create whose answer the impatient client loses; returns when it began. On a loaded machine
    the client can be scheduled only after the daemon has answered, and then it reads the answer
    within its 1 ms: that create is removed and another is made, so the premise holds."""
    for _ in range(tries):
        since = f"{time.time():.6f}"  # Docker takes fractional seconds (the SDK's datetime: whole ones)
        try:
            made = tier.create(
                _impatient_client(), ["/bin/true"], {}, stdin_open=False, limits=manager.limits()
            )
        except SandboxError:
            return since
        docker_client().api.remove_container(made, force=True)  # answered in time: not the case here
    pytest.fail(f"each of {tries} creates was answered within 1 ms: no answer was lost")


def test_a_create_whose_answer_is_lost_leaves_no_container(manager: SandboxManager) -> None:
    """The client gives up on a create that the daemon completes: the tier finds the container
    by its name and removes it (off the call's path; its close awaits that), not at the next
    start's sweep. Docker's events show the container was made (the attack happened) and
    destroyed."""
    require_tier(manager, "docker")
    tier = manager.tiers["docker"]
    assert isinstance(tier, DockerTier)
    since = _lost_create(tier, manager)
    assert tier.reclaims.close() is True
    seen = _container_events(since, owner_tag())
    assert len(seen.get("create", set())) == 1
    assert seen["create"] <= seen.get("destroy", set())


def test_a_lost_create_fails_at_once_and_its_reclaim_is_awaited_at_close(
    manager: SandboxManager, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The failing call does not wait out the reclaim's look (up to 15 s on a daemon that never
    made the container): it fails with its SandboxError while the look goes on in the
    background; the tier's close awaits every look (here two). The creates' connection is
    refused (nothing is made), so each look runs to its deadline for certain."""
    import docker

    require_tier(manager, "docker")
    tier = DockerTier(manager.config.sandbox.image)
    tier.reclaims = Reclaims(deadline_s=1.0)
    dead = docker.DockerClient(base_url=f"unix://{tmp_path}/no-daemon.sock", version="1.41")
    with caplog.at_level(logging.DEBUG, logger="symbi.sandbox"):
        for looking in (1, 2):
            with pytest.raises(SandboxError) as failed:
                tier.create(dead, ["/bin/true"], {}, stdin_open=False, limits=manager.limits())
            assert tier.reclaims.pending() == looking  # still looking when the call already failed
            assert all(isinstance(r, str) and r for r in failed.value.reasons)  # a reason to show
        assert tier.reclaims.close(timeout_s=0.0) is False  # a bounded wait that ends first says so
        assert tier.reclaims.close() is True
    assert tier.reclaims.pending() == 0
    names = {
        m for r in caplog.records for m in re.findall(r"symbi-sandbox-[0-9]+-[0-9a-f]{32}", r.getMessage())
    }
    assert len(names) == 2
    for name in names:  # each looked for until its 1 s deadline (looks at 0, 0.1, 0.3, 0.7 s at most)
        mine = [r for r in caplog.records if name in r.getMessage()]
        assert 2 <= sum(r.levelno == logging.DEBUG for r in mine) <= 4
        assert sum(r.levelno == logging.WARNING for r in mine) == 1  # given up: the sweep's
    assert sum("reclaim" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING) == 1


def test_the_managers_close_awaits_its_tiers_reclaims(manager: SandboxManager, tmp_path: Path) -> None:
    """A reclaim still looking when the gateway closes is waited for, not left running."""
    import docker

    require_tier(manager, "docker")
    closing = SandboxManager(manager.config, sweep_orphans=False)
    tier = closing.tiers["docker"]
    assert isinstance(tier, DockerTier)
    tier.reclaims = Reclaims(deadline_s=1.0)
    dead = docker.DockerClient(base_url=f"unix://{tmp_path}/no-daemon.sock", version="1.41")
    with pytest.raises(SandboxError):
        tier.create(dead, ["/bin/true"], {}, stdin_open=False, limits=closing.limits())
    closing.close()
    assert tier.reclaims.pending() == 0


def test_a_container_made_after_its_owner_closed_is_removed_by_the_next_sweep(
    manager: SandboxManager,
) -> None:
    """A lost create the daemon completes after the gateway closed (its reclaim gave up) and
    exited: the container carries its dead owner's label, so the next start's sweep removes it."""
    require_tier(manager, "docker")
    child = (
        "import os, sys\n"
        "from gateway.config.model import Config\n"
        "from gateway.sandbox.docker_api import Reclaims\n"
        "from gateway.sandbox.docker_tier import DockerTier\n"
        "from gateway.sandbox.types import Limits\n"
        "from tests.sandbox.test_docker_api import _impatient_client\n"
        "from gateway.sandbox.base import owner_tag\n"
        "print(owner_tag(), flush=True)\n"
        "tier = DockerTier(sys.argv[1])\n"
        "tier.reclaims = Reclaims(deadline_s=0.0)  # one look, at once: the container comes later\n"
        "try:\n"
        "    tier.create(_impatient_client(), ['/bin/true'], {}, stdin_open=False,\n"
        "                limits=Limits.from_config(Config().sandbox))\n"
        "except Exception:\n"
        "    pass\n"
        "tier.reclaims.close()\n"
        "os._exit(0)\n"
    )
    since = f"{time.time():.6f}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run(
        [sys.executable, "-c", child, manager.config.sandbox.image],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    owner = out.stdout.split()[0]
    seen: dict[str, Any]
    end, seen = time.monotonic() + 60, {}
    while not seen.get("create") and time.monotonic() < end:  # the daemon may still be making it
        time.sleep(0.1)
        seen = _container_events(since, owner)
    assert len(seen.get("create", set())) == 1
    manager.tiers["docker"].cleanup_orphans()
    seen = _container_events(since, owner)
    assert seen["create"] <= seen.get("destroy", set())


def test_a_lost_create_that_made_nothing_is_looked_for_until_the_deadline_then_logged(
    manager: SandboxManager, caplog: pytest.LogCaptureFixture
) -> None:
    require_tier(manager, "docker")
    name = f"symbi-sandbox-never-made-{time.monotonic_ns()}"
    with caplog.at_level(logging.DEBUG, logger="symbi.sandbox"):
        assert reclaim(name, deadline_s=1.0) is False
    looks = [r for r in caplog.records if r.levelno == logging.DEBUG and name in r.getMessage()]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and name in r.getMessage()]
    # looks at 0, 0.1, 0.3, 0.7 s fit in the deadline, the next pause (0.8 s) does not
    assert 2 <= len(looks) <= 4 and len(warned) == 1


def test_a_create_docker_refuses_is_not_looked_for(
    manager: SandboxManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A 4xx (here: no such image) is Docker's answer: nothing was made, nothing to look for."""
    require_tier(manager, "docker")
    tier = DockerTier("symbi-no-such-image:none")
    with caplog.at_level(logging.DEBUG, logger="symbi.sandbox"), pytest.raises(SandboxError):
        tier.create(docker_client(), ["/bin/true"], {}, stdin_open=False, limits=manager.limits())
    assert [r for r in caplog.records if "symbi-sandbox-" in r.getMessage()] == []


def _api_error(status: int | None) -> Exception:
    """docker-py's own APIError as it raises it for an HTTP answer of ``status``."""
    import docker.errors
    import requests

    response = None
    if status is not None:
        response = requests.Response()
        response.status_code = status
    err: Exception = docker.errors.APIError("refused", response=response)  # the SDK is untyped
    return err


@pytest.mark.parametrize(
    ("status", "lost", "retried"),
    [
        (None, True, False),
        (400, False, False),
        (404, False, False),
        (409, False, True),
        (499, False, False),
        (500, True, True),
        (503, True, True),
    ],
)
def test_which_answers_count_as_lost_or_worth_a_retry(status: int | None, lost: bool, retried: bool) -> None:
    e = _api_error(status)
    assert (answer_lost(e), _transient(e)) == (lost, retried)


def test_no_answer_at_all_is_lost_and_worth_a_retry() -> None:
    import requests

    for e in (requests.exceptions.ReadTimeout("timed out"), requests.exceptions.ConnectionError("reset")):
        assert (answer_lost(e), _transient(e)) == (True, True)
    assert (answer_lost(KeyError("x")), _transient(KeyError("x"))) == (False, False)


def test_the_gvisor_tier_refuses_a_runsc_runtime_in_the_hosts_network_namespace(tmp_path: Path) -> None:
    """dockerd's ``runsc`` registered as the bare binary puts every sandbox's control socket
    (which answers any uid) in the host's network namespace: the gvisor tier is then
    unavailable, naming the fix; so is a wrapper another user could rewrite (dockerd runs it
    as root). The registrations are ``docker info``'s shape, as dicts: reloading the shared
    dockerd with each would disturb every other test (the one here is checked below)."""
    wrapper = tmp_path / "symbi-runsc"
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o755)
    good = {"runc": {"path": "runc"}, "runsc": {"path": str(wrapper), "runtimeArgs": ["--network=none"]}}
    assert runsc_refusal(good, str(wrapper)) is None
    bare = {**good, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}
    networked = {**good, "runsc": {"path": str(wrapper)}}
    for refused in (bare, networked, {"runc": good["runc"]}):
        assert runsc_refusal(refused, str(wrapper)) is not None, refused
    wrapper.chmod(0o775)  # another user (its group) could put a command of theirs in it
    assert runsc_refusal(good, str(wrapper)) is not None
    wrapper.chmod(0o755)
    os.chown(wrapper, 999, 999)  # not root's
    assert runsc_refusal(good, str(wrapper)) is not None
    assert GvisorTier("symbi-sandbox:latest").runtime_refusal(bare) is not None
    assert DockerTier("symbi-sandbox:latest").runtime_refusal(bare) is None


def test_this_hosts_runsc_runtime_is_the_wrapper(manager: SandboxManager) -> None:
    require_tier(manager, "gvisor")
    runtimes = docker_client().info()["Runtimes"]
    assert runtimes["runsc"]["path"] == RUNSC_WRAPPER
    assert runsc_refusal(runtimes) is None
