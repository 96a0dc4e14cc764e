"""``symbi agents list|show|suspend|resume|terminate|run`` and ``symbi status``.

Agents live in a running gateway, so these talk to its admin API (``symbi serve``):
``--url`` (default ``http://<http.host>:<http.port>``) with an admin API key from
``--api-key`` or ``$SYMBI_API_KEY`` (``symbi keys create --principal ops --roles admin``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import httpx

from gateway.config import load_config
from gateway.config.load import admin_api_key_from_env
from gateway.errors import AdminApiError, ConfigError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    p.add_argument("--url", default=None, help="the gateway's base URL (default from [http])")
    p.add_argument("--api-key", default=None, help="an admin API key (default $SYMBI_API_KEY)")
    p.add_argument("--json", action="store_true", help="print JSON")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = sub.add_parser(
        "agents", help="agents of a running gateway (list, show, suspend, resume, terminate, run)"
    )
    acts = a.add_subparsers(dest="agents_command", metavar="ACTION")
    ls = acts.add_parser("list", help="every agent: id, principal, state, priority, in-flight, budgets")
    _common(ls)
    ls.set_defaults(func=_list)
    show = acts.add_parser("show", help="one agent (id, name or id prefix)")
    show.add_argument("agent")
    _common(show)
    show.set_defaults(func=_show)
    for action, text in (
        ("suspend", "suspend an agent"),
        ("resume", "resume a suspended agent"),
        ("terminate", "terminate an agent"),
    ):
        p = acts.add_parser(action, help=text)
        p.add_argument("agent")
        p.add_argument("--reason", default="", help="recorded in the audit log")
        _common(p)
        p.set_defaults(func=_action, action=action)
    run = acts.add_parser("run", help="start a hosted agent defined in [agents.NAME] now")
    run.add_argument("name")
    _common(run)
    run.set_defaults(func=_run)
    a.set_defaults(func=lambda args: (a.print_help(sys.stderr), 2)[1])

    st = sub.add_parser("status", help="the gateway's HealthStatus (overall, components, resources, errors)")
    _common(st)
    st.set_defaults(func=_status)


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    cfg = load_config(args.config, args.environ)
    key = args.api_key or admin_api_key_from_env(args.environ)
    if not key:
        raise ConfigError("an admin API key is required: --api-key or $SYMBI_API_KEY")
    base = args.url or f"http://{cfg.http.host}:{cfg.http.port}"
    try:
        r = httpx.request(
            method,
            base.rstrip("/") + "/api" + path,
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {key}"},
        )
    except httpx.HTTPError as e:
        raise AdminApiError(f"cannot reach the gateway at {base}: {e}") from None
    try:
        doc = r.json()
    except ValueError:
        doc = {"error": "bad_response", "reason": r.text[:200]}
    if r.status_code >= 400:
        raise AdminApiError(
            f"{method} {path}: HTTP {r.status_code} {doc.get('error')}",
            reasons=[str(doc.get("reason") or doc)],
        )
    return doc


def _print(args: argparse.Namespace, doc: Any, text: str) -> int:
    print(json.dumps(doc, indent=2, default=str) if args.json else text)
    return 0


def _list(args: argparse.Namespace) -> int:
    agents = _request(args, "GET", "/agents")["agents"]
    lines = [f"{'ID':26} {'NAME':32} {'STATE':11} {'PRI':>3} {'IN-FLIGHT':>9} {'CALLS':>6}  PRINCIPAL"]
    for a in agents:
        lines.append(
            f"{a['id']:26} {a['name'][:32]:32} {a['state']:11} {a['priority']:>3} "
            f"{a['in_flight']:>9} {a['calls']:>6}  {a['principal']}"
        )
    return _print(args, agents, "\n".join(lines))


def _show(args: argparse.Namespace) -> int:
    doc = _request(args, "GET", f"/agents/{args.agent}")
    return _print(args, doc, json.dumps(doc, indent=2, default=str))


def _action(args: argparse.Namespace) -> int:
    doc = _request(args, "POST", f"/agents/{args.agent}/{args.action}", {"reason": args.reason})
    return _print(args, doc, f"{doc['agent']}: {doc['result']} (state {doc['state']})")


def _run(args: argparse.Namespace) -> int:
    doc = _request(args, "POST", f"/agents/{args.name}/run")
    return _print(args, doc, f"{doc['agent']}: {doc['result']} (state {doc['state']})")


def _status(args: argparse.Namespace) -> int:
    doc = _request(args, "GET", "/status")
    util = doc["resource_utilization"]
    lines = [f"overall: {doc['overall_status']}"]
    lines += [f"  {name:32} {c['status']}" for name, c in sorted(doc["component_health"].items())]
    ag, sc = util["agents"], util["scheduler"]
    lines.append(
        f"agents: {ag['live']} live of {ag['max']}  "
        + " ".join(f"{k}={v}" for k, v in ag["by_state"].items() if v)
    )
    lines.append(f"scheduler: {sc['in_flight']}/{sc['max_in_flight']} in flight, {sc['queued']} queued")
    lines += [f"error: {e['code']} {e['target']} ({e['agent']})" for e in doc["recent_errors"][-5:]]
    code = 0 if doc["overall_status"] != "unhealthy" else 1
    _print(args, doc, "\n".join(lines))
    return code
