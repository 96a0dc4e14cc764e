"""Custody of the gateway's own files: who may write what it trusts, who may read what it keeps.

* Trusted inputs (the config file, the policy, its data and tests, the JWKS file) decide who may
  call what. ``check_trusted_files`` refuses to start (``ConfigError`` naming the path) when
  one of them, or a folder above it, can be changed by a user other than root or the gateway's
  own user: group/other-writable (a sticky folder such as /tmp is fine: others cannot rename
  our entries there) or owned by someone else.
* The data dir (audit log, keys, API keys, pins) is made 0700 and its files 0600 at start:
  the audit log holds every principal's arguments, and nothing the gateway launches (upstream
  servers run as another uid) may read it; the config file loses others' access (o-rwx).
* ``file_facts`` describes a hot-reloaded file for the audit record: owner, digest, and a
  diff summary against the version that was in force.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import logging
import os
import pwd
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.model import Config
from gateway.errors import ConfigError

_logger = logging.getLogger("symbi.custody")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# a policy, its data or one of its tests, read whole at every load and reload
MAX_TRUSTED_BYTES = 64 * 1024 * 1024


def trusted_files(config: Config) -> list[tuple[str, Path]]:
    """(what, path) of every file whose content decides who may do what."""
    from gateway.policy.loader import discover_files

    out: list[tuple[str, Path]] = []
    if config.source is not None:
        out.append(("config", Path(config.source)))
    if config.policies_enforced and config.policy.engine == "embedded":
        files = discover_files(config.policy.path, config.policy.data)
        out.append(("policy.path", files.policy))
        if files.data is not None:
            out.append(("policy.data", files.data))
        out += [("policy test", t) for t in files.tests]
    jwt = config.http.jwt
    if jwt is not None and jwt.jwks_file is not None:
        out.append(("http.jwt.jwks_file", Path(jwt.jwks_file)))
    return out


def hidden_paths(config: Config) -> list[str]:
    """The gateway's own paths no sandbox may see: the data dir, keys, logs, the config."""
    paths = [config.data_dir, config.audit_path.parent, config.audit_key_path, config.api_keys_path]
    if config.source is not None:
        paths.append(Path(config.source))
    if config.audit.checkpoint_export is not None:
        paths.append(config.audit.checkpoint_export)
    if config.audit.archive_dir is not None:  # retention's sealed segments: the log's older events
        paths.append(config.audit.archive_dir)
    if config.gateway.env_file is not None:  # the servers' secrets
        paths.append(Path(config.gateway.env_file))
    return sorted({str(p) for p in paths})


def writable_by_others(path: Path, *, euid: int | None = None) -> str | None:
    """Why someone other than root/``euid`` could change ``path`` (None when nobody can).

    A symbolic link is followed hop by hop, and the folders above each hop and above the file it
    ends at are checked as well: whoever can rename entries in one of them can point the path at
    another file (any JSON root owns: a permissive data file) without touching what is checked.
    """
    me = os.geteuid() if euid is None else euid
    for hop in _link_hops(Path(path).absolute()):
        why = _writable_by_others(hop, me)
        if why is not None:
            return why if hop == Path(path).absolute() else f"{path} leads through {hop}: {why}"
    return None


def _link_hops(p: Path) -> list[Path]:
    """``p``, every link it goes through (at most 40), and the real file it ends at."""
    hops = [p]
    while p.is_symlink() and len(hops) <= 40:
        p = p.parent / os.readlink(p)
        hops.append(p)
    real = Path(os.path.realpath(hops[-1]))
    return hops if real in hops else [*hops, real]


def _writable_by_others(p: Path, me: int) -> str | None:
    try:
        st, entry = os.stat(p), os.lstat(p)  # a link's own owner may re-point it
    except OSError:
        return None  # a missing file is reported by whoever reads it
    for uid in (entry.st_uid, st.st_uid):
        if uid not in (0, me):
            return f"{p} is owned by uid {uid}"
    if st.st_mode & 0o022:
        return f"{p} is writable by group/others (mode {stat.S_IMODE(st.st_mode):o})"
    child_uid = entry.st_uid
    for folder in p.parents:
        try:
            fst = os.stat(folder)
        except OSError:
            return None
        if fst.st_uid not in (0, me):
            return f"{folder} (a folder above {p}) is owned by uid {fst.st_uid}"
        sticky = bool(fst.st_mode & stat.S_ISVTX) and child_uid in (0, me)
        if fst.st_mode & 0o022 and not sticky:
            return f"{folder} (a folder above {p}) is writable by group/others (mode {stat.S_IMODE(fst.st_mode):o})"
        child_uid = fst.st_uid
    return None


def check_trusted_files(config: Config) -> None:
    """Refuse to start when another user could change the config, policy, data or tests.

    Raises:
        ConfigError: naming the file (and why); exit code 2 from the CLI.
    """
    for what, path in trusted_files(config):
        why = writable_by_others(path)
        if why is not None:
            raise ConfigError(f"{what}: refusing to trust {path}: {why}; chmod go-w it (and its folders)")
    env_file = config.gateway.env_file
    if env_file is not None and _readable_by_others(Path(env_file)):
        _logger.warning(
            "gateway.env_file %s is readable by other users, upstream servers included: chmod 600 it",
            env_file,
        )


def readable_config(config: Config) -> Path | None:
    """The config file when other users (not its owner, not its group) can read it, else None."""
    src = config.source
    return Path(src) if src is not None and _readable_by_others(Path(src)) else None


