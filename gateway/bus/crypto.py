"""Agent keys and the message crypto: X25519 + HKDF pair keys, AES-256-GCM, Ed25519.

* Every agent gets an Ed25519 signing key and an X25519 agreement key when it is registered.
  The private halves stay in this process and in ``<data_dir>/bus-keys.db`` (mode 0600); an
  agent (an MCP client) never sees them. An agent whose id recurs keeps them after it ended
  (``park``), until ``bus.max_age_s`` later unless it came back (``Bus.expire``).
* The public halves go into the backend's key directory, each entry authenticated with an
  HMAC under the bus secret (``<data_dir>/bus-secret``, 0600), so a party that can write to
  the store or to Redis but has no bus secret cannot slip in a key of its own.
* Direct messages: AES-256-GCM under HKDF-SHA256(X25519(own, peer)), one key per unordered
  pair of agents; topic messages: under HKDF-SHA256(bus secret, topic name). A fresh random
  96-bit nonce per message; the header is the associated data.
"""

from __future__ import annotations

import base64
import hmac
import os
import sqlite3
import threading
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from gateway.custody import private_secret
from gateway.errors import BusError

if TYPE_CHECKING:
    from gateway.config.model import Config

NONCE_BYTES = 12
_RAW = (Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """A key directory entry: an agent's public keys, its principal, and their HMAC."""

    agent: str
    principal: str
    sign_pub: bytes
    dh_pub: bytes
    mac: bytes
    name: str = ""  # the runtime's agent name ("principal/client", a hosted agent's name), bound by the HMAC

    def body(self) -> bytes:
        return b"\0".join(
            [
                b"symbi-bus-key/v2",
                self.agent.encode(),
                self.principal.encode(),
                self.sign_pub,
                self.dh_pub,
                self.name.encode(),
            ]
        )


@dataclass(slots=True)
class AgentKeys:
    agent: str
    principal: str
    sign: Ed25519PrivateKey
    dh: X25519PrivateKey
    stored: bool = False  # in bus-keys.db

    @classmethod
    def generate(cls, agent: str, principal: str) -> AgentKeys:
        return cls(agent, principal, Ed25519PrivateKey.generate(), X25519PrivateKey.generate())


def load_secret(path: Path, *, make: bool = True) -> bytes:
    """The bus secret, made on first use (32 random bytes, mode 0600; a looser file is refused;
    ``make=False``: never made, see ``private_secret``)."""
    return private_secret(path, "bus secret", make=make)


def config_secret(config: Config, *, make: bool = True) -> bytes:
    """``[bus] secret`` (``SYMBI_BUS_SECRET``, shared by the gateways of one Redis bus) when
    set, else the data dir's ``bus-secret`` (made on first use; ``make=False``: a reader's, never
    made, so a missing one is ``ConfigError`` rather than a fresh secret that fails every check)."""
    if config.bus.secret is not None:
        return base64.b64decode(config.bus.secret)  # validated by the config model
    return load_secret(config.bus_secret_path, make=make)


def derived_key(secret: bytes, info: bytes) -> bytes:
    """A 32-byte key for one use (``info``, its label) derived from a shared secret: never the
    secret itself, which the bus and the others' keys come from."""
    return HKDF(SHA256(), 32, salt=None, info=info).derive(secret)


TOPIC_KEYS_CAP = 1024  # derived topic keys cached (the oldest goes; derived again when needed)


class KeyRing:
    """Private keys of this process's agents, and the derived message keys (cached)."""

    def __init__(self, secret: bytes, keys_path: Path | None) -> None:
        self.secret = secret
        self._local: dict[str, AgentKeys] = {}
        # verified entries: agent -> (keys, the body and MAC they were verified from)
        self._peers: dict[str, tuple[tuple[Ed25519PublicKey, X25519PublicKey, str], bytes, bytes]] = {}
        self._pair: dict[tuple[str, str], AESGCM] = {}
        self._topic: dict[str, AESGCM] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        # agents whose id never comes back, written down until their directory entry is gone:
        # a run that stopped without ending them (a crash) leaves them to the next one
        self._marks: sqlite3.Connection | None = None
        self.left_behind: list[tuple[str, str]] = []  # (agent, name) left by an earlier run
        # agents whose id recurs (a stateless client's) that ended -> when (ms), oldest first:
        # their keys are kept for a return until ``due`` hands them out (``park``)
        self._ended: dict[str, int] = {}
        self._unended: set[str] = set()  # stored, and no run ended them (parked at start)
        if keys_path is not None:
            self._db = _open_keys_db(keys_path)
            self._marks = _open_marks(keys_path)
            self.left_behind = [
                (str(a), str(n)) for a, n in self._marks.execute("SELECT agent, name FROM ephemeral")
            ]
            for agent, principal, s, d, ended in self._db.execute(
                "SELECT agent, principal, sign, dh, ended_ms FROM agent_keys ORDER BY ended_ms"
            ):
                self._local[agent] = AgentKeys(
                    agent,
                    principal,
                    Ed25519PrivateKey.from_private_bytes(s),
                    X25519PrivateKey.from_private_bytes(d),
                    stored=True,
                )
                if ended is None:
                    self._unended.add(agent)
                else:
                    self._ended[agent] = int(ended)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._marks is not None:
            self._marks.close()
            self._marks = None

    # -- agents ----------------------------------------------------------------------------

    def local(self, agent: str) -> AgentKeys | None:
        return self._local.get(agent)

    def ensure(
        self, agent: str, principal: str, name: str = "", *, persist: bool = True
    ) -> tuple[AgentKeys, PublicKeys]:
        """This agent's keys (made on first registration) and its directory entry. Stored in
        ``bus-keys.db`` only with ``persist``: an id that never comes back (an HTTP session's
        agent) has no use for its keys after a restart, and skips a commit."""
        with self._lock:
            keys = self._local.get(agent)
            back = self._ended.pop(agent, None) is not None  # an ended agent came back: kept again
            self._unended.discard(agent)
            if keys is None or keys.principal != principal:
                keys = AgentKeys.generate(agent, principal)
                self._local[agent] = keys
                self._pair = {k: v for k, v in self._pair.items() if agent not in k}
                if self._db is not None and persist:
                    keys.stored = True
                    with self._db:
                        self._db.execute(
                            "INSERT OR REPLACE INTO agent_keys(agent, principal, sign, dh) VALUES (?,?,?,?)",
                            (agent, principal, _priv(keys.sign), _priv(keys.dh)),
                        )
                elif self._marks is not None and not persist:
                    with self._marks:
                        self._marks.execute(
                            "INSERT OR REPLACE INTO ephemeral(agent, name) VALUES (?,?)", (agent, name)
                        )
            elif back and self._db is not None and keys.stored:
                with self._db:
                    self._db.execute("UPDATE agent_keys SET ended_ms=NULL WHERE agent=?", (agent,))
        return keys, self.entry_for(keys, name)

    def forget(self, agent: str) -> None:
        """The agent ended for good: its private keys, its verified entry and its pair keys go."""
        with self._lock:
            stored = self._local.pop(agent, None)
            self._ended.pop(agent, None)
            self._unended.discard(agent)
            self._peers.pop(agent, None)
            self._pair = {k: v for k, v in self._pair.items() if agent not in k}
            if self._db is not None and stored is not None and stored.stored:
                with self._db:
                    self._db.execute("DELETE FROM agent_keys WHERE agent=?", (agent,))

    def park(self, agent: str, now_ms: int) -> None:
        """An agent whose id recurs ended at ``now_ms``: its keys stay (it may come back and
        read what waits for it) until ``due`` hands it out; ``ensure`` takes it back."""
        with self._lock:
            keys = self._local.get(agent)
            if keys is None:
                return
            self._ended.pop(agent, None)
            self._ended[agent] = now_ms  # the newest last: ``due`` stops at the first not due
            self._unended.discard(agent)
            if self._db is not None and keys.stored:
                with self._db:
                    self._db.execute("UPDATE agent_keys SET ended_ms=? WHERE agent=?", (now_ms, agent))

    def park_unended(self, now_ms: int) -> list[str]:
        """At start: stored agents no earlier run ended (it stopped or crashed with them live)
        and not registered since ended now (none of them is live in this new run); returned."""
        with self._lock:
            agents = [a for a in self._unended if a in self._local]
            for agent in agents:
                self._ended.pop(agent, None)
                self._ended[agent] = now_ms
            self._unended.clear()
            stored = [(now_ms, a) for a in agents if self._local[a].stored]
            if self._db is not None and stored:
                with self._db:  # one commit for all of them (a run may have left thousands)
                    self._db.executemany("UPDATE agent_keys SET ended_ms=? WHERE agent=?", stored)
            return agents

    def ended_at(self, agent: str) -> int | None:
        """When a parked agent ended (ms); None for one that is not parked."""
        return self._ended.get(agent)

    def due(self, ended_before_ms: int) -> list[str]:
        """The parked agents that ended at or before ``ended_before_ms``, oldest first."""
        out = []
        for agent, ended in self._ended.items():
            if ended > ended_before_ms:
                break
            out.append(agent)
        return out

    def unmark(self, agent: str) -> None:
        """An agent whose id never comes back left the directory: nothing is left to clean."""
        with self._lock:
            if self._marks is not None:
                with self._marks:
                    self._marks.execute("DELETE FROM ephemeral WHERE agent=?", (agent,))

    def footprint(self) -> dict[str, int]:
        out = {
            "bus_local_keys": len(self._local),
            "bus_peer_keys": len(self._peers),
            "bus_pair_keys": len(self._pair),
            "bus_parked_keys": len(self._ended),
        }
        if self._db is not None:
            out["bus_stored_keys"] = int(self._db.execute("SELECT count(*) FROM agent_keys").fetchone()[0])
        if self._marks is not None:
            out["bus_ephemeral_marks"] = int(
                self._marks.execute("SELECT count(*) FROM ephemeral").fetchone()[0]
            )
        return out

    def entry_for(self, keys: AgentKeys, name: str = "") -> PublicKeys:
        e = PublicKeys(
            keys.agent,
            keys.principal,
            keys.sign.public_key().public_bytes(*_RAW),
            keys.dh.public_key().public_bytes(*_RAW),
            b"",
            name,
        )
        return PublicKeys(e.agent, e.principal, e.sign_pub, e.dh_pub, self._mac(e.body()), name)

    def admit(self, entry: PublicKeys) -> tuple[Ed25519PublicKey, X25519PublicKey, str]:
        """A directory entry's keys, after checking its HMAC; raises ``BusError`` if forged."""
        cached = self._peers.get(entry.agent)
        if cached is not None and cached[1] == entry.body() and cached[2] == entry.mac:
            return cached[0]
        if not hmac.compare_digest(self._mac(entry.body()), entry.mac):
            raise BusError(
                f"key directory entry of agent {entry.agent!r} fails its HMAC (forged or corrupted)"
            )
        keys = (
            Ed25519PublicKey.from_public_bytes(entry.sign_pub),
            X25519PublicKey.from_public_bytes(entry.dh_pub),
            entry.principal,
        )
        self._peers[entry.agent] = (keys, entry.body(), entry.mac)
        return keys

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.secret, body, sha256).digest()

    # -- message keys ----------------------------------------------------------------------

    def pair_cipher(self, own: AgentKeys, peer: str, peer_dh: X25519PublicKey) -> AESGCM:
        a, b = sorted((own.agent, peer))
        cached = self._pair.get((a, b))
        if cached is None:
            shared = own.dh.exchange(peer_dh)
            info = b"symbi-bus/v1 pair\0" + a.encode() + b"\0" + b.encode()
            cached = AESGCM(HKDF(SHA256(), 32, salt=None, info=info).derive(shared))
            self._pair[(a, b)] = cached
        return cached

    def topic_cipher(self, topic: str) -> AESGCM:
        cached = self._topic.get(topic)
        if cached is None:
            info = b"symbi-bus/v1 topic\0" + topic.encode()
            cached = AESGCM(HKDF(SHA256(), 32, salt=None, info=info).derive(self.secret))
            if len(self._topic) >= TOPIC_KEYS_CAP:  # topic names are the agents' choice: bounded
                del self._topic[next(iter(self._topic))]
            self._topic[topic] = cached
        return cached

    @property
    def topic_keys(self) -> int:
        return len(self._topic)


def verify_signature(pub: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        pub.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _priv(k: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _open_keys_db(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS agent_keys(agent TEXT PRIMARY KEY, principal TEXT NOT NULL, "
        "sign BLOB NOT NULL, dh BLOB NOT NULL, ended_ms INTEGER)"
    )
    if "ended_ms" not in {row[1] for row in db.execute("PRAGMA table_info(agent_keys)")}:
        db.execute("ALTER TABLE agent_keys ADD COLUMN ended_ms INTEGER")  # a store of an older release
    db.isolation_level = "DEFERRED"
    return db


def _open_marks(path: Path) -> sqlite3.Connection:
    """A second connection to the key store for the ephemeral agents' marks: synchronous=NORMAL
    (no fsync per commit; WAL keeps them across a process crash, which is what they are for),
    so an HTTP session's agent costs no disk flush."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS ephemeral(agent TEXT PRIMARY KEY, name TEXT NOT NULL)")
    db.isolation_level = "DEFERRED"
    return db
