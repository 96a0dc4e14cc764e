"""What verification trusts: pinned key ids and checkpoints kept outside the data dir.

Public keys found beside the log (or in its ``keys`` table) are only *candidates*: anyone who
can write the data dir can put their own there and re-sign a rewritten log. So when the config
pins key ids (``[audit] pinned_keys``, printed by ``symbi audit init`` and at every start
without pins), only those keys are trusted (and keys a signed rotation in the chain hands over
to). Checkpoints exported to a second place (``[audit] checkpoint_export``, or files the admin
kept and passes with ``--anchor``) must all be in the log: a truncated, emptied or replaced
log is caught. A pinned key also means the log cannot be empty: every start records an event.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.audit import store
from gateway.audit.record import key_id_of
from gateway.audit.verify import Problem, VerifyResult
from gateway.errors import AuditError, ConfigError


def keys_in_logs(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys recorded in the logs' ``keys`` tables (candidates only, never trusted as such)."""
    out: dict[str, Ed25519PublicKey] = {}
    for p in paths:
        if not p.exists() or p.suffix == ".jsonl":
            continue
        try:
            conn = store.open_reader(p)
        except AuditError:  # an unreadable log is reported by its own verification
            continue
        try:
            for (pem,) in conn.execute("SELECT public_pem FROM keys"):
                key = load_pem_public_key(str(pem).encode("ascii"))
                if isinstance(key, Ed25519PublicKey):
                    out[key_id_of(key)] = key
        except (sqlite3.Error, ValueError):
            pass
        finally:
            conn.close()
    return out


def pinned_keys(
    pinned: Sequence[str], candidates: Mapping[str, Ed25519PublicKey]
) -> dict[str, Ed25519PublicKey]:
    """The candidates whose key id is pinned (the id is a hash of the key: it cannot be faked).

    Raises:
        ConfigError: no candidate matches any pinned id (pass the key with --public-key).
    """
    keys = {k: v for k, v in candidates.items() if k in pinned}
    if not keys:
        raise ConfigError(
            f"audit.pinned_keys: none of {', '.join(pinned)} is among the public keys found "
            f"({', '.join(sorted(candidates)) or 'none'}); pass the pinned key with --public-key PEM"
        )
    return keys


def read_anchor_files(paths: Iterable[Path], log_name: str | None) -> list[store.Anchor]:
    """Checkpoints kept elsewhere (export files or single checkpoint files) for one chain.

    Raises:
        ConfigError: a file is missing or malformed.
    """
    out: list[store.Anchor] = []
    for p in paths:
        try:
            out += store.read_exported(p, log_name)
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such checkpoint file") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{p}: not a checkpoint file: {e}") from None
    return out


def gone_chains(base: Path, present: Sequence[Path], files: Iterable[Path | None]) -> list[Path]:
    """Chains of ``base``'s data dir that checkpoint files kept elsewhere name but that are not
    there: a sibling chain (``audit-2.db``) removed whole is otherwise not verified at all.

    Raises:
        ConfigError: a checkpoint file cannot be read.
    """
    names: set[str] = set()
    for f in files:
        if f is not None and f.exists():
            try:
                names |= store.exported_log_names(f)
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{f}: not a checkpoint file: {e}") from None
    have = {p.name for p in present}
    gone = sorted((store.chain_number(base, n), n) for n in names - have if store.chain_number(base, n))
    return [base.with_name(n) for _, n in gone]


def require_events(res: VerifyResult, reason: str) -> VerifyResult:
    """An intact but empty log fails when something outside the data dir says it had events."""
    if res.ok and res.events == 0:
        res.ok = False
        res.problem = Problem(1, "truncated", f"the log is empty, but {reason}")
    return res


def verify_anchored(
    path: Path,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    pinned: Sequence[str] = (),
    export: Path | None = None,
    anchors: Sequence[store.Anchor] = (),
    all_signatures: bool = True,
    jobs: int | None = None,
) -> VerifyResult:
    """Verify one SQLite chain: ``keys`` filtered by ``pinned`` (the log's own ``keys`` table
    adds candidates), checked against ``anchors`` and the exported checkpoints in ``export``;
    with pins, an empty log fails. ``anchored`` says whether trust came from outside the data dir.
    ``jobs``: ``verify_log``'s processes.

    Raises:
        ConfigError: pins are set but no candidate key matches, or a checkpoint file is malformed.
    """
    from gateway.audit.verify import verify_log

    trusted = dict(keys)
    if pinned:
        trusted = pinned_keys(pinned, {**keys_in_logs([path]), **keys})
    extra = list(anchors)
    if export is not None and export.exists():
        extra += read_anchor_files([export], path.name)
    if extra and not path.exists():
        seq = max(a.seq for a in extra)
        return VerifyResult(
            ok=False,
            anchored=bool(pinned),
            problem=Problem(
                1, "truncated", f"the log is gone, but a checkpoint kept elsewhere records its seq {seq}"
            ),
        )
    res = verify_log(path, trusted, extra_anchors=extra, all_signatures=all_signatures, jobs=jobs)
    if pinned:
        res = require_events(res, "the signing key is pinned (every gateway start records an event)")
    res.anchored = bool(pinned)
    return res
