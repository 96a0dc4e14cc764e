"""``symbi audit verify --shared``: every replica's audit chain as PostgreSQL holds it; and
``symbi audit register-shared``: a replica signs the registration of its chains shipped before
migration 9 (``gateway.state.audit_upgrade``).

Each chain is verified on its own (``gateway.state.audit``) and reported on its own line, then
the roster (``gateway.state.audit_roster``): a chain a verified registration names, or a pinned
key with no chain, that PostgreSQL no longer holds is a line of its own. The exit status is 1
if anything fails. Trust is as for the local log: the pinned key ids of ``[audit] pinned_keys``
(or ``--public-key`` files) anchor it; otherwise the public keys the replicas shipped are
used, with a warning (whoever can write PostgreSQL can replace them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.cli import EXIT_FAIL, EXIT_OK
from gateway.cli.terminal import printable
from gateway.errors import ConfigError


def verify_shared(args: argparse.Namespace, cfg: Any) -> int:
    from gateway.audit import load_public_keys
    from gateway.audit.trust import pinned_keys
    from gateway.cli.audit_verify_cmd import print_result
    from gateway.state import open_postgres
    from gateway.state.audit import shared_chains, shared_keys, verify_every_chain

    if cfg is None or cfg.state.postgres_url is None:
        raise ConfigError("audit verify --shared: the config has no [state] postgres_url")
    own: dict[str, Any] = {}
    for p in args.public_key:
        own.update(load_public_keys(p))
    pg = open_postgres(cfg)
    assert pg is not None  # postgres_url is set
    try:
        shipped = shared_keys(pg)
        pinned = tuple(cfg.audit.pinned_keys)
        roots: tuple[str, ...] = pinned or tuple(own)  # the keys the operator named: each has a chain
        if pinned:
            keys, anchored = {k: v for k, v in {**shipped, **own}.items() if k in pinned}, True
            if not keys and shared_chains(pg):  # chains to verify and no pinned key: say which to pass
                keys = pinned_keys(pinned, {**shipped, **own})
            # no chain and no pinned key shipped: every pin is reported missing below
        elif own:
            keys, anchored = own, True
        else:
            keys, anchored = shipped, False
            print(
                "symbi: WARNING: verification is NOT ANCHORED: it trusts the public keys the replicas "
                "shipped to PostgreSQL, which anyone who can write it can replace; pin the keys "
                "([audit] pinned_keys) or pass --public-key",
                file=sys.stderr,
            )
        checkpoints = _exported(cfg.audit.checkpoint_export, args.anchor)
        verdict = verify_every_chain(pg, keys, roots, all_signatures=not args.fast, checkpoints=checkpoints)
        if not verdict.chains:
            print("symbi: no replica has shipped an audit chain to PostgreSQL yet", file=sys.stderr)
        for chain, res in verdict.chains:
            res.anchored = anchored
            name = printable(f"postgres:{chain.chain[:16]} ({chain.replica})")  # names are PostgreSQL's
            print_result(name, res, as_json=args.json, chain=chain.chain, replica=chain.replica)
        for gone in verdict.missing:
            if args.json:
                doc = {"ok": False, "chain": gone.chain, "key_id": gone.key_id}
                print(json.dumps(doc | {"problem": {"seq": 0, "kind": "missing", "message": gone.message}}))
            else:
                print(f"postgres: FAILED: missing: {printable(gone.message)}")
        if not args.json:
            bad = "intact" if verdict.ok else "FAILED"
            print(f"{len(verdict.chains)} replica chain(s) in PostgreSQL: {bad}")
    finally:
        pg.close()
    return EXIT_OK if verdict.ok else EXIT_FAIL


def _exported(configured: Path | None, given: list[Path]) -> dict[str, Any]:
    """The last checkpoint of each log in each export file (``--anchor``, the configured
    ``checkpoint_export`` when it exists): each must be held by a chain that verifies."""
    from gateway.audit.store import last_exported

    out: dict[str, Any] = {}
    for f in [*([configured] if configured is not None and configured.exists() else []), *given]:
        try:
            out |= {f"{f}:{log or '?'}": a for log, a in last_exported(f).items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{f}: not a checkpoint file: {e}") from None
    return out


def add_register(asub: argparse._SubParsersAction, common: Any) -> None:  # type: ignore[type-arg]
    r = asub.add_parser(
        "register-shared",
        help="sign the registration of this replica's chains shipped to PostgreSQL before migration 9",
    )
    common(r)
    r.add_argument("--key", type=Path, default=None, help="signing key (default: [audit] key_path)")
    r.set_defaults(func=_register_shared)


def _register_shared(args: argparse.Namespace) -> int:
    from gateway.audit.keys import exported_public_keys, load_private_key
    from gateway.audit.trust import keys_in_logs
    from gateway.cli.audit_keys import config_or_none, log_and_key
    from gateway.state import open_postgres
    from gateway.state.audit import replica_label
    from gateway.state.audit_upgrade import register_old_chains

    log, key_path = log_and_key(args)
    cfg = config_or_none(args)
    if cfg is None or cfg.state.postgres_url is None:
        raise ConfigError("audit register-shared: the config has no [state] postgres_url")
    own = {**exported_public_keys(key_path), **keys_in_logs([log])}  # this replica's own keys
    pg = open_postgres(cfg)
    assert pg is not None
    try:
        outcomes = register_old_chains(pg, load_private_key(key_path), own, replica_label(log))
    finally:
        pg.close()
    for o in outcomes:
        print(printable(f"postgres:{o.chain[:16]}: {o.message}"))
    if not outcomes:
        print("no unregistered chain of this replica in PostgreSQL")
    return EXIT_OK if all(o.registered for o in outcomes) else EXIT_FAIL
