"""``symbi audit verify --shared``: every replica's audit chain as PostgreSQL holds it.

Each chain is verified on its own (``gateway.state.audit``) and reported on its own line;
the exit status is 1 if any chain fails. Trust is as for the local log: the pinned key ids of
``[audit] pinned_keys`` (or ``--public-key`` files) anchor it; otherwise the public keys the
replicas shipped are used, with a warning (whoever can write PostgreSQL can replace them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.terminal import printable
from gateway.errors import ConfigError

EXIT_OK, EXIT_FAIL = 0, 1


def verify_shared(args: argparse.Namespace, cfg: Any) -> int:
    from gateway.audit import load_public_keys
    from gateway.audit.trust import pinned_keys
    from gateway.cli.audit_verify_cmd import print_result
    from gateway.state import open_postgres
    from gateway.state.audit import shared_chains, shared_keys, verify_shared_chain

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
        if pinned:
            keys, anchored = pinned_keys(pinned, {**shipped, **own}), True
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
        chains = shared_chains(pg)
        failed = not chains  # nothing shipped: nothing was verified
        if not chains:
            print("symbi: no replica has shipped an audit chain to PostgreSQL yet", file=sys.stderr)
        for chain in chains:
            res = verify_shared_chain(pg, chain, keys, all_signatures=not args.fast)
            res.anchored = anchored
            failed = failed or not res.ok
            name = printable(f"postgres:{chain.chain[:16]} ({chain.replica})")  # names are PostgreSQL's
            print_result(name, res, as_json=args.json, chain=chain.chain, replica=chain.replica)
        if not args.json:
            bad = "FAILED" if failed else "intact"
            print(f"{len(chains)} replica chain(s) in PostgreSQL: {bad}")
    finally:
        pg.close()
    return EXIT_FAIL if failed else EXIT_OK
