"""The audit signing key on disk.

* ``audit-key.pem`` (``Config.audit_key_path``): the Ed25519 private key, PKCS#8 PEM, mode
  0600, created on first start. A key file readable by group or others is refused.
* ``audit-key.pub.pem`` beside it: the current public key, for verifiers.
* ``audit-key.pub.<key-hex>.pem``: public keys retired by rotation (verifiers of old events).
* ``audit-key.pem.new``: a rotation in progress (see ``AuditLog.rotate_key``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from gateway.audit.record import key_id_of, public_pem
from gateway.custody import write_atomic
from gateway.errors import AuditError


def public_key_path(key_path: Path) -> Path:
    """``audit-key.pem`` -> ``audit-key.pub.pem``."""
    name = key_path.name.removesuffix(".pem")
    return key_path.with_name(f"{name}.pub.pem")


def retired_public_key_path(key_path: Path, key_id: str) -> Path:
    name = key_path.name.removesuffix(".pem")
    return key_path.with_name(f"{name}.pub.{key_id.split(':')[-1]}.pem")


def pending_key_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".new")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename (never a half-written key)."""
    write_atomic(path, data, mode)  # a random O_EXCL name: never through a planted link
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, private_pem(key), 0o600)


def write_public_key(path: Path, key: Ed25519PublicKey) -> None:
    _write_atomic(path, public_pem(key).encode("ascii"), 0o644)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read the signing key; refuse one that others can read or that is not Ed25519."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise AuditError(f"cannot read audit key {path}: {e.strerror or e}") from None
    if st.st_mode & 0o077:
        raise AuditError(
            f"audit key {path} is readable by group/others (mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise AuditError(f"audit key {path} is not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"audit key {path} is not an Ed25519 key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``, generated (mode 0600) with its public key on first start."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        write_private_key(path, key)
        write_public_key(public_key_path(path), key.public_key())
        return key
    key = load_private_key(path)
    pub = public_key_path(path)
    if not pub.exists():  # exported again if someone removed it
        write_public_key(pub, key.public_key())
    return key


def load_public_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """All Ed25519 public keys in a PEM file (one or more blocks), by key id."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise AuditError(f"cannot read public key {path}: {e}") from None
    keys: dict[str, Ed25519PublicKey] = {}
    marker = "-----BEGIN PUBLIC KEY-----"
    for block in text.split(marker)[1:]:
        try:
            key = load_pem_public_key((marker + block).encode("ascii"))
        except ValueError as e:
            raise AuditError(f"{path}: not a PEM public key: {e}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise AuditError(f"{path}: not an Ed25519 public key")
        keys[key_id_of(key)] = key
    if not keys:
        raise AuditError(f"{path}: no PEM public key found")
    return keys


def exported_public_keys(key_path: Path) -> dict[str, Ed25519PublicKey]:
    """The current and retired public keys exported beside ``key_path`` (empty if none)."""
    keys: dict[str, Ed25519PublicKey] = {}
    current = public_key_path(key_path)
    stem = current.name[: -len(".pem")]
    candidates = [current, *sorted(key_path.parent.glob(f"{stem}.*.pem"))] if key_path.parent.exists() else []
    for p in candidates:
        if p.exists():
            keys.update(load_public_keys(p))
    return keys


def finish_rotation(key_path: Path) -> str | None:
    """Make ``audit-key.pem.new`` the current key; returns its id (None if nothing pending).

    The old public key is archived as ``audit-key.pub.<id>.pem`` first, then the private key
    file is replaced (the old private key is gone) and the new public key exported.
    """
    pending = pending_key_path(key_path)
    if not pending.exists():
        return None
    new = load_private_key(pending)
    if key_path.exists():
        old = load_private_key(key_path)
        if key_id_of(old.public_key()) != key_id_of(new.public_key()):
            write_public_key(retired_public_key_path(key_path, key_id_of(old.public_key())), old.public_key())
    os.replace(pending, key_path)
    _fsync_dir(key_path.parent)
    write_public_key(public_key_path(key_path), new.public_key())
    return key_id_of(new.public_key())
