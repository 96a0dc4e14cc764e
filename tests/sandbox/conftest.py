"""Fixtures for the sandbox tiers: one real manager per session, tiers as parameters.

A tier test skips only when the tier truly cannot run here, after one attempt to set it
up with scripts/setup-sandbox.sh (as root). Set SYMBI_SANDBOX_REQUIRED=1 to turn those
skips into failures (CI, where all three tiers must run). SYMBI_SANDBOX_NO_SETUP=1 skips the
set-up attempt (mutation testing: a mutant that breaks a tier must fail, not reinstall it).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config.model import Config
from gateway.sandbox import SandboxManager

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup-sandbox.sh"
ALL_TIERS = ("bwrap", "docker", "gvisor")


@pytest.fixture(scope="session")
def manager() -> Iterator[SandboxManager]:
    m = SandboxManager(Config())
    setup = os.environ.get("SYMBI_SANDBOX_NO_SETUP") != "1" and os.geteuid() == 0 and SETUP.exists()
    if not all(ok for ok, _ in m.doctor().values()) and setup:
        subprocess.run(["bash", str(SETUP)], timeout=600, check=False)
        m.doctor(refresh=True)
    yield m
    m.close()


def require_tier(manager: SandboxManager, tier: str) -> None:
    ok, reason = manager.available(tier)
    if not ok:
        if os.environ.get("SYMBI_SANDBOX_REQUIRED") == "1":
            pytest.fail(f"sandbox tier {tier} is required here but unavailable: {reason}")
        pytest.skip(f"sandbox tier {tier} cannot run on this machine: {reason}")


@pytest.fixture(params=ALL_TIERS)
def tier(request: pytest.FixtureRequest, manager: SandboxManager) -> str:
    require_tier(manager, request.param)
    return str(request.param)


def own_leftovers(manager: SandboxManager, tier: str) -> list[str]:
    """``manager.leftovers()[tier]`` without what other dead processes left: under pytest-xdist
    another worker's killed gateway (tests/sandbox/test_cleanup.py kills some on purpose) has
    orphans until the next sweep, which are not this test's. Kept: this process's cgroups and
    containers, and runsc state Docker no longer knows (it names no owner)."""
    from gateway.sandbox.base import owner_tag
    from gateway.sandbox.docker_tier import docker_client
    from gateway.sandbox.types import LABEL_OWNER

    left = manager.leftovers()[tier]
    if tier == "bwrap":
        return [x for x in left if f"/symbi-{os.getpid()}-" in x]
    mine = {
        c.short_id
        for c in docker_client().containers.list(
            all=True, filters={"label": f"{LABEL_OWNER}={owner_tag()}"}, ignore_removed=True
        )
    }
    return [x for x in left if not x.startswith("container ") or x.split()[1] in mine]
