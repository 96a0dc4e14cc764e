"""Warm pool close: whatever is in flight when it comes (a refill starting, a call running),
nothing of the pool is left once it returns. Real pools and containers; the only stand-in is a
wrapper around the real ``create`` that tells the test when the refill's container exists."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config.model import Config
from gateway.errors import SandboxInterrupted
from gateway.sandbox import SandboxManager, SandboxRequest, SandboxResult
from gateway.sandbox.docker_tier import DockerTier

from .conftest import own_leftovers, require_tier
from .test_pool import served

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

Pool = tuple[SandboxManager, str, set[str]]


@pytest.fixture(params=["docker", "gvisor"])
def fresh_pool(request: pytest.FixtureRequest, manager: SandboxManager) -> Iterator[Pool]:
    """A pool of its own per test (closed by the test at a chosen moment), with what this
    process had left in the tier before it (another module's pool may still be up)."""
    require_tier(manager, request.param)
    before = set(own_leftovers(manager, request.param))
    m = SandboxManager(Config.model_validate({"sandbox": {"timeout_s": 20.0}}), sweep_orphans=False)
    m.start_warm_pool(1)
    yield m, str(request.param), before
    m.close()


def test_a_close_while_a_refill_is_starting_leaves_no_container(
    fresh_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    m, tier, before = fresh_pool
    created = threading.Event()
    docker_tier = m.tiers[tier]
    assert isinstance(docker_tier, DockerTier)
    real_create = docker_tier.create

    def create(*args: Any, **kwargs: Any) -> str:  # the real create; only tells the test it ran
        cid = real_create(*args, **kwargs)
        created.set()
        return cid

    monkeypatch.setattr(m.tiers[tier], "create", create)
    served(m, tier, SandboxRequest(command=("/bin/true",)))  # the refill thread starts another
    assert created.wait(60)  # the replacement exists and is starting: close now
    m.close()
    assert set(own_leftovers(m, tier)) - before == set()


def test_a_close_during_a_call_waits_for_it_and_leaves_no_container(
    fresh_pool: Pool,
) -> None:
    m, tier, before = fresh_pool
    pool = m.warm_pool
    assert pool is not None and pool.wait_ready(tier, timeout_s=60)
    outcome: list[SandboxResult] = []
    caller = threading.Thread(
        target=lambda: outcome.append(
            m.run(tier, SandboxRequest(command=("/bin/sh", "-c", "sleep 3; echo done")))
        ),
    )
    caller.start()
    end = time.monotonic() + 60
    while not pool.last_served_from_pool(tier) and time.monotonic() < end:
        time.sleep(0.01)
    assert pool.last_served_from_pool(tier), "the call did not come from the pool"
    m.close()  # the call is in flight: its container is removed only after it ends
    assert set(own_leftovers(m, tier)) - before == set()
    caller.join(60)
    assert [(r.exit_code, r.stdout) for r in outcome] == [(0, b"done\n")]


def _pooled_sleep(m: SandboxManager, tier: str) -> tuple[threading.Thread, list[object]]:
    """A 15 s call started in a thread and served from the pool; its result or exception lands
    in the list."""
    pool = m.warm_pool
    assert pool is not None
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(m.run(tier, SandboxRequest(command=("/bin/sleep", "15"))))
        except Exception as e:  # noqa: BLE001 - the outcome under test
            outcome.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    end = time.monotonic() + 60
    while not pool.last_served_from_pool(tier) and time.monotonic() < end:
        time.sleep(0.01)
    assert pool.last_served_from_pool(tier), "the call did not come from the pool"
    return caller, outcome


def test_a_call_cut_short_by_close_is_interrupted_and_leaves_no_container(fresh_pool: Pool) -> None:
    """A call still running when close's grace ends loses its container: it fails with
    SandboxInterrupted (a reason a client can read), never a raw Docker error nor a result."""
    m, tier, before = fresh_pool
    pool = m.warm_pool
    assert pool is not None and pool.wait_ready(tier, timeout_s=60)
    caller, outcome = _pooled_sleep(m, tier)
    pool.close(grace_s=0.5)  # the call sleeps 15 s: it is cut short
    caller.join(60)
    assert [type(x) for x in outcome] == [SandboxInterrupted]
    assert set(own_leftovers(m, tier)) - before == set()


def test_a_pooled_call_whose_container_another_party_removes_is_interrupted(fresh_pool: Pool) -> None:
    """Not the pool's close: someone else (an operator, a sweep) removes the container under a
    pooled call. The call fails with SandboxInterrupted, not a raw Docker error nor a result."""
    from gateway.sandbox.docker_tier import docker_client

    m, tier, before = fresh_pool
    pool = m.warm_pool
    assert pool is not None and pool.wait_ready(tier, timeout_s=60)
    cid = pool._ready[tier][0].cid  # the one ready container: the call below takes it
    caller, outcome = _pooled_sleep(m, tier)
    time.sleep(0.5)  # let the job reach the runner (either way the outcome must be the same)
    docker_client().api.remove_container(cid, force=True)
    caller.join(60)
    assert [type(x) for x in outcome] == [SandboxInterrupted]
    m.close()
    assert set(own_leftovers(m, tier)) - before == set()


def test_a_call_the_pool_cannot_serve_runs_cold_and_says_so(
    fresh_pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Limits other than the pool's, or no ready container: the call runs cold (a container made
    with its own limits), never in a pooled one, and ``last_served_from_pool`` says so. The
    stand-in: the refill's next create waits (the real one) so the pool stays empty."""
    m, tier, _ = fresh_pool
    pool = m.warm_pool
    assert pool is not None and pool.wait_ready(tier, timeout_s=60)
    release = threading.Event()
    docker_tier = m.tiers[tier]
    assert isinstance(docker_tier, DockerTier)
    real_create = docker_tier.create

    def create(*args: Any, **kwargs: Any) -> str:
        if threading.current_thread().name.startswith("sandbox-pool-"):
            release.wait(120)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(m.tiers[tier], "create", create)
    try:
        other = m.limits(memory_mb=pool.limits.memory_mb + 64)
        assert m.run(tier, SandboxRequest(command=("/bin/true",)), other).exit_code == 0
        assert pool.last_served_from_pool(tier) is False
        assert len(pool._ready[tier]) == 1  # the ready one was not taken
        served(m, tier, SandboxRequest(command=("/bin/true",)))  # takes it; the refill now waits
        assert m.run(tier, SandboxRequest(command=("/bin/true",)), m.limits()).exit_code == 0
        assert pool.last_served_from_pool(tier) is False
    finally:
        release.set()