def private_config(config: Config) -> None:
    """Take other users' access to the config file at start (mode o-rwx).

    An unsandboxed upstream runs as another user (``security.upstream_user``) in the config's
    folder, and a checkout or an editor leaves the file 0644: the upstream could read which
    servers run, their arguments, the paths of the policy and the data dir. The file's owner
    (the gateway's user or root: anyone else is refused by ``check_trusted_files``) and its
    group keep their access. A file this process cannot change (read-only mount) is warned
    about, and the start goes on: nothing in it is a secret (those are in the env file, which
    must already be private)."""
    path = readable_config(config)
    if path is None:
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        os.chmod(path, mode & ~0o007)
    except OSError as e:
        _logger.warning(
            "config %s is readable by other users, upstream servers included, and cannot be made private (%s): "
            "chmod o-rwx it",
            path,
            e.strerror or e,
        )
        return
    _logger.warning(
        "config %s was readable by other users, upstream servers included: made mode %o", path, mode & ~0o007
    )


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


def secure_data_dir(config: Config) -> None:
    """Create the data dir 0700 (tighten an existing one) and its files 0600."""
    d = Path(config.data_dir)
    d.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _tighten(d, PRIVATE_DIR)
    for f in d.iterdir():
        if f.is_file() and not f.is_symlink():
            _tighten(f, PRIVATE_FILE)
    extras = [config.audit_path.parent, config.audit_key_path.parent, config.api_keys_path.parent]
    if config.audit.archive_dir is not None:
        extras.append(config.audit.archive_dir)
    for extra in extras:
        if extra != d and extra.exists():
            _tighten(extra, PRIVATE_DIR)


def _tighten(path: Path, mode: int) -> None:
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) & ~mode:
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
            _logger.info("tightened %s to mode %o", path, stat.S_IMODE(st.st_mode) & mode)
    except OSError as e:
        raise ConfigError(f"gateway.data_dir: cannot make {path} private: {e.strerror or e}") from None


def private_secret(path: Path, what: str, *, make: bool = True) -> bytes:
    """A 32-byte secret at ``path``, made on first use (random, mode 0600, fsynced); an existing
    file readable by group or others, or of the wrong size, is refused with ``ConfigError``.
    ``make=False`` (a reader's: a fresh secret would fail every check): one missing or closed to
    this user is a ``ConfigError`` too, and nothing is made. One that cannot be made or read
    (a data dir closed to this user, a full disk) is a ``ConfigError`` naming the path.

    Made in a temporary file and linked into place, so processes starting together on one
    data dir never read a half-written secret: one link wins and every process reads that one.
    """
    try:
        return _made_secret(path, what) if make else _checked_secret(path, what)
    except OSError as e:  # (missing, a data dir closed to this user, a full or read-only disk)
        said = f"the {what} cannot be made or read here" if make else f"no {what} can be read here"
        raise ConfigError(f"{path}: {said} ({e.strerror or e})") from e


def _made_secret(path: Path, what: str) -> bytes:
    """``private_secret``'s making: the OS's errors are the caller's to say."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.link(tmp, path)  # atomic, and fails if another process linked first
            _fsync_dir(path.parent)
        except FileExistsError:
            pass
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)
    return _checked_secret(path, what)


def _checked_secret(path: Path, what: str) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: the {what} must not be readable by group or others (mode {mode:o}; chmod 600 it)"
        )
    data = path.read_bytes()
    if len(data) != 32:
        raise ConfigError(f"{path}: the {what} must be 32 bytes")
    return data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Replace ``path`` with ``data`` whole: written beside it under a fresh random name, then
    renamed over it. The temporary file is created exclusively (``mkstemp``: O_EXCL, 0600, then
    ``fchmod`` to ``mode``): a predictable name (``.NAME.tmp-PID``) let whoever can write the
    folder plant a symlink there, and the write went through it into a file of their choosing,
    or a file of their own, which then received what was written (secrets included)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (before SQLite opens it, so its
    WAL and shared-memory files, which SQLite creates with the database's mode, are private too)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FileVersion:
    path: Path
    sha256: str
    text: str
    owner_uid: int | None


def read_trusted(path: Path, limit: int = MAX_TRUSTED_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them. Anything else is
    refused unread: a FIFO held the reading thread forever (the policy watcher, and with it
    every later reload, an admin's included, waiting on its lock), a device such as
    /dev/zero never ends. Opened without blocking (a FIFO's open waits for a writer).

    Raises:
        OSError: the file cannot be opened, is not a regular file, or is over ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket is never read)")
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def snapshot(paths: Iterable[Path]) -> dict[Path, FileVersion]:
    out: dict[Path, FileVersion] = {}
    for p in paths:
        try:
            data = read_trusted(p)
            uid: int | None = p.stat().st_uid
        except OSError:
            data, uid = b"", None
        out[p] = FileVersion(p, hashlib.sha256(data).hexdigest(), data.decode("utf-8", "replace"), uid)
    return out


def changes(old: dict[Path, FileVersion], new: dict[Path, FileVersion]) -> list[dict[str, Any]]:
    """One entry per changed file: owner, old and new digest, lines added/removed, first hunks."""
    out: list[dict[str, Any]] = []
    for path, now in new.items():
        before = old.get(path)
        if before is not None and before.sha256 == now.sha256:
            continue
        diff = list(
            difflib.unified_diff(
                (before.text if before else "").splitlines(), now.text.splitlines(), lineterm="", n=0
            )
        )
        added = sum(1 for line in diff if line.startswith("+") and not line.startswith("+++"))
        removed = sum(1 for line in diff if line.startswith("-") and not line.startswith("---"))
        out.append(
            {
                "file": str(path),
                "owner": _owner(now.owner_uid),
                "sha256": now.sha256,
                "previous_sha256": before.sha256 if before else None,
                "lines_added": added,
                "lines_removed": removed,
                "hunks": [line for line in diff if line.startswith("@@")][:10],
            }
        )
    return out


def _owner(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
