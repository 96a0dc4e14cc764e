"""``symbi agents list|show|suspend|resume|terminate|suspended|status|run`` and ``symbi status``.

Agents live in a running gateway, so these talk to its admin API (``symbi serve``) through
``gateway.cli.admin_client``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.cli import HELP, admin_client
from gateway.principals import principal_malformed  # (standard library only: no gateway.runtime)


def _common(p: argparse.ArgumentParser) -> None:
    admin_client.add_options(p)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = sub.add_parser("agents", help=HELP["agents"])
    acts = a.add_subparsers(dest="agents_command", metavar="ACTION")
    ls = acts.add_parser("list", help="every agent: id, principal, state, priority, in-flight, budgets")
    _common(ls)
    ls.set_defaults(func=_list)
    show = acts.add_parser("show", help="one agent (id, name or id prefix)")
    show.add_argument("agent")
    _common(show)
    show.set_defaults(func=_show)
    for action, text in (
        ("suspend", "suspend an agent (a session agent's suspension is its principal's), or --principal P"),
        ("resume", "resume a suspended agent (and its principal), or clear --principal P"),
        ("terminate", "terminate an agent"),
    ):
        p = acts.add_parser(action, help=text)
        p.add_argument("agent", nargs="?")
        if action != "terminate":
            p.add_argument(
                "--principal",
                # resume takes any: a hold made before kinds were checked is cleared by its name
                type=_principal if action == "suspend" else str,
                help="a principal (qualified, as the refusals and `symbi agents suspended` name it: key:ID)",
            )
        p.add_argument("--reason", default="", help="recorded in the audit log")
        _common(p)
        p.set_defaults(func=_action, action=action)
    held = acts.add_parser("suspended", help="the suspended principals (every session of each is refused)")
    _common(held)
    held.set_defaults(func=_suspended)
    hs = acts.add_parser(
        "status",
        help="every hosted agent ([agents.NAME]) and the gateway process (replica, worker) running it",
    )
    _common(hs)
    hs.set_defaults(func=_hosted)
    run = acts.add_parser("run", help="start a hosted agent defined in [agents.NAME] now")
    run.add_argument("name")
    _common(run)
    run.set_defaults(func=_run)
    a.set_defaults(func=lambda args: (a.print_help(sys.stderr), 2)[1])

    st = sub.add_parser("status", help=HELP["status"])
    _common(st)
    st.set_defaults(func=_status)


def _principal(text: str) -> str:
    """``--principal``: of a kind the gateway makes (the server checks the rest against its config)."""
    malformed = principal_malformed(text)
    if malformed is not None:
        raise argparse.ArgumentTypeError(malformed)
    return text


def _list(args: argparse.Namespace) -> int:
    agents = admin_client.request(args, "GET", "/agents")["agents"]
    lines = [f"{'ID':26} {'NAME':32} {'STATE':11} {'PRI':>3} {'IN-FLIGHT':>9} {'CALLS':>6}  PRINCIPAL"]
    for a in agents:
        lines.append(
            f"{a['id']:26} {a['name'][:32]:32} {a['state']:11} {a['priority']:>3} "
            f"{a['in_flight']:>9} {a['calls']:>6}  {a['principal']}"
        )
    return admin_client.show(args, agents, "\n".join(lines))


def _show(args: argparse.Namespace) -> int:
    doc = admin_client.request(args, "GET", f"/agents/{args.agent}")
    return admin_client.show(args, doc, json.dumps(doc, indent=2, default=str))


def _suspended(args: argparse.Namespace) -> int:
    held = admin_client.request(args, "GET", "/principals")["suspended"]
    lines = [f"{h['principal']}: {h['reason']} ({h['agent'] or 'operator ' + h['by']})" for h in held]
    return admin_client.show(args, held, "\n".join(lines) or "no suspended principal")


def _action(args: argparse.Namespace) -> int:
    principal = getattr(args, "principal", None)
    if (principal is None) == (args.agent is None):
        print(f"symbi agents {args.action}: name an agent or --principal (one of them)", file=sys.stderr)
        return 2
    if principal is not None:
        body = {"principal": principal, "reason": args.reason}
        doc = admin_client.request(args, "POST", f"/principals/{args.action}", body)
        text = f"{doc['principal']}: {doc['result']}" + (f" ({doc['shared']})" if "shared" in doc else "")
        return admin_client.show(args, doc, text)
    doc = admin_client.request(args, "POST", f"/agents/{args.agent}/{args.action}", {"reason": args.reason})
    if "holder" in doc:  # 202: another process holds it (lease or session); it acts within 3 s
        text = f"{doc['agent']}: {doc['result']}; it was {doc['state']} there"
        return admin_client.show(args, doc, text)
    return admin_client.show(args, doc, f"{doc['agent']}: {doc['result']} (state {doc['state']})")


def _run(args: argparse.Namespace) -> int:
    doc = admin_client.request(args, "POST", f"/agents/{args.name}/run")
    return admin_client.show(args, doc, f"{doc['agent']}: {doc['result']} (state {doc['state']})")


def _hosted_lines(view: dict[str, Any]) -> list[str]:
    lines = []
    for name, doc in sorted(view["agents"].items()):
        where = (
            f"{doc['state']} in {doc['holder']} (run {doc['run']})"
            if doc
            else "not running (no lease holder)"
        )
        lines.append(f"hosted agent {name}: {where}")
    return lines


def _hosted(args: argparse.Namespace) -> int:
    view = admin_client.request(args, "GET", "/status")["hosted_agents"]
    return admin_client.show(args, view, "\n".join(_hosted_lines(view)) or "no hosted agents")


def _status(args: argparse.Namespace) -> int:
    doc = admin_client.request(args, "GET", "/status")
    util = doc["resource_utilization"]
    lines = [f"overall: {doc['overall_status']}"]
    lines += [f"  {name:32} {c['status']}" for name, c in sorted(doc["component_health"].items())]
    ag, sc = util["agents"], util["scheduler"]
    lines.append(
        f"agents: {ag['live']} live of {ag['max']}  "
        + " ".join(f"{k}={v}" for k, v in ag["by_state"].items() if v)
    )
    lines.append(
        f"scheduler: {sc['in_flight']}/{sc['max_in_flight']} in flight, {sc['queued']} queued; "
        f"per principal {sc['max_in_flight_per_principal']} in flight, "
        f"{sc['queue_limit_per_principal']} queued ({sc['refused_per_principal']} refused)"
    )
    lines += _hosted_lines(doc["hosted_agents"])
    held = doc["component_health"].get("principal_holds") or {}
    lines += [
        f"principal {p}: an agent of it suspended, the principal held nowhere"
        for p in held.get("not_held", [])
    ]
    lines += [
        f"principal {p}: held in this process only (Redis refused it; the other replicas let it in)"
        for p in held.get("held_in_this_process_only", [])
    ]
    lines += [f"error: {e['code']} {e['target']} ({e['agent']})" for e in doc["recent_errors"][-5:]]
    code = 0 if doc["overall_status"] != "unhealthy" else 1
    admin_client.show(args, doc, "\n".join(lines))
    return code
