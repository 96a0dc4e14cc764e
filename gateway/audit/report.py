"""Compliance reports (HIPAA, GDPR, SOX) built from the audit log.

A report maps the log's evidence onto each framework's audit requirements. The evidence is
the same four sections for every framework:

* ``access``:    who accessed what (``tool.call`` / ``resource.read`` / ``prompt.get``), per
                 principal and target, with allowed / denied / error counts;
* ``denied``:    every refused attempt (policy, verification, rate limit...), with reasons;
                 refusals a flood had counted instead (``audit.refusals_summarized``) are
                 in the access counts and the summary's ``denied_counted``;
* ``changes``:   changes to tools and policy (pin approvals and revocations, drift, policy
                 reloads, config loads, audit key rotations);
* ``integrity``: the result of verifying the whole log (signatures, links, anchors).

Event types count as changes when they start with one of ``CHANGE_PREFIXES`` (``tool.call``
is access, not change); ``gateway.*`` / ``upstream.*`` / ``sandbox.*`` are operations.
A requirement is ``met`` when its evidence exists and the log verifies, ``attention`` with
the reason otherwise. The report states evidence; it is not a legal opinion.
"""

from __future__ import annotations

import html
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.audit.record import AuditRecord
from gateway.audit.verify import VerifyResult

Framework = Literal["hipaa", "gdpr", "sox"]
ACCESS_TYPES = ("tool.call", "resource.read", "prompt.get")
SUMMARIZED = "audit.refusals_summarized"  # refused calls counted, not recorded one by one
CHANGE_PREFIXES = (
    "policy.",
    "pin.",
    "pins.",
    "tool.",
    "tools.",
    "verify.",
    "verification.",
    "config.",
    "catalog.",
    "audit.key_rotated",
    "keys.",
)
OPERATION_PREFIXES = ("gateway.", "upstream.", "sandbox.")


@dataclass(frozen=True)
class Requirement:
    ref: str
    title: str
    evidence: tuple[str, ...]  # which sections answer it


FRAMEWORKS: dict[str, tuple[str, tuple[Requirement, ...]]] = {
    "hipaa": (
        "HIPAA Security Rule (45 CFR 164)",
        (
            Requirement(
                "164.312(b)",
                "Audit controls: record and examine activity in systems holding ePHI",
                ("access", "integrity"),
            ),
            Requirement("164.308(a)(1)(ii)(D)", "Information system activity review", ("access", "denied")),
            Requirement("164.308(a)(5)(ii)(C)", "Log-in monitoring: attempts that were refused", ("denied",)),
            Requirement(
                "164.312(c)(1)",
                "Integrity: ePHI / records not improperly altered or destroyed",
                ("integrity",),
            ),
            Requirement(
                "164.312(d)", "Person or entity authentication: every access attributed", ("access",)
            ),
            Requirement(
                "164.308(a)(8)", "Evaluation: changes to tools and policy are recorded", ("changes",)
            ),
        ),
    ),
    "gdpr": (
        "GDPR (Regulation (EU) 2016/679)",
        (
            Requirement("Art. 30", "Records of processing activities: who processed what, when", ("access",)),
            Requirement(
                "Art. 5(2)", "Accountability: attributable, tamper-evident records", ("access", "integrity")
            ),
            Requirement("Art. 25", "Data protection by design: arguments stored redacted", ("access",)),
            Requirement(
                "Art. 32(1)(b)", "Integrity and confidentiality of processing", ("integrity", "denied")
            ),
            Requirement("Art. 33(5)", "Documenting incidents: refused and failed attempts", ("denied",)),
        ),
    ),
    "sox": (
        "Sarbanes-Oxley (SOX) IT general controls",
        (
            Requirement(
                "404 ITGC access", "Access to programs and data: who accessed what", ("access", "denied")
            ),
            Requirement(
                "404 ITGC change", "Program change management: tool and policy changes", ("changes",)
            ),
            Requirement(
                "404 ITGC operations",
                "Computer operations: service start, stop and failures",
                ("operations",),
            ),
            Requirement("802", "Record retention and integrity of the audit trail", ("integrity",)),
        ),
    ),
}


def _is_change(t: str) -> bool:
    return t not in ACCESS_TYPES and t.startswith(CHANGE_PREFIXES)


def _iso(ts_ns: int | None) -> str | None:
    if ts_ns is None:
        return None
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_ns / 1e9)) + f".{(ts_ns // 1_000_000) % 1000:03d}Z"
    )


def _is_denied(d: dict[str, Any]) -> bool:
    dec = d.get("decision")
    return d.get("outcome") == "denied" or (isinstance(dec, dict) and dec.get("allow") is False)


