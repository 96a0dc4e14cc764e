"""Warm pool: a Docker tier that is not usable when the pool starts is pooled once it is (it
used to be left out for the gateway's life: one failed probe under load, every call cold)."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from gateway.config.model import Config
from gateway.sandbox import SandboxManager, SandboxRequest
from gateway.sandbox.base import AVAILABILITY_TTL_S
from gateway.sandbox.docker_tier import docker_client

from .conftest import own_leftovers, require_tier

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def test_a_tier_unusable_at_pool_start_is_pooled_once_usable(manager: SandboxManager) -> None:
    require_tier(manager, "docker")
    # The unusable state is real: the tier's image does not exist yet, so its probe fails
    # exactly as it does when Docker is slow or the image is being rebuilt; tagging the real
    # image under that name later makes the same probe pass. Nothing is faked.
    image = f"symbi-sandbox-late-{uuid.uuid4().hex[:12]}:latest"
    cfg = Config.model_validate({"sandbox": {"image": image, "timeout_s": 5.0, "memory_mb": 128}})
    m = SandboxManager(cfg, sweep_orphans=False)
    assert not m.available("docker")[0]  # unusable when the pool starts
    real = docker_client().images.get(manager.config.sandbox.image)
    try:
        m.start_warm_pool(1)
        pool = m.warm_pool
        assert pool is not None
        # (the probe above cached "unusable": the refill thread's first probe reads it)
        assert not pool.wait_ready("docker", timeout_s=0.5)
        repo, _, tag = image.partition(":")
        real.tag(repo, tag)
        # the refill's next retry (its back-off is a few seconds by now) probes afresh: well
        # within the probe cache's TTL, which a retry reading the cache would wait out
        assert pool.wait_ready("docker", timeout_s=AVAILABILITY_TTL_S - 10)
        m.run("docker", SandboxRequest(command=("/bin/true",)), m.limits())
        assert pool.last_served_from_pool("docker")
    finally:
        m.close()
        with contextlib.suppress(Exception):
            docker_client().images.remove(image, noprune=True)
    assert own_leftovers(m, "docker") == []
