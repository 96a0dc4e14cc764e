"""The key sets JWTs are verified against: ``http.jwt.jwks_file`` or ``http.jwt.jwks_url``.

Which key may verify a token (``signing_key``): one marked for signatures (``use`` absent or
``sig``, ``key_ops`` absent or holding ``verify``) whose own ``alg``, when it names one, is
the token's. An encryption key, or an RS256 key asked to verify a PS256 token, is refused: a
key is good for what its owner published it for, not for every algorithm of its family.

Fetching a URL (``JwksUrl``) is bounded, since the IdP (or whoever answers for it) is outside
the gateway: the body is read up to ``JWKS_MAX_BYTES``, and the whole fetch -- connect, TLS,
headers, body -- ends after ``JWKS_FETCH_S``, however slowly the bytes drip (a socket timeout
bounds one read only). A failed fetch is remembered for ``JWKS_RETRY_S``: until then tokens
that would need the key set are refused at once, so a flood of made-up ``kid``s makes at most
one fetch per interval, never one (and a wait) each. A ``kid`` missing from a fresh set
triggers a refetch at most every ``JWKS_REFETCH_S`` (a rotation shows up then).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jwt import PyJWK, PyJWTError

from gateway.errors import AuthFailed, JwksFetchFailed

_logger = logging.getLogger("symbi.http.jwks")

JWKS_MAX_BYTES = 256 * 1024  # an IdP's key set is a few kB; anything near this is not one
JWKS_FETCH_S = 5.0  # one fetch, start to end
JWKS_LIFESPAN_S = 300.0  # a fetched set is used this long (a key the IdP removed stops then)
JWKS_REFETCH_S = 30.0  # an unknown kid refetches no sooner than this after the last fetch
JWKS_RETRY_S = 10.0  # after a failed fetch, the next one no sooner than this


@dataclass(frozen=True)
class Jwk:
    """A key of a set, beside the JWK as its owner published it: ``use``, ``key_ops`` and
    ``alg`` are read there (PyJWK fills in an ``alg`` from the key type, and keeps the rest
    in a private attribute only)."""

    published: Mapping[str, Any]
    key: PyJWK


def parse_key_set(text: str | bytes) -> list[Jwk]:
    """The usable keys of a JWK set document; a key of a type PyJWT cannot use is skipped, as
    ``PyJWKSet`` does. Raises ``ValueError`` for what is not a set or has no usable key."""
    doc = json.loads(text)
    raw = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw, list) or not raw:
        raise ValueError("a JWK set needs a non-empty 'keys' list")
    keys = []
    for data in raw:
        if isinstance(data, dict):
            with contextlib.suppress(PyJWTError):  # an unsupported kty/crv/alg: skipped
                keys.append(Jwk(data, PyJWK(data)))
    if not keys:
        raise ValueError("the JWK set has no key PyJWT can use")
    return keys


def signing_key(keys: Iterable[Jwk], kid: object, alg: str) -> PyJWK:
    """The one key of ``keys`` that may verify a token with header ``kid`` and ``alg``."""
    found = [k.key for k in keys if (kid is None or k.key.key_id == kid) and _verifies(k.published, alg)]
    if len(found) != 1:
        raise AuthFailed("no unique JWKS signature key matches the token's kid and algorithm")
    return found[0]


def _verifies(data: Mapping[str, Any], alg: str) -> bool:
    use, ops, own = data.get("use"), data.get("key_ops"), data.get("alg")
    if use is not None and use != "sig":
        return False
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    return own is None or own == alg


class _Deadline:
    """Shuts a fetch's socket down when its time is up: a blocked read (or TLS handshake)
    returns at once. By file descriptor, so the TLS wrapping changes nothing; cancelled
    before the socket is closed, so a descriptor reused afterwards is never touched."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._fd = -1
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._fd = sock.fileno()
            if self.fired:
                sock.shutdown(socket.SHUT_RDWR)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._fd >= 0:
                with socket.socket(fileno=os.dup(self._fd)) as s:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def cancel(self) -> None:
        with self._lock:
            self._timer.cancel()
            self._fd = -1


