"""The API key cache of a serving gateway on PostgreSQL (``gateway.state.keycache``), on a
real server: a revocation made through another process's store is refused once its NOTIFY
arrives; with the listen connection killed nothing stale is served, before or after it
reconnects; a key revoked, removed or changed by an operator's own SQL is dropped too (the
table's trigger); unknown ids are refused and never cached; the cache stays bounded; the
front's event-loop path admits only a cached key. The LISTEN thread itself:
``test_key_listener.py``.

Each waits with a bound ("within N s"), never a timing assertion.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.apikeys import new_key
from gateway.config.sections import JwtSection
from gateway.errors import AuthFailed, NoCredentials
from gateway.server.auth import ApiKeyStore, Authenticator, JwtVerifier
from gateway.state.keycache import ALL, KeyCache
from gateway.state.pgkeys import PgApiKeyStore
from tests.state.engines import Postgres as PgEngine
from tests.state.keystores import eventually, kill_listener, served_from_cache


def test_a_key_revoked_elsewhere_is_refused_once_notified(cli: PgApiKeyStore, served: PgApiKeyStore) -> None:
    key, rec = cli.create("alice", ("dev",))
    served_from_cache(served, key, rec)  # the next request needs no PostgreSQL
    assert served.lookup(key[:-4] + "AAAA") is None  # cached id, wrong secret: still refused
    assert cli.revoke(rec.id)
    eventually("the revocation refused", lambda: served.lookup(key) is None)
    assert served.cached(rec.id) is None and served.get(rec.id) is None


def test_a_revocation_while_the_listener_is_down_is_never_served_stale(
    cli: PgApiKeyStore, served: PgApiKeyStore
) -> None:
    assert served.cache is not None
    cache = served.cache
    key, rec = cli.create("bob", ("dev",))
    served_from_cache(served, key, rec)
    kill_listener(cli)
    eventually("the loss noticed", lambda: cache.ticket() is None)
    assert cli.revoke(rec.id)  # its NOTIFY reaches no listener of this process
    assert served.lookup(key) is None  # read from PostgreSQL meanwhile
    eventually("the listen connection back", lambda: cache.ticket() is not None)
    assert served.lookup(key) is None  # and not from a cache kept over the loss


def test_unknown_ids_are_refused_and_never_cached(served: PgApiKeyStore) -> None:
    assert served.cache is not None
    for _ in range(200):  # an attacker spraying well-formed ids
        assert served.lookup(f"symbi_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") is None
    assert len(served.cache) == 0


def test_the_cache_is_bounded_and_evicted_keys_still_work(cli: PgApiKeyStore, served: PgApiKeyStore) -> None:
    assert served.cache is not None
    served.cache.max_entries = 2
    made = [cli.create(f"p{i}", ()) for i in range(3)]
    for key, rec in made:
        served_from_cache(served, key, rec)
    assert len(served.cache) == 2 and served.cached(made[0][1].id) is None  # least recently used out
    assert served.lookup(made[0][0]) == made[0][1]  # read again from PostgreSQL


def test_a_read_older_than_an_invalidation_is_not_stored() -> None:
    # a request read the record just before its revocation committed, and the NOTIFY was
    # handled before the request stored it: storing it would keep the revoked key for ever
    cache = KeyCache()
    cache.live()
    _, rec = new_key("carol", (), "user")
    ticket = cache.ticket()
    cache.invalidate(rec.id)
    cache.put(ticket, rec)
    assert cache.get(rec.id) is None
    cache.put(cache.ticket(), rec)
    assert cache.get(rec.id) == rec
    cache.lost()
    assert cache.get(rec.id) is None and cache.ticket() is None  # not used while down
    cache.live()
    assert cache.get(rec.id) is None  # nor kept over the loss


@pytest.mark.parametrize("event", ["invalidate", "lost"])
def test_a_read_older_than_an_event_stays_refused_after_the_cache_is_live_again(event: str) -> None:
    # every invalidation moves the generation forward, never back: a counter that went back
    # (or restarted) would meet an old read's ticket again after the next (re)subscription,
    # and that read, which may predate a revocation, would be stored (found by mutation)
    cache = KeyCache()
    cache.live()
    cache.invalidate("another")
    _, rec = new_key("erin", (), "user")
    ticket = cache.ticket()
    assert ticket is not None
    if event == "invalidate":
        cache.invalidate(rec.id)
    else:
        cache.lost()
    cache.live()
    cache.put(ticket, rec)
    assert cache.get(rec.id) is None


def test_a_read_started_before_a_reconnect_is_not_stored_after_it() -> None:
    # a read whose ticket was taken while the first connection was up, stored after the
    # connection was lost and a new one subscribed (a revocation may have been missed between):
    # subscribing moves the generation forward too, never back to a value a ticket had
    cache = KeyCache()
    cache.live()
    _, rec = new_key("mallory", (), "user")
    ticket = cache.ticket()
    assert ticket is not None
    cache.lost()
    cache.live()
    cache.put(ticket, rec)
    assert cache.get(rec.id) is None


def test_the_cli_store_keeps_no_cache(cli: PgApiKeyStore) -> None:
    key, rec = cli.create("dave", ())
    assert cli.lookup(key) == rec and cli.cache is None and cli.cached(rec.id) is None


def test_the_front_authenticates_a_cached_key_without_io_and_the_rest_in_a_thread(
    cli: PgApiKeyStore, served: PgApiKeyStore
) -> None:
    # ``authenticate_now`` runs on the event loop: it answers only from the cache, and leaves
    # everything else (a refusal included) to ``authenticate`` in a thread, from PostgreSQL
    auth = Authenticator(keys=served)
    key, rec = cli.create("erin", ("dev",))
    served_from_cache(served, key, rec)
    for headers in ({"x-api-key": f" {key} "}, {"authorization": f"Bearer {key}"}):
        got = auth.authenticate_now(headers)
        assert got is not None and got.id == "erin" and got.claims == {"key_id": rec.id}
    wrong = {"x-api-key": key[:-4] + "AAAA"}
    assert auth.authenticate_now(wrong) is None
    with pytest.raises(AuthFailed):
        auth.authenticate(wrong)
    # X-API-Key wins over Authorization, as in ``authenticate``
    assert (
        auth.authenticate_now({"x-api-key": "symbi_000000000000_x", "authorization": f"Bearer {key}"}) is None
    )
    assert auth.authenticate_now({}) is None  # no credentials: decided by ``authenticate``
    # a cached key under another scheme is refused as ``authenticate`` refuses it
    for scheme in ("Basic", "Token"):
        other = {"authorization": f"{scheme} {key}"}
        assert auth.authenticate_now(other) is None
        with pytest.raises(AuthFailed):
            auth.authenticate(other)
    assert cli.revoke(rec.id)
    eventually("the revocation seen by the front", lambda: auth.authenticate_now({"x-api-key": key}) is None)
    with pytest.raises(AuthFailed):
        auth.authenticate({"x-api-key": key})


def test_a_cached_key_whose_text_is_not_utf8_is_refused_on_the_loop_too(
    cli: PgApiKeyStore, served: PgApiKeyStore
) -> None:
    # the roles are stored as JSON: the escape \ud800 comes back as a lone surrogate, which
    # ``authenticate`` refuses (gateway/textcheck.py); the cached path must refuse it as well
    key, rec = cli.create("grace", ("\ud800",))
    served_from_cache(served, key, rec)
    with pytest.raises(AuthFailed):
        Authenticator(keys=served).authenticate_now({"x-api-key": key})
    with pytest.raises(AuthFailed):
        Authenticator(keys=served).authenticate({"x-api-key": key})


def test_the_file_store_front_authenticates_at_once(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "api-keys.json")
    key, _ = store.create("frank", ())
    got = Authenticator(keys=store).authenticate_now({"x-api-key": key})
    assert got is not None and got.id == "frank"
    with pytest.raises(AuthFailed):
        Authenticator(keys=store).authenticate_now({"x-api-key": key[:-4] + "AAAA"})
    with pytest.raises(NoCredentials):  # no key and no JWKS to fetch: refused at once too
        Authenticator(keys=store).authenticate_now({})


@pytest.fixture
def operator(postgres_engine: PgEngine) -> Iterator[psycopg.Connection[Any]]:
    """An operator's own SQL session (psql), beside the gateway's code."""
    with psycopg.connect(postgres_engine.url, autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE symbi_api_keys SET revoked = extract(epoch from now()) WHERE id = %(id)s",
        "DELETE FROM symbi_api_keys WHERE id = %(id)s",
        "TRUNCATE symbi_api_keys",
    ],
    ids=["update-revoked", "delete", "truncate"],
)
def test_a_key_revoked_or_removed_by_hand_in_sql_is_refused_once_notified(
    cli: PgApiKeyStore, served: PgApiKeyStore, operator: psycopg.Connection[Any], sql: str
) -> None:
    # the table's trigger NOTIFYs whoever changes a row: without it the cache would keep
    # serving a key an operator revoked in SQL until it was evicted
    key, rec = cli.create("heidi", ("dev",))
    served_from_cache(served, key, rec)
    operator.execute(sql, {"id": rec.id})
    eventually("the change refused", lambda: served.lookup(key) is None)
    assert served.cached(rec.id) is None


def test_roles_changed_by_hand_in_sql_take_effect_once_notified(
    cli: PgApiKeyStore, served: PgApiKeyStore, operator: psycopg.Connection[Any]
) -> None:
    # a key's roles lowered in SQL: the cached record with the old roles must go
    key, rec = cli.create("ivan", ("admin",))
    served_from_cache(served, key, rec)
    operator.execute("UPDATE symbi_api_keys SET roles = %s WHERE id = %s", ('["dev"]', rec.id))
    eventually(
        "the new roles served", lambda: (got := served.lookup(key)) is not None and got.roles == ("dev",)
    )


def test_a_truncate_notification_empties_the_cache() -> None:
    cache = KeyCache()
    cache.live()
    made = [new_key(f"p{i}", (), "user")[1] for i in range(3)]
    for rec in made:
        cache.put(cache.ticket(), rec)
    assert len(cache) == 3
    cache.invalidate(ALL)
    assert len(cache) == 0 and all(cache.get(rec.id) is None for rec in made)


def test_with_a_jwks_url_a_cached_key_is_still_admitted_on_the_loop(
    cli: PgApiKeyStore, served: PgApiKeyStore
) -> None:
    # a JWKS URL sends bearer JWTs to a thread (the fetch blocks); an API key is not a JWT and is
    # still answered from the cache, in whichever header ``authenticate`` reads it from (found by
    # mutation: the test of the header's prefix could be broken to send every request to the
    # thread unseen; and an X-API-Key was sent to the thread, as only Authorization was looked at)
    jwks = JwtSection(issuer="https://idp.example", audience="symbi", jwks_url="http://127.0.0.1:9/jwks")
    auth = Authenticator(keys=served, jwt=JwtVerifier(jwks))
    key, rec = cli.create("heidi", ("dev",))
    served_from_cache(served, key, rec)
    for headers in (
        {"authorization": f"Bearer {key}"},
        {"x-api-key": key},
        {"x-api-key": f" {key} ", "authorization": "Bearer eyJhbGciOi.x.y"},  # X-API-Key wins
        {"authorization": f"bearer  {key}"},  # the scheme's case and spaces, as ``authenticate``
    ):
        got = auth.authenticate_now(headers)
        assert got is not None and got.id == "heidi", headers
        assert auth.authenticate(headers).id == "heidi"
    # everything else goes to the thread (None), never raises here: a JWT, no credentials, a key
    # the cache does not hold (refused there, from PostgreSQL)
    unknown = {"x-api-key": key[:-4] + "AAAA"}
    for headers in ({"authorization": "Bearer eyJhbGciOi.x.y"}, {}, unknown):
        assert auth.authenticate_now(headers) is None
    with pytest.raises(AuthFailed):
        auth.authenticate(unknown)


def test_with_a_jwks_url_a_key_file_decides_an_api_key_at_once(tmp_path: Path) -> None:
    # keys in a file need no I/O to speak of, and an API key needs no JWKS: admitted or refused
    # on the loop, with the refusal ``authenticate`` makes; a JWT still goes to the thread
    store = ApiKeyStore(tmp_path / "api-keys.json")
    key, _ = store.create("judy", ())
    jwks = JwtSection(issuer="https://idp.example", audience="symbi", jwks_url="http://127.0.0.1:9/jwks")
    auth = Authenticator(keys=store, jwt=JwtVerifier(jwks))
    got = auth.authenticate_now({"x-api-key": key})
    assert got is not None and got.id == "judy"
    with pytest.raises(AuthFailed):
        auth.authenticate_now({"x-api-key": key[:-4] + "AAAA"})
    assert auth.authenticate_now({"authorization": "Bearer eyJhbGciOi.x.y"}) is None


def test_a_cached_key_after_extra_spaces_is_admitted_on_the_loop_as_authenticate_admits_it(
    cli: PgApiKeyStore, served: PgApiKeyStore
) -> None:
    # ``Bearer  <key>`` (two spaces): ``authenticate`` takes the text after the first space,
    # stripped; the event-loop path reads the same key (not the text after the last space)
    auth = Authenticator(keys=served)
    key, rec = cli.create("ivan", ())
    served_from_cache(served, key, rec)
    headers = {"authorization": f"Bearer  {key}"}
    assert auth.authenticate(headers).id == "ivan"
    got = auth.authenticate_now(headers)
    assert got is not None and got.id == "ivan"