@dataclass
class _Tally:
    """What the period's records say, section by section (one pass over the records)."""

    access: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    denied: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    operations: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    principals: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    unattributed: int = 0
    redacted: int = 0
    denied_counted: int = 0  # refusals in summaries (gateway.audit.refusals), not in ``denied``
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    first_ts: int | None = None
    last_ts: int | None = None

    def add(self, r: AuditRecord) -> None:
        self.events += 1
        self.first_seq = r.seq if self.first_seq is None else self.first_seq
        self.first_ts = r.ts_ns if self.first_ts is None else self.first_ts
        self.last_seq, self.last_ts = r.seq, r.ts_ns
        self.types[r.type] += 1
        if r.type in ACCESS_TYPES:
            self._access(r)
        elif r.type == SUMMARIZED:
            self._counted(r)
        elif _is_change(r.type):
            self.changes.append(
                {
                    "seq": r.seq,
                    "time": _iso(r.ts_ns),
                    "type": r.type,
                    "principal": r.principal,
                    "details": r.details,
                }
            )
        elif r.type.startswith(OPERATION_PREFIXES):
            self.operations[r.type] += 1

    def _access(self, r: AuditRecord) -> None:
        d = r.details
        who = r.principal or "(none)"
        self.unattributed += r.principal is None
        self.redacted += d.get("arguments_redacted") in ("policy", "secrets", "all")
        row = self._row(who, str(d.get("tool") or d.get("target")), r.type, r.ts_ns)
        row["calls"] += 1
        if _is_denied(d):
            row["denied"] += 1
            raw_dec = d.get("decision")
            dec: dict[str, Any] = raw_dec if isinstance(raw_dec, dict) else {}
            self.denied.append(
                {
                    "seq": r.seq,
                    "time": _iso(r.ts_ns),
                    "principal": who,
                    "agent": r.agent,
                    "target": row["target"],
                    "error_code": d.get("error_code"),
                    "reasons": list(dec.get("reasons") or d.get("error_reasons") or []),
                }
            )
        elif d.get("outcome") == "error":
            row["errors"] += 1
        else:
            row["allowed"] += 1

    def _counted(self, r: AuditRecord) -> None:
        """Each count of a refusal summary: that many denied calls of the principal."""
        who = r.principal or "(none)"
        for c in r.details.get("counts") or ():
            # refused requests (request.denied...) are not calls: not in the access table
            if not isinstance(c, dict) or str(c.get("event_type") or "tool.call") not in ACCESS_TYPES:
                continue
            n = int(c.get("count") or 0)
            target = "(other)" if c.get("other") else str(c.get("target"))
            row = self._row(who, target, str(c.get("event_type") or "tool.call"), r.ts_ns)
            row["calls"] += n
            row["denied"] += n
            self.denied_counted += n

    def _row(self, who: str, target: str, kind: str, ts_ns: int) -> dict[str, Any]:
        """The access table's row of (principal, target), its last time moved to ``ts_ns``."""
        self.principals[who].add(target)
        row = self.access.setdefault(
            (who, target),
            {
                "principal": who,
                "target": target,
                "kind": kind,
                "calls": 0,
                "allowed": 0,
                "denied": 0,
                "errors": 0,
                "first": _iso(ts_ns),
                "last": None,
            },
        )
        row["last"] = _iso(ts_ns)
        return row

    @property
    def access_calls(self) -> int:
        return sum(v["calls"] for v in self.access.values())


def _requirements(
    requirements: Iterable[Requirement], tally: _Tally, integrity: VerifyResult, gap: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Each requirement met, or needing attention with the reasons."""
    reqs = []
    for req in requirements:
        notes = []
        if gap is not None:
            notes.append(
                f"events up to seq {gap['until_seq']} ({gap['until']}) are not in this report: {gap['why']}"
            )
        if not integrity.ok:
            notes.append("the audit log failed verification")
        if "access" in req.evidence and tally.access_calls == 0:
            notes.append("no access events in the period")
        if "access" in req.evidence and tally.unattributed:
            notes.append(f"{tally.unattributed} access events without a principal")
        if "operations" in req.evidence and not tally.operations:
            notes.append("no start/stop events in the period")
        reqs.append(
            {
                "ref": req.ref,
                "title": req.title,
                "evidence": list(req.evidence),
                "status": "attention" if notes else "met",
                "notes": notes,
            }
        )
    return reqs


def build_report(
    records: Iterable[AuditRecord],
    framework: str,
    integrity: VerifyResult,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    log_path: str | None = None,
    handoff: Any = None,
    includes_archived: bool = False,
) -> dict[str, Any]:
    """The report as a JSON-ready dict. ``records`` are the events of the period.

    ``handoff`` (``gateway.audit.retention.Handoff``) is the live log's retention hand-off:
    the report then says which events the period asked for but the records do not hold
    (archived and not included, or deleted), so it never claims more than it covers.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r} (hipaa, gdpr, sox)")
    title, requirements = FRAMEWORKS[framework]
    t = _Tally()
    for r in records:
        t.add(r)
    period: dict[str, Any] = {
        "since": _iso(since_ns),
        "until": _iso(until_ns),
        "covered_from": _iso(t.first_ts),
        "covered_to": _iso(t.last_ts),
        "not_covered": _not_covered(handoff, includes_archived, since_ns),
    }
    return {
        "framework": framework,
        "title": title,
        "generated": _iso(time.time_ns()),
        "period": period,
        "log": {
            "path": log_path,
            "events": t.events,
            "first_seq": t.first_seq,
            "last_seq": t.last_seq,
            "types": dict(sorted(t.types.items())),
        },
        "integrity": integrity.as_dict(),
        "requirements": _requirements(requirements, t, integrity, period["not_covered"]),
        "summary": _summary(t, integrity),
        "access": sorted(t.access.values(), key=lambda v: (v["principal"], v["target"])),
        "denied": t.denied,
        "changes": t.changes,
        "operations": dict(sorted(t.operations.items())),
    }


