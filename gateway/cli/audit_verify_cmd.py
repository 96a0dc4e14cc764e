"""``symbi audit verify`` and ``symbi audit checkpoint``: is the log intact, and its signed head
for a copy kept elsewhere (``gateway.cli.audit_cmd`` registers them; see its docstring for which
log and which keys).

Exit codes: 0 intact; 1 verification failed (the first bad seq is named) or no signed head yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli import EXIT_FAIL, EXIT_OK, whole_number
from gateway.cli import audit_retention_cmd as retention_cmd
from gateway.cli.audit_keys import config_or_none, log_and_key, trusted_keys
from gateway.cli.terminal import printable
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.audit.verify import VerifyResult
    from gateway.config.model import Config

Common = Callable[..., None]  # audit_cmd's --config/--log(/--public-key) options
Keys = Mapping[str, Any]


def add_verify(asub: argparse._SubParsersAction, common: Common) -> None:  # type: ignore[type-arg]
    v = asub.add_parser(
        "verify",
        help="check every signature, link and anchor (0 intact, 1 names the first bad seq); "
        "without --log, every chain of the data dir (audit.db, audit-2.db, ...)",
    )
    common(v, keys=True)
    v.add_argument(
        "--anchor",
        type=Path,
        action="append",
        default=[],
        help="checkpoints kept elsewhere: a checkpoint file or an [audit] checkpoint_export copy "
        "(repeatable; the configured checkpoint_export is always read); with --shared, the last "
        "checkpoint of each log in each file must be a record of a chain PostgreSQL holds",
    )
    v.add_argument(
        "--fast",
        action="store_true",
        help="verify signatures only at anchors, key changes and the head (all hashes and links still)",
    )
    v.add_argument(
        "--jobs",
        type=jobs,
        default=None,
        metavar="N",
        help="processes to verify a SQLite log in (1: one process; default: this machine's cores "
        "once a log is large enough to gain from them); exports and --shared/--segment use one",
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.add_argument(
        "--shared",
        action="store_true",
        help="verify every replica's chain as PostgreSQL holds it ([state] postgres_url), each on its own",
    )
    retention_cmd.add_verify_options(v)
    v.set_defaults(func=_verify)


jobs = whole_number(1)  # ``--jobs N`` / ``--workers N``


def add_checkpoint(asub: argparse._SubParsersAction, common: Common) -> None:  # type: ignore[type-arg]
    c = asub.add_parser(
        "checkpoint",
        help="print (or append to --out) the log's current signed head, for a copy "
        "kept outside the data dir (verify it with --anchor FILE)",
    )
    common(c)
    c.add_argument("--out", type=Path, default=None, help="append to this file (JSON lines, mode 0600)")
    c.set_defaults(func=_checkpoint)


def _verify(args: argparse.Namespace) -> int:
    """Every chain of the data dir (or ``--log``), ``--shared``'s in PostgreSQL, or ``--segment``s."""
    from gateway.audit import store
    from gateway.audit.trust import gone_chains

    log, key = log_and_key(args)
    cfg = config_or_none(args)
    if args.jobs not in (None, 1) and (args.shared or args.segment):
        raise ConfigError("audit verify --jobs: --shared and --segment are verified in one process")
    if args.shared:
        from gateway.cli.audit_shared_cmd import verify_shared

        return verify_shared(args, cfg)
    logs = [log] if args.log is not None else [p for p in store.chain_paths(log) if p.exists()] or [log]
    if args.jobs not in (None, 1) and any(p.suffix == ".jsonl" for p in logs):
        raise ConfigError("audit verify --jobs: a JSONL export is verified in one process")
    keys, anchored = trusted_keys(args, key, cfg, [] if args.segment else logs)  # pins filter segments' too
    export = cfg.audit.checkpoint_export if cfg is not None else None
    if not anchored:
        print(
            "symbi: WARNING: verification is NOT ANCHORED: it trusts the public keys found beside the log, "
            "which anyone who can write the data dir can replace; pin the key ([audit] pinned_keys, see "
            "`symbi audit init`) or pass --public-key",
            file=sys.stderr,
        )
    if args.segment:
        return retention_cmd.verify_segments(args, keys)
    if args.log is None:  # a chain removed whole, whose checkpoints were kept elsewhere
        logs += gone_chains(log, logs, [export, *args.anchor])
    return _verify_logs(args, logs, keys, anchored, cfg)


def _verify_logs(
    args: argparse.Namespace, logs: list[Path], keys: Keys, anchored: bool, cfg: Config | None
) -> int:
    """Verify each log (a SQLite chain or a JSONL export) on its own; 1 when any one fails."""
    from gateway.audit import verify_jsonl
    from gateway.audit.trust import read_anchor_files, verify_anchored

    export = cfg.audit.checkpoint_export if cfg is not None else None
    pinned = tuple(cfg.audit.pinned_keys) if cfg is not None else ()
    failed = False
    for path in logs:
        if path.suffix == ".jsonl":
            res = verify_jsonl(
                path, keys, anchors=read_anchor_files(args.anchor, None), all_signatures=not args.fast
            )
        else:  # keys are already filtered by the pins; the pins also mean "not empty"
            res = verify_anchored(
                path,
                keys,
                pinned=pinned,
                export=export,
                anchors=read_anchor_files(args.anchor, path.name),
                all_signatures=not args.fast,
                jobs=args.jobs,
            )
        res.anchored = anchored
        failed = failed or not res.ok
        print_result(str(path), res, as_json=args.json)
        if args.archives and path.suffix != ".jsonl":
            failed = not retention_cmd.verify_archive_chain(args, path, keys) or failed
    return EXIT_FAIL if failed else EXIT_OK


def _checkpoint(args: argparse.Namespace) -> int:
    from gateway.audit import store

    log, _ = log_and_key(args)
    conn = store.open_reader(log)
    try:
        anchor = store.read_anchor(conn)
    finally:
        conn.close()
    if anchor is None:
        print(f"symbi: {log} has no signed head yet", file=sys.stderr)
        return EXIT_FAIL
    if args.out is not None:
        store.export_checkpoint(args.out, log, anchor)
        print(f"checkpoint seq {anchor.seq} of {log.name} appended to {args.out}", file=sys.stderr)
    else:
        print(json.dumps({"log": log.name, **anchor.as_dict()}, sort_keys=True))
    return EXIT_OK


def print_result(name: str, res: VerifyResult, *, as_json: bool, **labels: str) -> None:
    """One chain's verdict: a JSON line (``log`` and ``labels`` with the result), or a line for
    a person naming the first bad seq."""
    if as_json:
        print(json.dumps({"log": name, **labels, **res.as_dict()}))
    elif res.problem is None:
        print(
            f"{name}: intact: {res.events} events, head seq {res.last_seq} ({res.head_hash[:16]}...), "
            f"{res.signatures_checked} signatures and {res.anchors_checked} anchors checked"
            + ("" if res.anchored else " (NOT ANCHORED)")
        )
    else:
        p = res.problem
        print(f"{name}: FAILED at seq {p.seq}: {p.kind}: {printable(p.message)}")
