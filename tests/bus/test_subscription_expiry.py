"""Topic subscriptions expire (``bus.subscription_ttl_s``), on both backends.

Attack (red team 28, session 41): a subscription is a grant the policy decides once, at
``bus__subscribe``. It had no lifetime: a grant made for one task kept every publication on
the topic flowing into the agent's inbox (sealed, stored, counted against its principal)
for as long as the agent lived, a year later as on the first day. Now it lasts
``bus.subscription_ttl_s``; subscribing again renews it (and asks the policy again). The
clock is driven through ``time.time`` (the seam the bus reads), never waited on.
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.bus.redis_backend import PREFIX
from gateway.config import load_config
from gateway.errors import BusQuotaExceeded, ConfigError
from tests.bus.test_core import A, B, Env, _pair, env  # noqa: F401 - env is the backends' fixture
from tests.conftest import write_config

pytestmark = pytest.mark.anyio


def _stored_subscriptions(env: Env) -> int:  # noqa: F811
    """Subscriptions as the store holds them (raw: expired ones included)."""
    if env.url is None:
        db = sqlite3.connect(env.data / "bus.db")
        try:
            return int(db.execute("SELECT count(*) FROM subs").fetchone()[0])
        finally:
            db.close()
    r: Any = redis.Redis.from_url(env.url)
    return int(r.zcard(PREFIX + "subs:exp"))


async def test_an_expired_subscription_receives_nothing_until_renewed(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = await _pair(env, subscription_ttl_s=60)
    before = int(time.time() * 1000)
    until = await bus.subscribe(B, "news.*")
    assert before + 60_000 <= until <= int(time.time() * 1000) + 60_000
    waiting = await bus.publish(A, "news.x", {"n": 1})  # a copy waits in b's inbox
    assert waiting.delivered_to == 1
    # past the subscription's expiry (the messages' own window, a day, is far from over)
    later = (until + 1) / 1000
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: later)
    # the grant expired: no new copy is sealed for b, the one waiting is not received
    assert (await bus.publish(A, "news.x", {"n": 2})).delivered_to == 0
    assert await bus.receive(B, max_items=10) == []
    assert bus.rejected.get("not subscribed to this topic") == 1
    assert await bus.backend.subscriptions() == {}
    # the expiry sweep removes it from the store
    assert _stored_subscriptions(env) == 1
    await bus.expire()
    assert _stored_subscriptions(env) == 0
    # subscribing again (the policy asked again) renews it
    assert await bus.subscribe(B, "news.*") == int(later * 1000) + 60_000
    assert (await bus.publish(A, "news.x", {"n": 3})).delivered_to == 1
    assert [r.body for r in await bus.receive(B, max_items=10)] == [{"n": 3}]


async def test_a_grant_made_with_the_default_lifetime_delivers_nothing_a_day_later(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # messages may live three days here: only the subscription's own day ends the delivery
    bus = await _pair(env, max_age_s=3 * 86400.0)
    await bus.subscribe(B, "news.*")
    assert (await bus.publish(A, "news.x", {"n": 1})).delivered_to == 1
    later = time.time() + 86400 + 1
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: later)
    # was: delivered_to 1 and the copy received, a day (a year) after the grant
    assert (await bus.publish(A, "news.x", {"n": 2})).delivered_to == 0
    assert await bus.receive(B, max_items=10) == []


async def test_subscribing_again_extends_a_held_subscription(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus = await _pair(env, subscription_ttl_s=60, max_subscriptions=1)
    first = await bus.subscribe(B, "news.*")
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: (first - 1) / 1000)
    renewed = await bus.subscribe(B, "news.*")  # held: renewed, not a second one (the cap is 1)
    assert renewed == first - 1 + 60_000
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: (first + 1) / 1000)
    await bus.expire()
    assert await bus.backend.subscriptions() == {"agent-b": {"news.*"}}
    assert (await bus.publish(A, "news.x", 1)).delivered_to == 1


async def test_only_live_subscriptions_count_against_the_cap_and_in_the_stats(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack (red team 28, session 41's review): on Redis an expired subscription the sweep
    # had not removed yet still counted, against bus.max_subscriptions_per_agent and in the
    # stats, for up to bus.expire_interval_s; the embedded store counted only live ones.
    bus = await _pair(env, subscription_ttl_s=60, max_subscriptions=2)
    await bus.subscribe(B, "a")
    last = await bus.subscribe(B, "b")
    assert (await bus.backend.stats())["subscriptions"] == 2
    later = (last + 1) / 1000  # both expired, no sweep run
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: later)
    assert (await bus.backend.stats())["subscriptions"] == 0  # was 2 on Redis
    await bus.subscribe(B, "c")  # was BusQuotaExceeded on Redis: the cap is of live ones
    await bus.subscribe(B, "d")
    with pytest.raises(BusQuotaExceeded):  # two live ones: the cap holds
        await bus.subscribe(B, "e")
    with pytest.raises(BusQuotaExceeded):  # an expired one is no longer held: not renewed free
        await bus.subscribe(B, "a")
    assert (await bus.backend.stats())["subscriptions"] == 2
    assert await bus.backend.subscriptions() == {"agent-b": {"c", "d"}}
    assert await bus.backend.subscriptions_of("agent-b") == {"c", "d"}
    assert _stored_subscriptions(env) == 4
    await bus.expire()
    assert _stored_subscriptions(env) == 2


def _bus_config(tmp_path: Path, bus: str) -> Path:
    return write_config(tmp_path, f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n[bus]\n{bus}\n')


@pytest.mark.parametrize("ttl", ["inf", "nan", "-1.0", "0.0", "31536001.0"])
def test_a_subscription_lifetime_that_is_not_finite_positive_and_bounded_is_refused(
    tmp_path: Path, ttl: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_bus_config(tmp_path, f"subscription_ttl_s = {ttl}"), {})
    assert [r for r in refused.value.reasons if "subscription_ttl_s" in r]  # refused for it


def test_a_subscription_lasts_a_day_unless_configured(tmp_path: Path) -> None:
    assert (
        load_config(_bus_config(tmp_path, "subscription_ttl_s = 600.0"), {}).bus.subscription_ttl_s == 600.0
    )
    assert load_config(_bus_config(tmp_path, ""), {}).bus.subscription_ttl_s == 86400.0


@pytest.mark.parametrize("ttl", [math.inf, math.nan, -1.0, 0.0, 365 * 86400.0 + 1])
async def test_a_bus_made_without_the_config_refuses_a_bad_lifetime_too(
    env: Env,  # noqa: F811
    ttl: float,
) -> None:
    with pytest.raises(ConfigError):
        await env.bus(subscription_ttl_s=ttl)


async def test_subscriptions_stored_before_they_expired_grant_nothing(
    env: Env,  # noqa: F811
) -> None:
    # a store written by an earlier version (subscriptions without an expiry): what it holds
    # is expired, never a grant for good
    if env.url is None:
        env.data.mkdir(parents=True)
        db = sqlite3.connect(env.data / "bus.db")
        db.execute(
            "CREATE TABLE subs(agent TEXT NOT NULL, pattern TEXT NOT NULL, PRIMARY KEY(agent, pattern))"
        )
        db.execute("INSERT INTO subs VALUES ('agent-b', 'news.*')")
        db.commit()
        db.close()
    else:
        r: Any = redis.Redis.from_url(env.url)
        r.hset(PREFIX + "subs", "agent-b\0news.*", "1")
    bus = await _pair(env)
    assert await bus.backend.subscriptions() == {}
    assert (await bus.publish(A, "news.x", 1)).delivered_to == 0
    await bus.expire()
    assert _stored_subscriptions(env) == 0


async def test_subscriptions_stored_by_the_layout_before_survive_the_upgrade_and_deliver(
    env: Env,  # noqa: F811
) -> None:
    # Attack (red team 28, session 42's review): the upgrade to the per-agent layout deleted
    # the Redis ``subs`` hash at every start: live subscriptions lost silently, for up to
    # bus.subscription_ttl_s, while the embedded store kept its rows. Now the old layout is
    # converted once (session 41: an expiry with each subscription, ``subs:n`` counts).
    far = int(time.time() * 1000) + 3_600_000
    if env.url is None:
        env.data.mkdir(parents=True)
        db = sqlite3.connect(env.data / "bus.db")
        db.execute(
            "CREATE TABLE subs(agent TEXT NOT NULL, pattern TEXT NOT NULL, "
            "until_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(agent, pattern))"
        )
        db.execute("INSERT INTO subs VALUES ('agent-b', 'news.*', ?), ('agent-b', 'old', ?)", (far, far))
        db.commit()
        db.close()
    else:
        r: Any = redis.Redis.from_url(env.url)
        old = {"agent-b\0news.*": str(far), "agent-b\0old": str(far), "agent-b\0gone": "1", "bad": str(far)}
        r.hset(PREFIX + "subs", mapping=old)  # (expired; without its separator: not carried over)
        r.hset(PREFIX + "subs:n", "agent-b", 4)
    bus = await _pair(env, max_subscriptions=2)
    # was (Redis): {} (deleted); the embedded store keeps its live rows (its layout only gained a column)
    assert await bus.backend.subscriptions() == {"agent-b": {"news.*", "old"}}
    if env.url is not None:  # converted, once: the old keys are gone, the marker says so
        assert not r.exists(PREFIX + "subs") and not r.exists(PREFIX + "subs:n")
        assert r.get(PREFIX + "layout") == b"42"
        assert r.zrange(PREFIX + "subs:of:agent-b", 0, -1, withscores=True) == [
            (b"news.*", float(far)),
            (b"old", float(far)),
        ]
    assert (await bus.publish(A, "news.x", 1)).delivered_to == 1
    assert [m.body for m in await bus.receive(B, max_items=10)] == [1]
    with pytest.raises(BusQuotaExceeded):  # they count against the cap of 2
        await bus.subscribe(B, "a")
    # a park removes them (made before it), and they can be made again
    await bus.backend.unsubscribe_parked(["agent-b"])
    assert await bus.backend.subscriptions() == {}
    await bus.subscribe(B, "a")
    assert (await bus.publish(A, "a", 1)).delivered_to == 1


async def test_a_park_removes_every_subscription_whatever_its_made_time_says(
    env: Env,  # noqa: F811
) -> None:
    # Review (session 42): the subscription's made time (``subs:made:<agent>``, ``made_ms``)
    # decided nothing but keeping one when the clock stepped back (made "after" the park);
    # the park is one script (one transaction): every subscription it sees was made before it.
    # A store left by session 42 (a made time, here one in the future) starts and parks.
    far = int(time.time() * 1000) + 3_600_000
    if env.url is None:
        env.data.mkdir(parents=True)
        db = sqlite3.connect(env.data / "bus.db")
        db.execute(
            "CREATE TABLE subs(agent TEXT NOT NULL, pattern TEXT NOT NULL, until_ms INTEGER NOT NULL "
            "DEFAULT 0, made_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(agent, pattern))"
        )
        db.execute("INSERT INTO subs VALUES ('agent-b', 'news.*', ?, ?)", (far, far))
        db.commit()
        db.close()
    else:
        r: Any = redis.Redis.from_url(env.url)
        r.zadd(PREFIX + "subs:of:agent-b", {"news.*": far})
        r.zadd(PREFIX + "subs:exp", {"agent-b\0news.*": far})
        r.hset(PREFIX + "subs:made:agent-b", "news.*", str(far))
    bus = await _pair(env)
    await bus.subscribe(B, "sports")
    assert await bus.backend.subscriptions() == {"agent-b": {"news.*", "sports"}}
    await bus.backend.unsubscribe_parked(["agent-b"])
    assert await bus.backend.subscriptions() == {}
    if env.url is not None:  # the hash left over goes with them
        assert not r.exists(PREFIX + "subs:made:agent-b")
    await bus.subscribe(B, "a")
    assert (await bus.publish(A, "a", 1)).delivered_to == 1
