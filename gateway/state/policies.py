"""Policy reloads broadcast to every replica, through PostgreSQL (``[state] postgres_url``).

A replica that loads a policy from its own files (a changed ``policies.rego`` its watcher
picked up, ``POST /api/policy/reload``, or its start with a policy no replica published
before) appends exactly what it loaded -- the policy text, the data file's raw text, the
policy's test modules and their digest -- to ``symbi_policies`` and NOTIFYs
``symbi_policies`` in the same transaction. Every replica LISTENs (``Postgres.listen``; a
poll every second is the fallback, and catches up after an outage) and loads the newest
version only after checking it as its own files are checked: the digest recomputed from the
text must match, the module must parse, its tests pass and the decision evaluate on the
canary input. A version that fails is refused: the policy in force keeps deciding, the
refusal is an event (``policy.reload_refused``) and ``/readyz`` shows the policy component
``degraded``. Every version a replica loads is an event in its audit chain
(``policy.reloaded`` with the digest, the version and the publisher; the publisher records
``policy.published``), so the chains say which policy decided which call on every replica.

Why PostgreSQL and not Redis pub/sub: it is the broadcast the replicas already use for
approvals, revocations and pins (one mechanism, not two); the policy and its NOTIFY commit
together; and a replica that was down or disconnected when the policy changed reads the
newest version when it returns, which a pub/sub message sent meanwhile would never reach.
Who can write ``symbi_policies`` is who can write ``symbi_api_keys`` and the approvals: the
database is trusted as much as it is for those (keep it on a network only the replicas reach,
see the README); the audit binding above makes any version that was loaded visible.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from gateway.errors import PolicyLoadError, StateUnavailable
from gateway.events import Event, EventSink, record_acted
from gateway.policy.loader import PolicyBundle, bundle_from_sources, check_bundle
from gateway.state.postgres import POLICY_CHANNEL, Postgres

if TYPE_CHECKING:
    from gateway.policy.engine import EmbeddedEngine

_logger = logging.getLogger("symbi.state.policies")


@dataclass(frozen=True)
class PublishedPolicy:
    version: int
    digest: str
    policy: tuple[str, str]  # (file name on the publisher, Rego source)
    data: tuple[str, str] | None  # (file name, raw JSON text)
    tests: tuple[tuple[str, str], ...]
    publisher: str
    published: float


class PgPolicyStore:
    """``symbi_policies``: every published policy version, newest last (append only)."""

    def __init__(self, pg: Postgres) -> None:
        self._pg = pg

    def publish(self, bundle: PolicyBundle, publisher: str) -> int:
        """Append ``bundle`` as the newest version (and NOTIFY at commit); returns its version."""
        (name, src), data = bundle.modules[0], bundle.data_source
        with self._pg.cursor(transaction=True) as cur:
            cur.execute(
                "INSERT INTO symbi_policies (digest, policy_name, policy, data_name, data, tests, publisher,"
                " published) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) RETURNING version",
                (
                    bundle.digest,
                    name,
                    src,
                    data[0] if data else None,
                    data[1] if data else None,
                    json.dumps([list(t) for t in bundle.tests]),
                    publisher,
                    time.time(),
                ),
            )
            row = cur.fetchone()
            assert row is not None
            cur.execute(f"NOTIFY {POLICY_CHANNEL}")
        return int(row[0])

    def latest_version(self) -> int:
        with self._pg.cursor() as cur:
            cur.execute("SELECT coalesce(max(version), 0) FROM symbi_policies")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def latest(self) -> PublishedPolicy | None:
        with self._pg.cursor() as cur:
            cur.execute(
                "SELECT version, digest, policy_name, policy, data_name, data, tests, publisher, published"
                " FROM symbi_policies ORDER BY version DESC LIMIT 1"
            )
            row = cur.fetchone()
        if row is None:
            return None
        version, digest, pname, policy, dname, data, tests, publisher, published = row
        return PublishedPolicy(
            version=int(version),
            digest=str(digest),
            policy=(str(pname), str(policy)),
            data=(str(dname), str(data)) if data is not None else None,
            tests=tuple((str(n), str(s)) for n, s in json.loads(tests)),
            publisher=str(publisher),
            published=float(published),
        )

    def was_published(self, digest: str) -> bool:
        with self._pg.cursor() as cur:
            cur.execute("SELECT 1 FROM symbi_policies WHERE digest=%s LIMIT 1", (digest,))
            return cur.fetchone() is not None


def verified(pub: PublishedPolicy, decision: str) -> PolicyBundle:
    """The published policy as a bundle, checked as a replica checks its own files.

    Raises:
        PolicyLoadError: the text does not match its digest, or the policy is not usable.
    """
    bundle = bundle_from_sources(pub.policy, pub.data)
    if bundle.digest != pub.digest:
        raise PolicyLoadError(
            f"published policy version {pub.version}: its text does not match its digest {pub.digest[:12]}"
        )
    return check_bundle(bundle, pub.tests, decision)


class PolicySync:
    """One replica's side of the broadcast: publishes what it loads from its files, loads what
    the others publish (verified), and retries a publication PostgreSQL refused."""

    def __init__(
        self,
        engine: EmbeddedEngine,
        store: PgPolicyStore,
        events: EventSink,
        *,
        replica: str | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.store = store
        self.events = events
        self.replica = replica or f"{socket.gethostname()}:{engine.files.policy}"
        self.interval_s = interval_s
        self.seen = 0  # the newest version acted on (loaded, refused, or this replica's own)
        self._unpublished: PolicyBundle | None = None  # loaded here, not yet in PostgreSQL
        self._wake: Callable[[], None] = lambda: None
        engine.on_local_load = self.local_load

    def local_load(self, bundle: PolicyBundle) -> None:
        """The engine loaded ``bundle`` from this replica's files (it holds its reload lock):
        publish it (a thread)."""
        self._unpublished = bundle
        self._publish()

    def _publish(self) -> None:
        with self.engine.reload_lock:
            bundle = self._unpublished
            if bundle is not None:
                self._publish_locked(bundle)

    def _publish_locked(self, bundle: PolicyBundle) -> None:
        try:
            version = self.store.publish(bundle, self.replica)
        except StateUnavailable as e:  # retried by the background task when PostgreSQL answers
            _logger.error("policy %s not published to the other replicas yet: %s", bundle.digest[:12], e)
            return
        if self._unpublished is bundle:
            self._unpublished = None
        self.seen = max(self.seen, version)
        _logger.info("policy %s published as version %d", bundle.digest[:12], version)
        # published already: a broken log's refusal must not end PolicySync.run (the sync)
        record_acted(
            self.events,
            Event.POLICY_PUBLISHED,
            {"digest": bundle.digest, "version": version, "replica": self.replica},
        )

    def start(self) -> None:
        """At start: the fleet's policy wins over a file this replica had before (a stale
        copy, restarted); a file no replica ever published (a new ConfigMap) is published."""
        with self.engine.reload_lock:
            own = self.engine.bundle
            latest = self.store.latest()
            if own is not None and (latest is None or not self.store.was_published(own.digest)):
                self.local_load(own)
                return
        if latest is not None:
            self.apply(latest)

    def apply(self, pub: PublishedPolicy) -> None:
        """Load ``pub`` if it is newer than what this replica acted on and verifies (a thread)."""
        if pub.version <= self.seen:
            return
        own = self.engine.bundle
        same = own is not None and own.digest == pub.digest
        try:
            bundle = None if same else verified(pub, self.engine.decision_path)  # (CPU: outside the lock)
        except PolicyLoadError as e:
            with self.engine.reload_lock:
                if pub.version > self.seen:
                    self.seen = pub.version
                    self.engine.refuse_broadcast(pub.version, pub.digest, pub.publisher, e)
            return
        # the engine's lock orders this against a local reload: whichever comes second wins,
        # and a local load (published, or waiting to be) is newer than anything seen so far
        with self.engine.reload_lock:
            if pub.version <= self.seen or self._unpublished is not None:
                return
            self.seen = pub.version
            if bundle is None:
                self.engine.note_published(pub.version, pub.publisher)
            else:
                self.engine.adopt(bundle, version=pub.version, publisher=pub.publisher)

    def sync_once(self) -> None:
        """Publish what is pending, then load the newest version if it is new (a thread)."""
        self._publish()
        if self.store.latest_version() > self.seen:
            latest = self.store.latest()
            if latest is not None:
                self.apply(latest)

    def notified(self) -> None:
        self._wake()

    async def run(self, _gw: object) -> None:
        """Background task: act on each NOTIFY at once, and poll every ``interval_s`` besides."""
        while True:
            try:
                await anyio.to_thread.run_sync(self.start)
                break
            except StateUnavailable:
                await anyio.sleep(self.interval_s)
        while True:
            event = anyio.Event()
            self._wake = event.set
            with anyio.move_on_after(self.interval_s):
                await event.wait()
            try:
                await anyio.to_thread.run_sync(self.sync_once)
            except StateUnavailable:
                pass  # /readyz shows PostgreSQL down; the next round retries
