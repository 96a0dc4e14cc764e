"""The admin API of a running gateway, as the CLI's commands reach it (``symbi agents``,
``symbi status``, ``symbi policy reload|status``): ``--url`` (default
``http://<http.host>:<http.port>``) and an admin API key from ``--api-key`` or
``$SYMBI_API_KEY`` (``symbi keys create --principal ops --roles admin``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.errors import AdminApiError, ConfigError

# longer than the gateway waits for an operator action's record to commit (30 s,
# ``gateway.server.oprecord.RECORD_WAIT_S``) plus a resume's Redis round trips at the default
# ``[state] timeout_s``: on a stalled disk the CLI reads the 503 saying the action was done,
# rather than "cannot reach the gateway" for an action carried out. Connecting is not waited
# for as long (a host that drops packets is said unreachable in 10 s).
TIMEOUT_S = 45.0
CONNECT_S = 10.0


def add_options(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    if config:
        p.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    p.add_argument("--url", default=None, help="the gateway's base URL (default from [http])")
    p.add_argument("--api-key", default=None, help="an admin API key (default $SYMBI_API_KEY)")
    p.add_argument("--json", action="store_true", help="print JSON")


def request(
    args: argparse.Namespace, method: str, path: str, body: Any = None, *, answers: tuple[int, ...] = ()
) -> Any:
    """The JSON answer of ``/api<path>``; an HTTP error is an ``AdminApiError`` with its reason,
    except the statuses in ``answers`` (an endpoint's documented refusal with a body)."""
    # here, not at the top: httpx and the config models were ~0.3 s of CPU in every admin
    # command's start, --help and parse errors included
    import httpx

    from gateway.config import load_config
    from gateway.config.load import admin_api_key_from_env

    cfg = load_config(args.config, args.environ)
    key = args.api_key or admin_api_key_from_env(args.environ)
    if not key:
        raise ConfigError("an admin API key is required: --api-key or $SYMBI_API_KEY")
    host = f"[{cfg.http.host}]" if ":" in cfg.http.host else cfg.http.host  # an IPv6 literal
    base = args.url or f"http://{host}:{cfg.http.port}"
    try:
        r = httpx.request(
            method,
            base.rstrip("/") + "/api" + path,
            json=body,
            timeout=httpx.Timeout(TIMEOUT_S, connect=CONNECT_S),
            headers={"Authorization": f"Bearer {key}"},
        )
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # InvalidURL: a --url that is none
        raise AdminApiError(f"cannot reach the gateway at {base}: {e}") from None
    try:
        doc = r.json()
    except ValueError:
        doc = {"error": "bad_response", "reason": r.text[:200]}
    if r.status_code >= 400 and r.status_code not in answers:
        raise AdminApiError(
            f"{method} {path}: HTTP {r.status_code} {doc.get('error')}",
            reasons=[str(doc.get("reason") or doc)],
        )
    return doc


def show(args: argparse.Namespace, doc: Any, text: str) -> int:
    print(json.dumps(doc, indent=2, default=str) if args.json else text)
    return 0
