"""``symbi config check``: validate a config file without starting anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli import HELP

# the config models and pydantic are imported as `check` runs, not at `symbi config`'s parse
if TYPE_CHECKING:
    from pydantic import BaseModel

HIDDEN = "<hidden>"
# maps whose values come from gateway.env_file or the environment (tokens, passwords)
_SECRET_MAPS = frozenset({"env", "headers", "otlp_headers"})
# a URL that may carry a password, beside the keys the model keeps out of its repr
_SECRET_KEYS = frozenset({"bus.url"})


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help=HELP["config"])
    csub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = csub.add_parser("check", help="validate a config file and exit (0 valid, 2 invalid)")
    check.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    check.add_argument("--print", action="store_true", help="print the effective config as JSON")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.config.notices import notices
    from gateway.custody import check_trusted_files, readable_config
    from gateway.server.auth import load_jwks_file

    cfg = load_config(args.config, args.environ)
    check_trusted_files(cfg)  # what `serve` / `mcp` would refuse at start
    if cfg.http.jwt is not None and cfg.http.jwt.jwks_file is not None:
        load_jwks_file(cfg.http.jwt.jwks_file)
    if args.print:
        print(json.dumps(shown(cfg), indent=2))
    else:
        where = cfg.source or "<defaults>"
        print(f"{where}: OK ({len(cfg.servers)} server(s): {', '.join(cfg.servers) or 'none'})")
        for n in notices(cfg):
            print(f"  note: {n.text}")
        if (readable := readable_config(cfg)) is not None:
            print(f"  note: {readable} is readable by other users: serve and mcp make it o-rwx at start")
    return 0


def shown(model: BaseModel, where: str = "") -> dict[str, Any]:
    """``model`` as JSON with its secrets (``repr=False`` keys, ``bus.url``, env and header
    values) replaced by ``<hidden>``: set or not is shown, never the value."""
    from pydantic import BaseModel

    dumped = model.model_dump(mode="json")
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value, key = getattr(model, name), f"{where}{name}"
        if value is None:
            out[name] = None
        elif field.repr is False or key in _SECRET_KEYS:
            out[name] = HIDDEN
        elif isinstance(value, BaseModel):
            out[name] = shown(value, key + ".")
        elif isinstance(value, dict) and name in _SECRET_MAPS:
            out[name] = dict.fromkeys(value, HIDDEN)
        elif isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
            out[name] = {k: shown(v, f"{key}.{k}.") for k, v in value.items()}  # servers, agents
        else:
            out[name] = dumped[name]
    return out