def _summary(t: _Tally, integrity: VerifyResult) -> dict[str, Any]:
    """The report's counts, and which kinds of evidence the period holds."""
    return {
        "access_events": t.access_calls,
        "principals": len(t.principals),
        "denied": len(t.denied),
        "denied_counted": t.denied_counted,
        "changes": len(t.changes),
        "arguments_redacted": t.redacted,
        "evidence_present": {
            "access": t.access_calls > 0,
            "denied": True,
            "changes": True,
            "operations": bool(t.operations),
            "integrity": integrity.ok,
        },
    }


def _not_covered(handoff: Any, includes_archived: bool, since_ns: int | None) -> dict[str, Any] | None:
    """What the period asks for that retention took out of the live log, if anything."""
    if handoff is None or (since_ns is not None and since_ns > handoff.last_ts_ns):
        return None
    if handoff.mode == "archive" and includes_archived:
        return None
    why = (
        "deleted by audit retention"
        if handoff.mode == "delete"
        else "archived by audit retention (run the report with --archived)"
    )
    return {"until_seq": handoff.seq, "until": _iso(handoff.last_ts_ns), "why": why}


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    if not rows:
        return "<p><em>none</em></p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _uncovered(period: dict[str, Any]) -> str:
    gap = period.get("not_covered")
    return "" if not gap else f" (not covered: up to seq {gap['until_seq']}, {gap['until']}: {gap['why']})"


def _cell(v: Any) -> str:
    if isinstance(v, list):
        return "; ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={val}" for k, val in v.items())
    return "" if v is None else str(v)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page (no scripts, every value escaped)."""
    integ = report["integrity"]
    status = "INTACT" if integ["ok"] else "FAILED: " + _cell(integ.get("problem"))
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(report['title'])} audit report</title>",
        (
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #999;padding:4px 8px;text-align:left;vertical-align:top}"
            ".met{color:#060}.attention{color:#a00}</style></head><body>"
        ),
        f"<h1>{esc(report['title'])}: audit report</h1>",
        (
            f"<p>Period: {esc(_cell(report['period']['since']) or 'start')} to "
            f"{esc(_cell(report['period']['until']) or 'now')}; events cover "
            f"{esc(_cell(report['period']['covered_from']) or '-')} to {esc(_cell(report['period']['covered_to']) or '-')}"
            f"{esc(_uncovered(report['period']))}. Generated {esc(report['generated'])}. "
            f"Log: {esc(_cell(report['log']['path']))}, {report['log']['events']} events in period.</p>"
        ),
        (
            f"<h2>Integrity of the log</h2><p class='{'met' if integ['ok'] else 'attention'}'>{esc(status)} "
            f"({integ['events']} events, {integ['signatures_checked']} signatures, {integ['anchors_checked']} anchors "
            f"checked; head seq {integ['last_seq']})</p>"
        ),
        "<h2>Requirements</h2>",
        "<table><thead><tr><th>ref</th><th>requirement</th><th>evidence</th><th>status</th></tr></thead><tbody>",
    ]
    for req in report["requirements"]:
        parts.append(
            f"<tr><td>{esc(req['ref'])}</td><td>{esc(req['title'])}</td><td>{esc(', '.join(req['evidence']))}</td>"
            f"<td class='{esc(req['status'])}'>{esc(req['status'])} {esc('; '.join(req['notes']))}</td></tr>"
        )
    parts.append("</tbody></table>")
    parts.append("<h2>Who accessed what</h2>")
    parts.append(
        _table(
            report["access"],
            ["principal", "target", "kind", "calls", "allowed", "denied", "errors", "first", "last"],
        )
    )
    parts.append("<h2>Denied attempts</h2>")
    parts.append(
        _table(report["denied"], ["seq", "time", "principal", "agent", "target", "error_code", "reasons"])
    )
    parts.append("<h2>Changes to tools and policy</h2>")
    parts.append(_table(report["changes"], ["seq", "time", "type", "principal", "details"]))
    parts.append("<h2>Operations</h2>")
    parts.append(
        _table([{"type": k, "count": v} for k, v in report["operations"].items()], ["type", "count"])
    )
    parts.append("</body></html>")
    return "\n".join(parts)
