"""The retention side of ``symbi audit``: ``archive``, ``verify --segment/--archives``, and the
archived records for ``query`` / ``export`` / ``report`` (``--archived``).

Kept apart from ``audit_cmd`` so the live-log commands stay readable; ``audit_cmd`` calls in.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.cli import EXIT_FAIL, EXIT_OK
from gateway.cli.terminal import printable
from gateway.errors import ConfigError


def add_archive_command(asub: Any, common: Any) -> None:
    a = asub.add_parser(
        "archive",
        help="apply [audit] retention now: old events to sealed segments (or deleted) "
        "behind a signed hand-off; the gateway must be stopped",
    )
    common(a)
    a.add_argument("--key", type=Path, default=None, help="signing key (default: [audit] key_path)")
    a.set_defaults(func=_archive)


def add_verify_options(v: argparse.ArgumentParser) -> None:
    v.add_argument(
        "--archives",
        action="store_true",
        help="also verify every archived segment and that they join up with the live chain's hand-off",
    )
    v.add_argument(
        "--segment",
        type=Path,
        action="append",
        default=[],
        help="verify one archived segment on its own (repeatable; the live log is not read)",
    )


def add_archived_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--archived", action="store_true", help="include events archived by retention (oldest first)"
    )


def archive_folder(args: argparse.Namespace, log: Path) -> Path:
    """``log``'s archive: the config's ``archive_dir`` whenever the command reads a config (the
    same one as for its keys and pins: ``config_or_none``), else beside the log."""
    from gateway.audit.retention import archive_dir_for
    from gateway.cli.audit_keys import config_or_none

    return archive_dir_for(log, config_or_none(args))


def archived_conn(args: argparse.Namespace, log: Path) -> sqlite3.Connection | None:
    """The archived records as a queryable database, when ``--archived`` was given."""
    if not getattr(args, "archived", False):
        return None
    from gateway.audit.archives import archived_connection

    return archived_connection(archive_folder(args, log), log.name)


def _archive(args: argparse.Namespace) -> int:
    from gateway.audit import AuditLog
    from gateway.audit.retention import RetentionPolicy, archive
    from gateway.config import load_config

    cfg = load_config(args.config, args.environ)
    policy = RetentionPolicy.from_config(cfg)
    if not policy.enabled:
        raise ConfigError("audit.retention_days / audit.max_bytes: neither is set, so nothing is ever due")
    log_path = args.log or cfg.audit_path
    # as the gateway opens it (checkpoint_export, pins...); refuses while a gateway holds it
    with AuditLog.from_config(cfg, log_path, key_path=args.key) as log:
        h = archive(log, policy)
    if h is None:
        print(f"{log_path}: nothing is due")
    else:
        where = f"segment {policy.archive_dir / h.segment}" if h.segment else "deleted"
        print(
            f"{log_path}: seq {h.from_seq}..{h.seq} ({h.count} events) out of the live log: {where}; "
            f"the live chain continues after seq {h.seq}"
        )
    return EXIT_OK


def verify_segments(args: argparse.Namespace, keys: Mapping[str, Any]) -> int:
    from gateway.audit.archives import verify_segment

    failed = False
    for path in args.segment:
        res = verify_segment(path, keys)
        failed = failed or not res.ok
        _print(args, path, res)
    return EXIT_FAIL if failed else EXIT_OK


def verify_archive_chain(args: argparse.Namespace, log: Path, keys: Mapping[str, Any]) -> bool:
    """``--archives``: every segment of ``log`` and their join with its hand-off; True when intact."""
    from gateway.audit import store
    from gateway.audit.archives import verify_archives
    from gateway.audit.retention import read_handoff

    conn = store.open_reader(log)
    try:
        handoff = read_handoff(conn)
    finally:
        conn.close()
    folder = archive_folder(args, log)
    res = verify_archives(folder, log.name, handoff, keys)
    _print(args, folder, res)
    return res.ok


def _print(args: argparse.Namespace, path: Path, res: Any) -> None:
    if args.json:
        print(json.dumps({"log": str(path), **res.as_dict()}))
    elif res.problem is None:
        print(
            f"{path}: intact: {res.events} events up to seq {res.last_seq}, {res.signatures_checked} signatures"
        )
    else:
        p = res.problem
        print(f"{path}: FAILED at seq {p.seq}: {p.kind}: {printable(p.message)}")
