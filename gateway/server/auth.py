"""HTTP authentication: API keys and JWT bearer tokens, turned into a ``Principal``.

API keys look like ``symbi_<id>_<secret>``: ``id`` is a public 12-hex-digit handle (listed,
revoked by), ``secret`` is 32 random bytes. The store keeps ``sha256(key)`` only. A plain
SHA-256 is the right hash here: the key carries 256 bits of entropy, so there is nothing to
brute-force, and a slow KDF (scrypt/argon2) would cost milliseconds on *every* request.
Comparison is constant-time. The key file is re-read when it changes, so ``symbi keys
revoke`` takes effect on a running server.

JWTs are verified with PyJWT: signature against a JWKS (a file, or a URL fetched bounded by
``gateway.server.jwks``, which also picks the one signature key of the token's algorithm), algorithms pinned from config (``none`` is refused by the config model and
by PyJWT), ``exp``/``iss``/``aud`` required. Roles come from ``http.jwt.roles_claim``.

Everything fails closed: a malformed header, an unreadable key file or an unreachable JWKS
means "not authenticated", never anonymous access.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import jwt

from gateway.apikeys import KEY_PREFIX, ApiKeyRecord, hash_key, new_key, split_key
from gateway.config.model import Config
from gateway.config.sections import JwtSection
from gateway.config.urls import proxy_address
from gateway.context import Principal
from gateway.custody import write_atomic
from gateway.errors import AuthFailed, ConfigError, NoCredentials
from gateway.filestamp import Stamp, file_stamp
from gateway.jsonlimits import too_large
from gateway.server.jwks import Jwk, JwksUrl, parse_key_set, signing_key
from gateway.textcheck import not_utf8_at

# -- API keys -------------------------------------------------------------------------------


class ApiKeys(Protocol):
    """Where API keys live: ``ApiKeyStore`` (a file in the data dir, one gateway) or
    ``gateway.state.pgkeys.PgApiKeyStore`` (shared by replicas, ``[state] postgres_url``)."""

    def records(self) -> list[ApiKeyRecord]: ...
    def lookup(self, key: str) -> ApiKeyRecord | None: ...
    def get(self, kid: str) -> ApiKeyRecord | None: ...
    def cached(self, kid: str) -> ApiKeyRecord | None: ...
    def create(
        self, principal: str, roles: tuple[str, ...], kind: str = "user"
    ) -> tuple[str, ApiKeyRecord]: ...
    def revoke(self, kid: str) -> bool: ...


def open_api_keys(config: Config, *, cache: bool = False) -> ApiKeys:
    """The key store the config names (PostgreSQL is connected and migrated here; ``cache``:
    a serving gateway's, which keeps the live keys kept exact by NOTIFY, ``gateway.state.keycache``)."""
    from gateway.state import open_postgres

    pg = open_postgres(config)
    if pg is not None:
        from gateway.state.pgkeys import PgApiKeyStore

        return PgApiKeyStore(pg, owns=True, cache=cache)
    return ApiKeyStore(config.api_keys_path)


class ApiKeyStore:
    """The API key file (JSON, mode 0600). Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = os.fspath(self.path)  # stat-ed on every lookup: no Path frames per request
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._records: dict[str, ApiKeyRecord] = {}

    # reading --------------------------------------------------------------------------------

    def _load(self) -> dict[str, ApiKeyRecord]:
        """Current records, re-read when the file changed (``file_stamp``); none while it cannot
        be looked at (missing: no key yet)."""
        with self._lock:
            stamp = file_stamp(self._file)
            if stamp is None:
                self._stamp, self._records = None, {}
                return {}
            if stamp != self._stamp:
                self._records = _parse_keys(self.path, self.path.read_text(encoding="utf-8"))
                self._stamp = stamp
            return self._records

    def records(self) -> list[ApiKeyRecord]:
        return sorted(self._load().values(), key=lambda r: r.created)

    def lookup(self, key: str) -> ApiKeyRecord | None:
        """The live record for ``key``, or None (unknown, revoked, malformed)."""
        kid = split_key(key)
        if kid is None:
            return None
        rec = self._load().get(kid)
        if rec is None or rec.revoked is not None:
            return None
        return rec if hmac.compare_digest(rec.sha256, hash_key(key)) else None

    def get(self, kid: str) -> ApiKeyRecord | None:
        rec = self._load().get(kid)
        return rec if rec is not None and rec.revoked is None else None

    def cached(self, kid: str) -> ApiKeyRecord | None:
        return self.get(kid)  # a local file: always at hand

    # writing --------------------------------------------------------------------------------

    def _write(self, records: list[ApiKeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the data dir: private
        doc = {"version": 1, "keys": [r.as_json() for r in records]}
        write_atomic(self.path, json.dumps(doc, indent=2).encode("utf-8"))

    def create(self, principal: str, roles: tuple[str, ...], kind: str = "user") -> tuple[str, ApiKeyRecord]:
        """Make a new key; returns (the key, shown once; its record)."""
        key, rec = new_key(principal, roles, kind)
        self._write([*self.records(), rec])
        return key, rec

    def revoke(self, kid: str) -> bool:
        """Mark a key revoked; False when there is no such live key."""
        recs = self.records()
        hit = False
        out = []
        for r in recs:
            if r.id == kid and r.revoked is None:
                r = ApiKeyRecord(**{**r.__dict__, "revoked": time.time()})
                hit = True
            out.append(r)
        if hit:
            self._write(out)
        return hit


def _parse_keys(path: Path, text: str) -> dict[str, ApiKeyRecord]:
    """The key file's records by id. ``ConfigError`` naming the file when it is not JSON or a
    record is malformed (a missing field, a list where an object goes): ``KeyError`` or
    ``TypeError`` escaped before, a 500 where a reader meant to log and go on, a traceback
    from ``symbi keys list`` (session 42)."""
    try:
        doc = json.loads(text)
        return {str(r["id"]): ApiKeyRecord.from_json(r) for r in doc.get("keys", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path}: not an API key file ({type(e).__name__}: {e})") from e


# -- JWT ------------------------------------------------------------------------------------


def load_jwks_file(path: Path) -> list[Jwk]:
    """The key set in ``http.jwt.jwks_file``; a missing or malformed file is a ``ConfigError``."""
    try:
        return parse_key_set(path.read_bytes())
    except OSError as e:
        raise ConfigError(f"http.jwt.jwks_file: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(f"http.jwt.jwks_file: {path} is not a JWK set: {e}") from None


class JwtVerifier:
    """Verifies bearer JWTs against the configured issuer, audience, algorithms and JWKS."""

    def __init__(self, cfg: JwtSection) -> None:
        self.cfg = cfg
        self.algorithms = [a for a in cfg.algorithms if a.lower() != "none"]
        # a URL's set is fetched bounded and kept 300 s (gateway.server.jwks); a file's, read once
        via = cfg.jwks_proxy
        proxy = proxy_address(via) if via is not None and via != "direct" else None
        self._url = JwksUrl(cfg.jwks_url, proxy=proxy) if cfg.jwks_url is not None else None
        self._keyset: list[Jwk] | None = None
        if self._url is None and cfg.jwks_file is not None:
            self._keyset = load_jwks_file(Path(cfg.jwks_file))

    def _key_for(self, token: str) -> Any:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise AuthFailed(f"token algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        if self._url is not None:
            return signing_key(self._url.keys(kid), kid, alg).key
        assert self._keyset is not None
        return signing_key(self._keyset, kid, alg).key

    def verify(self, token: str) -> Principal:
        try:
            key = self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.cfg.audience,
                issuer=self.cfg.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
                leeway=30,
            )
        except AuthFailed:
            raise
        except Exception as e:  # noqa: BLE001 - any verification problem (incl. JWKS fetch) refuses
            raise AuthFailed(f"invalid token: {type(e).__name__}") from None
        # claims reach the policy's input: NaN (PyJWT's parser takes it; regorus holds
        # NaN <= x true) and nesting past the walks' bound are refused as arguments are
        bad = too_large(claims, finite=True)
        if bad is not None:
            raise AuthFailed(f"invalid token: claim {bad.path.lstrip('.')!r}: {bad.problem}")
        roles = claims.get(self.cfg.roles_claim, ())
        if isinstance(roles, str):
            roles = roles.split()
        if not isinstance(roles, (list, tuple)) or not all(isinstance(r, str) for r in roles):
            raise AuthFailed(f"claim {self.cfg.roles_claim!r} must be a list of strings")
        return Principal(
            id=_subject(claims["sub"]),
            kind="user",
            roles=tuple(roles),
            claims=claims,
            source="jwt",
            issuer=self.cfg.issuer,
        )


# control characters (C0, DEL, C1) and the line and paragraph separators: a subject is written
# into audit records, log lines, metric labels and agent ids, where they would split or forge lines
_NOT_IN_A_SUBJECT = frozenset({"Cc", "Zl", "Zp"})


def _subject(sub: object) -> str:
    """The ``sub`` claim as a principal id, refused (``AuthFailed``) as a missing one is when it
    is empty, only whitespace or holds a control character: "" would be one principal shared
    by every such token of the issuer, and no policy entry names it."""
    if not isinstance(sub, str) or not sub.strip():
        raise AuthFailed("invalid token: claim 'sub' is empty")
    if any(unicodedata.category(c) in _NOT_IN_A_SUBJECT for c in sub):
        raise AuthFailed("invalid token: claim 'sub' holds a control character")
    return sub


# -- the authenticator ----------------------------------------------------------------------


# threads of their own for verifying JWTs whose key set comes from a URL (``Authenticator.limiter_for``)
JWKS_THREADS = 4


@dataclass
class Authenticator:
    """Turns request headers into a ``Principal`` (or raises ``NoCredentials`` / ``AuthFailed``)."""

    keys: ApiKeys
    jwt: JwtVerifier | None = None
    anonymous: str | None = None
    _jwks_threads: anyio.CapacityLimiter | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_config(cls, config: Config) -> Authenticator:
        return cls(
            keys=open_api_keys(config, cache=True),
            jwt=JwtVerifier(config.http.jwt) if config.http.jwt is not None else None,
            anonymous=config.anonymous_principal,
        )

    @property
    def jwks_over_network(self) -> bool:
        """True when verifying a JWT may fetch the JWKS (blocking I/O: keep it off the event loop)."""
        return self.jwt is not None and self.jwt.cfg.jwks_url is not None

    @property
    def keys_over_network(self) -> bool:
        """True when API keys live in PostgreSQL (a round trip per lookup: off the event loop)."""
        return not isinstance(self.keys, ApiKeyStore)

    def from_key(self, key: str) -> Principal:
        rec = self.keys.lookup(key)
        if rec is None:
            raise AuthFailed("unknown or revoked API key")
        return rec.as_principal()

    def limiter_for(self, headers: Mapping[str, str]) -> anyio.CapacityLimiter | None:
        """The threads a blocking ``authenticate`` of these headers runs on (None: the shared
        ones). A JWT verified against a JWKS URL takes its own: with the IdP unreachable each
        waits up to 5 s on the fetch (one at a time, under PyJWKClient's lock), and a caller
        without credentials sending made-up tokens held every shared thread, stalling code
        tools, memory, key lookups and the admin API of everyone else. Called on the loop."""
        if not self.jwks_over_network or _presented_key(headers) is not None:
            return None
        if self._jwks_threads is None:
            self._jwks_threads = anyio.CapacityLimiter(JWKS_THREADS)
        return self._jwks_threads

    def authenticate_now(self, headers: Mapping[str, str]) -> Principal | None:
        """``authenticate`` when it needs no blocking I/O, else None: call that in a thread (a
        JWKS over the network; a key in PostgreSQL that this process's cache does not hold --
        then a refusal too is decided there, from PostgreSQL). An API key, in either header,
        needs no JWKS: only what ``authenticate`` would read decides."""
        key = _presented_key(headers)
        if key is None and self.jwks_over_network:
            return None  # a JWT (or no key at all): its verification may fetch the JWKS
        if not self.keys_over_network:
            return self.authenticate(headers)
        kid = split_key(key) if key is not None else None
        rec = self.keys.cached(kid) if kid is not None else None
        if key is None or rec is None or not hmac.compare_digest(rec.sha256, hash_key(key)):
            return None
        return _checked(rec.as_principal())

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal for these headers. An API key in ``X-API-Key`` or a bearer token.

        Its text must be valid UTF-8 (gateway/textcheck.py): PyJWT reads claims and the key
        file is read with ``json.loads``, which makes a lone surrogate of the escape
        ``\\ud800``; the name would fail every write of it (audit, logs, agent id)."""
        return _checked(self._principal(headers))

    def _principal(self, headers: Mapping[str, str]) -> Principal:
        api_key = headers.get("x-api-key")
        auth = headers.get("authorization")
        if api_key is not None:
            return self.from_key(api_key.strip())
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise AuthFailed("Authorization must be 'Bearer <token>'")
            if token.startswith(KEY_PREFIX):
                return self.from_key(token)
            if self.jwt is None:
                raise AuthFailed("JWT bearer tokens are not configured (http.jwt)")
            return self.jwt.verify(token)
        if self.anonymous is not None:
            return Principal(id=self.anonymous, kind="anonymous", source="anonymous")
        raise NoCredentials("credentials required")


def _checked(principal: Principal) -> Principal:
    """``principal`` if its text is valid UTF-8, else ``AuthFailed`` (``authenticate``)."""
    bad = not_utf8_at(
        {"id": principal.id, "kind": principal.kind, "roles": principal.roles, "claims": principal.claims}
    )
    if bad is not None:
        raise AuthFailed(f"credentials refused: the text at {bad} is not valid UTF-8")
    return principal


def _presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key ``authenticate`` would look up for these headers, or None (none, or a JWT)."""
    api_key = headers.get("x-api-key")
    if api_key is not None:
        return api_key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token.startswith(KEY_PREFIX) else None
