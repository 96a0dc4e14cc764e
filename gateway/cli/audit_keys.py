"""Which audit log and which public keys a ``symbi audit`` command uses (``gateway.cli.audit_cmd``).

The log: ``--log PATH``, else the config's ``[audit] path``. The keys: with ``[audit]
pinned_keys``, only keys with those ids (from ``--public-key``, beside the signing key or in the
log); else ``--public-key PEM`` files (the admin's own copies: anchored); else the keys exported
beside the signing key (not anchored: whoever can write the data dir can replace them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

# the config models (~0.2 s of CPU) are imported as a command runs, not at `symbi audit`'s parse

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from gateway.audit import AuditLog
    from gateway.config.model import Config


def log_and_key(args: argparse.Namespace) -> tuple[Path, Path]:
    """(log path, signing key path) from --log / --key / --config / the environment."""
    from gateway.config import load_config
    from gateway.workerdirs import refuse_on_workers_dir

    cfg = None
    if args.config is not None or args.log is None:
        cfg = load_config(args.config, args.environ)
        if args.log is None and not getattr(args, "shared", False):
            refuse_on_workers_dir(
                cfg,
                f"symbi audit {args.audit_command}",
                "use --shared (every worker's chain in PostgreSQL) or one worker's with "
                "SYMBI_DATA_DIR=<data_dir>/worker-<i> (or --log)",
            )
    log = args.log if args.log is not None else cfg.audit_path  # type: ignore[union-attr]
    key = getattr(args, "key", None)
    if key is None:
        key = cfg.audit_key_path if cfg is not None else log.with_name("audit-key.pem")
    return Path(log), Path(key)


def open_log(args: argparse.Namespace, path: Path, key: Path) -> AuditLog:
    """The log to write (``rotate-key``), opened as the gateway opens it when there is a config
    (``AuditLog.from_config``: its checkpoint export, pins and archive are checked and kept);
    with only ``--log`` there is none to honour."""
    from gateway.audit import AuditLog  # imported when used: the CLI starts without the audit stack

    cfg = config_or_none(args)
    return AuditLog.from_config(cfg, path, key_path=key) if cfg is not None else AuditLog(path, key)


def public_keys(args: argparse.Namespace, key_path: Path) -> dict[str, Ed25519PublicKey]:
    """The --public-key files' keys, else those exported beside ``key_path``; none is an error."""
    from gateway.audit import exported_public_keys, load_public_keys

    keys: dict[str, Ed25519PublicKey] = {}
    for p in args.public_key:
        keys.update(load_public_keys(p))
    if not args.public_key:
        keys = exported_public_keys(key_path)
    if not keys:
        raise ConfigError(f"no audit public key found beside {key_path}; pass --public-key PEM")
    return keys


def config_or_none(args: argparse.Namespace) -> Config | None:
    """The config, unless only --log was given (and no $SYMBI_CONFIG_PATH): then none is read."""
    if args.config is None and args.log is not None and "SYMBI_CONFIG_PATH" not in args.environ:
        return None
    from gateway.config import load_config

    return load_config(args.config, args.environ)


def trusted_keys(
    args: argparse.Namespace, key: Path, cfg: Config | None, logs: list[Path]
) -> tuple[dict[str, Ed25519PublicKey], bool]:
    """(trusted keys, anchored): pinned ids from the config filter every candidate key;
    --public-key files are the admin's own copies (anchored too); else the keys beside the log."""
    from gateway.audit import exported_public_keys, load_public_keys
    from gateway.audit.trust import keys_in_logs, pinned_keys

    pinned = tuple(cfg.audit.pinned_keys) if cfg is not None else ()
    if pinned:
        candidates: dict[str, Ed25519PublicKey] = {}
        for p in args.public_key:
            candidates.update(load_public_keys(p))
        candidates.update(exported_public_keys(key))
        candidates.update(keys_in_logs(logs))
        return pinned_keys(pinned, candidates), True
    if args.public_key:
        return public_keys(args, key), True
    return public_keys(args, key), False