def fetch_jwks(
    url: str,
    *,
    max_bytes: int = JWKS_MAX_BYTES,
    seconds: float = JWKS_FETCH_S,
    proxy: tuple[str, int] | None = None,
) -> bytes:
    """The body at ``url`` (a 200), at most ``max_bytes``, in at most ``seconds`` in all, through
    the HTTP proxy at ``proxy`` when given (an https URL only: a CONNECT tunnel, TLS checked
    end to end with the IdP's name). Raises ``JwksFetchFailed`` naming why. No redirect is
    followed."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise JwksFetchFailed(f"not an http(s) URL: {url!r}")
    https = u.scheme == "https"
    port = u.port or (443 if https else 80)
    if proxy is not None and not https:
        raise JwksFetchFailed("a proxy is used for an https:// key set only")
    deadline = _Deadline(seconds)
    conn: http.client.HTTPConnection | None = None
    try:
        sock = socket.create_connection(proxy or (u.hostname, port), timeout=seconds)
        deadline.watch(sock)
        if proxy is not None:
            _tunnel(sock, u.hostname, port)
        if https:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=u.hostname)
        cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
        conn = cls(u.hostname, port, timeout=seconds)
        conn.sock = sock  # connected (and wrapped) above, under the deadline
        conn.request(
            "GET",
            (u.path or "/") + (f"?{u.query}" if u.query else ""),
            headers={"Accept": "application/json"},
        )
        return _body(conn.getresponse(), max_bytes, deadline, seconds)
    except JwksFetchFailed:
        raise
    except (OSError, http.client.HTTPException) as e:
        why = f"over {seconds:g} s" if deadline.fired else f"{type(e).__name__}: {e}"
        raise JwksFetchFailed(f"the key set could not be fetched ({why})") from None
    finally:
        deadline.cancel()
        if conn is not None:
            conn.close()


_TUNNEL_REPLY_MAX = 8192  # a proxy's answer to CONNECT: a status line and a few headers


def _tunnel(sock: socket.socket, host: str, port: int) -> None:
    """Asks the proxy on ``sock`` for a tunnel to ``host:port``; returns once it answered 200.
    The reply is read byte-bounded; the fetch's deadline bounds its time."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii"))
    reply = b""
    while b"\r\n\r\n" not in reply:
        if len(reply) > _TUNNEL_REPLY_MAX:
            raise JwksFetchFailed("the proxy's answer to CONNECT is too long")
        chunk = sock.recv(1024)
        if not chunk:
            raise JwksFetchFailed("the proxy closed the connection before answering CONNECT")
        reply += chunk
    head, _, rest = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if len(status) < 2 or not status[0].startswith(b"HTTP/") or status[1] != b"200":
        raise JwksFetchFailed(f"the proxy refused the tunnel: {head[:80]!r}")
    if rest:  # the IdP speaks first in TLS never: bytes here are the proxy's, not the IdP's
        raise JwksFetchFailed("the proxy sent bytes after its answer to CONNECT")


def _body(resp: http.client.HTTPResponse, max_bytes: int, deadline: _Deadline, seconds: float) -> bytes:
    if resp.status != 200:
        raise JwksFetchFailed(f"the JWKS endpoint answered {resp.status}")
    declared = resp.getheader("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise JwksFetchFailed(f"the key set is {declared} bytes, over the {max_bytes} allowed")
    body = resp.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise JwksFetchFailed(f"the key set is over the {max_bytes} bytes allowed")
    if deadline.fired:  # a body cut short by the shutdown reads as a (short) success
        raise JwksFetchFailed(f"the fetch took over {seconds:g} s")
    return body


class JwksUrl:
    """``http.jwt.jwks_url``'s key set, fetched when needed and kept (module docstring).
    Safe to share between threads: one fetch at a time, the others wait for its outcome."""

    def __init__(
        self,
        url: str,
        *,
        proxy: tuple[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.proxy = proxy
        self.clock = clock  # a seam: the tests move it past the lifespan and the retry interval
        self.fetches = 0
        self._lock = threading.Lock()
        self._keys: list[Jwk] | None = None
        self._fetched_at = 0.0
        self._refused_until = 0.0
        self._refusal = ""

    def keys(self, kid: object) -> list[Jwk]:
        """The keys to pick ``kid``'s from, fetched first when there are none fresh, or ``kid``
        is not among them and the last fetch is ``JWKS_REFETCH_S`` old. Raises ``AuthFailed``."""
        with self._lock:
            now = self.clock()
            keys = self._keys if now - self._fetched_at < JWKS_LIFESPAN_S else None
            if keys is not None and (
                any(k.key.key_id == kid for k in keys)
                or kid is None
                or now - self._fetched_at < JWKS_REFETCH_S
            ):
                return keys
            if now < self._refused_until:  # the last fetch failed: not again so soon
                if keys is not None:
                    return keys
                raise JwksFetchFailed(f"the key set is unavailable: {self._refusal}")
            try:
                self.fetches += 1
                got = parse_key_set(fetch_jwks(self.url, proxy=self.proxy))
            except Exception as e:  # noqa: BLE001 - any failure refuses, remembered for a while
                self._refusal = (
                    e.message if isinstance(e, AuthFailed) else f"not a JWK set ({type(e).__name__})"
                )
                self._refused_until = self.clock() + JWKS_RETRY_S
                self._keys = keys  # a fresh set stays; an expired one is gone
                _logger.error("http.jwt.jwks_url %s refused: %s", self.url, self._refusal)
                if keys is not None:
                    return keys
                raise JwksFetchFailed(f"the key set is unavailable: {self._refusal}") from None
            self._keys, self._fetched_at, self._refused_until = got, self.clock(), 0.0
            return got
