"""``symbi keys create|list|revoke``: API keys for ``symbi serve``.

The key is printed once, on stdout, and only its SHA-256 is stored (``http.api_keys_path``,
default ``<data_dir>/api-keys.json``, mode 0600). See ``gateway.server.auth`` for why a
plain SHA-256 is the right hash for 256-bit random keys.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import HELP

# the config models and the key store (~0.35 s of CPU) are imported as a command runs
if TYPE_CHECKING:
    from gateway.server.auth import ApiKeys

_ROLE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("keys", help=HELP["keys"])
    ks = k.add_subparsers(dest="keys_command", metavar="ACTION")

    c = ks.add_parser("create", help="make a key (printed once)")
    c.add_argument("--principal", required=True, help="who the key authenticates as")
    c.add_argument("--roles", default="", help="comma-separated roles, e.g. admin,developer")
    c.add_argument("--kind", default="user", choices=["user", "agent", "service", "admin"])
    c.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    c.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    c.set_defaults(func=_create)

    ls = ks.add_parser("list", help="list keys (never the keys themselves)")
    ls.add_argument("--config", type=Path, default=None)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    r = ks.add_parser("revoke", help="revoke a key by id (a running server stops accepting it)")
    r.add_argument("id", help="the key id (from `symbi keys list`)")
    r.add_argument("--config", type=Path, default=None)
    r.set_defaults(func=_revoke)

    k.set_defaults(func=lambda args: (k.print_help(sys.stderr), 2)[1])


def _store(args: argparse.Namespace) -> ApiKeys:
    from gateway.config import load_config
    from gateway.server.auth import open_api_keys

    cfg = load_config(args.config, args.environ)
    return open_api_keys(cfg)  # the data dir's file, or PostgreSQL shared by replicas ([state])


def _create(args: argparse.Namespace) -> int:
    roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
    bad = [r for r in roles if not _ROLE_RE.match(r)]
    if bad or not args.principal.strip():
        print(f"symbi: invalid role or principal: {', '.join(bad) or repr(args.principal)}", file=sys.stderr)
        return 2
    key, rec = _store(args).create(args.principal.strip(), roles, kind=args.kind)
    if args.json:
        print(json.dumps({"key": key, "id": rec.id, "principal": rec.principal, "roles": list(rec.roles)}))
    else:
        print(key)
        print(f"id {rec.id}  principal {rec.principal}  roles {','.join(rec.roles) or '-'}", file=sys.stderr)
        print("Store this key now: it is not shown again.", file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    recs = _store(args).records()
    if args.json:
        print(json.dumps([{k: v for k, v in r.as_json().items() if k != "sha256"} for r in recs]))
        return 0
    for r in recs:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created))
        status = "revoked" if r.revoked is not None else "active"
        print(
            f"{r.id}  {status:7}  {r.principal}  roles={','.join(r.roles) or '-'}  kind={r.kind}  created={created}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if not _store(args).revoke(args.id):
        print(f"symbi: no active key with id {args.id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.id}", file=sys.stderr)
    return 0
