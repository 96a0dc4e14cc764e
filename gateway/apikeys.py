"""API key records and the key format, shared by every key store.

A key is ``symbi_<id>_<secret>``: ``id`` is a public 12-hex-digit handle (listed, revoked
by), ``secret`` is 32 random bytes; stores keep ``sha256(key)`` only (see
``gateway.server.auth`` for why a plain SHA-256 is right here). The file store lives with the
HTTP front (``gateway.server.auth.ApiKeyStore``), the PostgreSQL one with the shared state
(``gateway.state.postgres``); both build on this module, so the state package does not
import the front.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.context import Principal

__all__ = ["KEY_PREFIX", "ApiKeyRecord", "has_live_key", "hash_key", "new_key", "split_key"]

KEY_PREFIX = "symbi_"
_KEY_ID = re.compile("[0-9a-f]{12}")  # a key id: 12 lower-case hex digits (ASCII only)


@dataclass(frozen=True)
class ApiKeyRecord:
    """One stored API key (the secret itself is never stored)."""

    id: str
    principal: str
    roles: tuple[str, ...]
    kind: str
    sha256: str
    created: float
    revoked: float | None = None

    def as_principal(self) -> Principal:
        return Principal(
            id=self.principal, kind=self.kind, roles=self.roles, claims={"key_id": self.id}, source="key"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principal": self.principal,
            "roles": list(self.roles),
            "kind": self.kind,
            "sha256": self.sha256,
            "created": self.created,
            "revoked": self.revoked,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ApiKeyRecord:
        return cls(
            id=str(d["id"]),
            principal=str(d["principal"]),
            roles=tuple(str(r) for r in d.get("roles", ())),
            kind=str(d.get("kind", "user")),
            sha256=str(d["sha256"]),
            created=float(d.get("created", 0.0)),
            revoked=None if d.get("revoked") is None else float(d["revoked"]),
        )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def split_key(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    if not key.startswith(KEY_PREFIX):
        return None
    rest = key[len(KEY_PREFIX) :]
    kid, sep, secret = rest.partition("_")
    # one C call (the character test per digit was 13 calls on every authenticated request)
    if not sep or not secret or _KEY_ID.fullmatch(kid) is None:
        return None
    return kid


def new_key(principal: str, roles: tuple[str, ...], kind: str) -> tuple[str, ApiKeyRecord]:
    """A fresh key (shown once) and the record stored for it (its hash, never the key)."""
    if not principal:
        raise ValueError("principal must not be empty")
    kid = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{kid}_{secrets.token_urlsafe(32)}"
    rec = ApiKeyRecord(
        id=kid, principal=principal, roles=tuple(roles), kind=kind, sha256=hash_key(key), created=time.time()
    )
    return key, rec


def has_live_key(records: Iterable[ApiKeyRecord], principal: str) -> bool:
    """Whether ``records`` hold a live (not revoked) key of ``principal`` (the name a key's
    caller is, ``key:<principal>`` qualified): a suspension of ``key:alcie`` (a typo) held no
    one while the operator was told "suspended" (session 42)."""
    return any(r.principal == principal and r.revoked is None for r in records)
