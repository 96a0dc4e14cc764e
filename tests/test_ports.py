"""The test ports' split between pytest-xdist workers (tests/conftest.py)."""

from __future__ import annotations

import os

from tests.conftest import free_port, worker_ports


def test_workers_get_disjoint_slices_below_the_ephemeral_range() -> None:
    slices = [set(worker_ports(f"gw{i}", 3)) for i in range(3)]
    assert all(slices)
    assert not slices[0] & slices[1] and not slices[1] & slices[2] and not slices[0] & slices[2]
    assert max(max(s) for s in slices) < 32768  # the kernel's ephemeral range starts there


def test_outside_xdist_the_whole_range_is_used() -> None:
    assert len(worker_ports("", 1)) == 32768 - 20000
    assert worker_ports("master", 1) == worker_ports("", 1)


def test_a_port_handed_out_is_in_this_workers_slice() -> None:
    mine = worker_ports(
        os.environ.get("PYTEST_XDIST_WORKER", ""),
        int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
    )
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20  # never the same port twice
    assert all(p in mine for p in ports)
