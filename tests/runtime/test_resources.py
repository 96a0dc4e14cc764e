"""The resource manager's placement strategies on a finite pool (the seed's three)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.sections import ResourcesSection
from gateway.errors import BudgetExceeded
from gateway.runtime.resources import ResourceLimits, ResourcePool


def lim(cpu: float, mem: int) -> ResourceLimits:
    return ResourceLimits(
        memory_mb=mem,
        cpu_cores=cpu,
        disk_io_mbps=10,
        network_io_mbps=1,
        execution_timeout_s=10,
        max_concurrent_calls=1,
    )


def test_first_fit_takes_the_first_slot_with_room() -> None:
    pool = ResourcePool(3, 1.0, 1000, "first-fit")
    pool.allocate("a", lim(0.5, 100), 1)
    assert pool.allocate("b", lim(0.2, 100), 1) == (0, [])  # slot 0 still has room


def test_best_fit_takes_the_slot_it_fills_most() -> None:
    pool = ResourcePool(3, 1.0, 1000, "best-fit")
    pool.allocate("a", lim(0.7, 100), 1)  # slot 0: 0.3 left
    pool.allocate("b", lim(0.5, 100), 1)  # best fit for 0.5: an empty slot (slot 0 has too little)
    assert pool.allocate("c", lim(0.3, 100), 1) == (0, [])  # fills slot 0 exactly, not slot 1 (0.5 left)


def test_priority_displaces_lower_priority_placements_when_nothing_fits() -> None:
    pool = ResourcePool(1, 1.0, 1000, "priority")
    pool.allocate("low", lim(0.6, 100), 1)
    pool.allocate("mid", lim(0.4, 100), 5)
    assert pool.allocate("high", lim(0.5, 100), 9) == (0, ["low"])
    with pytest.raises(BudgetExceeded):
        pool.allocate("other-low", lim(0.5, 100), 0)  # nothing lower to displace


@pytest.mark.parametrize("strategy", ["first-fit", "best-fit"])
def test_a_full_pool_refuses_with_the_config_keys_named(strategy: str) -> None:
    pool = ResourcePool(1, 1.0, 256, strategy)  # type: ignore[arg-type]
    pool.allocate("a", lim(1.0, 256), 9)
    with pytest.raises(BudgetExceeded):
        pool.allocate("b", lim(0.1, 10), 9)
    pool.release("a")
    assert pool.allocate("b", lim(0.1, 10), 0) == (0, [])


# -- found by mutation testing (group "runtime") ----------------------------------------


def test_memory_counts_as_much_as_cpu_for_room() -> None:
    pool = ResourcePool(2, 4.0, 256, "first-fit")
    pool.allocate("a", lim(0.5, 200), 1)
    assert pool.allocate("b", lim(0.5, 100), 1) == (1, [])  # cpu left in slot 0, memory not
    assert pool.allocate("c", lim(0.5, 56), 1) == (0, [])  # exactly the memory left
    assert pool.as_json()[0] == {
        "cpu": 4.0,
        "memory_mb": 256,
        "free_cpu": 3.0,
        "free_memory_mb": 0,
        "agents": ["a", "c"],
    }


def test_best_fit_weighs_memory_when_cpu_ties() -> None:
    pool = ResourcePool(2, 1.0, 1000, "best-fit")
    pool.allocate("a", lim(0.5, 900), 1)  # slot 0: 0.5 cpu, 100 MB left
    pool.allocate("b", lim(0.5, 500), 1)  # slot 0 too small in memory: slot 1 (0.5, 500 left)
    assert pool.allocate("c", lim(0.1, 50), 1) == (0, [])  # same cpu left after; less memory left in 0


def test_priority_displaces_the_lowest_first_and_only_as_many_as_needed() -> None:
    pool = ResourcePool(2, 1.0, 1000, "priority")
    pool.allocate("p3", lim(0.5, 100), 3)
    pool.allocate("p1", lim(0.5, 100), 1)
    pool.allocate("q5", lim(1.0, 100), 5)  # slot 1
    assert pool.allocate("high", lim(0.5, 100), 9) == (0, ["p1"])  # the lowest, and one is enough
    assert pool.as_json()[0]["agents"] == ["high", "p3"]
    # equal priority is not lower: nothing to displace for a 5 in slot 1, nor in slot 0 for 3
    with pytest.raises(BudgetExceeded):
        pool.allocate("same", lim(1.0, 100), 5)
    # slot 0 cannot free a whole core below 9 (p3 is all there is): slot 1's q5 makes way
    assert pool.allocate("top", lim(1.0, 100), 9) == (1, ["q5"])


def test_priority_frees_memory_too_before_placing() -> None:
    pool = ResourcePool(1, 4.0, 300, "priority")
    pool.allocate("low", lim(0.1, 200), 1)
    pool.allocate("low2", lim(0.1, 100), 2)
    assert pool.allocate("big", lim(0.1, 250), 9) == (0, ["low", "low2"])  # one did not free enough memory


@pytest.mark.parametrize(("strategy", "slot"), [("first-fit", 0), ("best-fit", 1)])
def test_first_fit_and_best_fit_choose_differently(strategy: str, slot: int) -> None:
    pool = ResourcePool(3, 1.0, 1000, strategy)  # type: ignore[arg-type]
    pool.allocate("x", lim(0.5, 100), 1)  # slot 0: 0.5 left
    pool.allocate("y", lim(0.7, 100), 1)  # slot 1: 0.3 left
    assert pool.allocate("z", lim(0.3, 100), 1) == (slot, [])


def test_a_refusal_says_which_settings_are_full_and_an_exact_memory_fit_displaces() -> None:
    pool = ResourcePool(1, 4.0, 300, "priority")
    pool.allocate("low", lim(0.1, 200), 1)
    pool.allocate("low2", lim(0.1, 100), 2)
    with pytest.raises(BudgetExceeded) as err:
        pool.allocate("same", lim(0.1, 10), 1)  # nothing below priority 1
    assert len(err.value.reasons) == 1 and "runtime.pool_slot_cpu" in err.value.reasons[0]
    assert pool.allocate("exact", lim(0.1, 300), 9) == (0, ["low", "low2"])  # frees exactly 300 MB


def test_the_limits_are_read_from_every_resources_key() -> None:
    """Each budget comes from its own [resources] key (every value differs from its default)."""
    r = ResourcesSection(
        memory_mb=96,
        cpu_cores=0.25,
        disk_io_mbps=7,
        network_io_mbps=3,
        network=True,
        execution_timeout_s=12.5,
        max_concurrent_calls=2,
    )
    assert ResourceLimits.from_config(r) == ResourceLimits(
        memory_mb=96,
        cpu_cores=0.25,
        disk_io_mbps=7,
        network_io_mbps=3,
        execution_timeout_s=12.5,
        max_concurrent_calls=2,
        network=True,
    )


def test_release_frees_the_agents_place_in_whichever_slot_holds_it() -> None:
    pool = ResourcePool(2, 1.0, 1000, "first-fit")
    assert pool.allocate("a", lim(1.0, 100), 1) == (0, [])
    assert pool.allocate("b", lim(1.0, 100), 1) == (1, [])
    pool.release("b")  # held in slot 1 only: slot 0 does not hold it
    pool.release("nobody")  # an agent without a place: nothing to free
    assert pool.allocate("c", lim(1.0, 100), 1) == (1, [])
    with pytest.raises(BudgetExceeded):
        pool.allocate("d", lim(1.0, 100), 1)


@pytest.mark.parametrize(
    "body,key",
    [
        ("[runtime.resources]\ncpu_cores = inf\n", "runtime.resources.cpu_cores"),
        ("[runtime.resources]\nexecution_timeout_s = inf\n", "runtime.resources.execution_timeout_s"),
        ("[runtime]\naging_s = inf\n", "runtime.aging_s"),
        ("[runtime.breaker]\nreset_s = inf\n", "runtime.breaker.reset_s"),
        (
            '[agents.a]\ncommand = "/bin/true"\n[agents.a.resources]\ncpu_cores = inf\n',
            "agents.a.resources.cpu_cores",
        ),
        ('[agents.a]\ncommand = "/bin/true"\nrestart_backoff_s = inf\n', "agents.a.restart_backoff_s"),
        # second review: the same crash through sections outside the runtime's
        ("[sandbox]\ncpus = inf\n", "sandbox.cpus"),
        ("[bus]\nmax_age_s = inf\n", "bus.max_age_s"),
        ("[state]\ntimeout_s = nan\n", "state.timeout_s"),
    ],
)
def test_an_infinite_budget_is_refused_at_load_naming_its_key(tmp_path: Path, body: str, key: str) -> None:
    """Attack (a config typo, or a value pasted in): TOML's ``inf`` loaded as a budget. An
    agent's ``cpu_cores = inf`` then raised OverflowError computing its cgroup's CPU quota, out
    of the hosted agent's supervisor, which stopped the gateway; ``aging_s = inf`` turned the
    scheduler's anti-starvation off."""
    from gateway.config.load import load_config
    from gateway.errors import ConfigError

    p = tmp_path / "symbi.toml"
    p.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_config(p, {})
    assert key in str(err.value)
