"""``symbi audit verify|tail|query|export|report|rotate-key``: the audit log from the shell.

Which log: ``--log PATH`` (a SQLite log, or for ``verify`` also a JSONL export), else the
config's ``[audit] path`` (``--config FILE`` or ``$SYMBI_CONFIG_PATH``, else defaults).
Which public keys: with ``[audit] pinned_keys`` in the config, only keys with those ids (from
``--public-key``, beside the signing key or in the log) and keys a signed rotation hands over
to; else ``--public-key PEM`` (repeatable), else the keys exported beside the signing key
(``audit-key.pub.pem``, retired ``audit-key.pub.<id>.pem``), reported as NOT ANCHORED.
``symbi audit init`` prints the key id to pin. Checkpoints in ``[audit] checkpoint_export``
and ``--anchor`` files must all be in the log (a truncated or emptied log fails).

``symbi audit checkpoint --out FILE`` appends the current signed head to a copy kept elsewhere.

Exit codes: 0 ok / intact; 1 verification failed (the first bad seq is named; ``report``
still writes its report, marked FAILED) or the log cannot be read or written; 2 usage or
config error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.cli import EXIT_FAIL, EXIT_OK, HELP, whole_number
from gateway.cli import audit_retention_cmd as retention_cmd
from gateway.cli import audit_shared_cmd as shared_cmd
from gateway.cli import audit_verify_cmd as verify_cmd
from gateway.cli.audit_keys import log_and_key, open_log, public_keys
from gateway.cli.terminal import printable
from gateway.errors import ConfigError

_REL = re.compile(r"^(\d+)([smhdw])$")
_MAX_NS = 2**63 - 1
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help=HELP["audit"])
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    verify_cmd.add_verify(asub, _common)
    for add in (_add_tail, _add_query, _add_export, _add_report):
        add(asub)
    verify_cmd.add_checkpoint(asub, _common)
    _add_init(asub)
    retention_cmd.add_archive_command(asub, _common)
    _add_rotate(asub)
    shared_cmd.add_register(asub, _common)


def _common(sp: argparse.ArgumentParser, keys: bool = False) -> None:
    sp.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    sp.add_argument("--log", type=Path, default=None, help="audit log (default: [audit] path)")
    if keys:
        sp.add_argument(
            "--public-key",
            type=Path,
            action="append",
            default=[],
            help="trusted public key PEM (repeatable; default: keys exported beside the signing key)",
        )


def _period(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--since", help="ISO 8601 time, epoch seconds, or an age like 15m, 24h, 7d")
    sp.add_argument("--until", help="same forms as --since (exclusive)")


def _add_tail(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = asub.add_parser("tail", help="print the last events; -f follows new ones")
    _common(t)
    t.add_argument("-n", type=whole_number(0), default=10, help="how many (default 10; 0 or more)")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    t.add_argument("--json", action="store_true", help="one JSON record per line")
    t.set_defaults(func=_tail)


def _add_query(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = asub.add_parser("query", help="events matching filters")
    _common(q)
    _period(q)
    q.add_argument("--principal")
    q.add_argument("--tool", help="details.tool (namespaced tool name)")
    q.add_argument(
        "--type", action="append", default=[], help="event type; 'policy.*' matches a prefix (repeatable)"
    )
    q.add_argument("--decision", choices=("allow", "deny"))
    q.add_argument("--limit", type=whole_number(0), default=None)
    q.add_argument("--json", action="store_true", help="one JSON record per line")
    retention_cmd.add_archived_option(q)
    q.set_defaults(func=_query)


def _add_export(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    e = asub.add_parser("export", help="write every record, one independently verifiable JSON line each")
    _common(e)
    e.add_argument("--format", choices=("jsonl",), default="jsonl")
    e.add_argument("--out", type=Path, default=None, help="output file (default stdout)")
    retention_cmd.add_archived_option(e)
    e.set_defaults(func=_export)


def _add_report(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = asub.add_parser("report", help="compliance report: HIPAA, GDPR or SOX (HTML or JSON)")
    _common(r, keys=True)
    _period(r)
    r.add_argument("--framework", choices=("hipaa", "gdpr", "sox"), required=True)
    r.add_argument(
        "--out", type=Path, default=None, help="report.html or report.json (default: JSON on stdout)"
    )
    r.add_argument("--format", choices=("html", "json"), default=None, help="default: from --out's suffix")
    retention_cmd.add_archived_option(r)
    r.set_defaults(func=_report)


def _add_init(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    i = asub.add_parser(
        "init", help="create the data dir and signing key; print the key id to pin in the config"
    )
    i.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    i.add_argument(
        "--workers",
        type=verify_cmd.jobs,
        default=None,
        metavar="N",
        help="for `symbi serve --workers N`: make each worker's key (<data_dir>/worker-<i>) and print every id",
    )
    i.set_defaults(func=_init)


def _add_rotate(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = asub.add_parser(
        "rotate-key", help="replace the signing key (signed rotation event); gateway must be stopped"
    )
    _common(k)
    k.add_argument("--key", type=Path, default=None, help="signing key (default: [audit] key_path)")
    k.set_defaults(func=_rotate)


# -- helpers ---------------------------------------------------------------------------------


def parse_time(raw: str | None, now_ns: int | None = None) -> int | None:
    """ISO 8601 (naive = UTC), epoch seconds, or an age (``15m``, ``24h``, ``7d``) -> ns."""
    if raw is None:
        return None
    ns = _parse_ns(raw, time.time_ns() if now_ns is None else now_ns)
    return max(0, min(ns, _MAX_NS))  # SQLite integers are 64-bit


def _parse_ns(raw: str, now_ns: int) -> int:
    m = _REL.match(raw.strip())
    if m:
        return now_ns - int(m.group(1)) * _UNIT_S[m.group(2)] * 1_000_000_000
    try:
        return int(float(raw) * 1e9)
    except (ValueError, OverflowError):  # not a number (or inf / nan): try ISO 8601
        pass
    try:
        dt = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise ConfigError(
            f"cannot read time {raw!r}: use ISO 8601, epoch seconds or an age like 24h"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1e9)


def _line(rec: Any) -> str:
    d = rec.details
    ts = datetime.fromtimestamp(rec.ts_ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    extra = []
    for k in ("tool", "outcome", "error_code"):
        if d.get(k) is not None:
            extra.append(f"{k}={d[k]}")
    if isinstance(d.get("decision"), dict):
        extra.append("decision=" + ("allow" if d["decision"].get("allow") else "deny"))
    if not extra:
        extra.append(json.dumps(d, ensure_ascii=False, sort_keys=True)[:160])
    return printable(f"{rec.seq:>8} {ts} {rec.type:<20} {rec.principal or '-':<12} {' '.join(extra)}")


def _print_records(records: list[Any], as_json: bool) -> None:
    for rec in records:
        print(json.dumps(rec.as_dict(), ensure_ascii=False) if as_json else _line(rec))
    sys.stdout.flush()


# -- sub-commands ----------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from gateway.audit.keys import load_or_create_key, public_key_path
    from gateway.audit.record import key_id_of
    from gateway.config import load_config
    from gateway.custody import secure_data_dir
    from gateway.workerdirs import refuse_on_workers_dir, worker_data_dir

    cfg = load_config(args.config, args.environ)
    if args.workers is None:
        refuse_on_workers_dir(cfg, "symbi audit init", "pass --workers N to make every worker's key")
    secure_data_dir(cfg)
    cfgs = [cfg]
    if args.workers is not None:  # as the supervisor starts each worker: SYMBI_DATA_DIR=worker-<i>
        cfgs = [
            load_config(
                args.config, {**args.environ, "SYMBI_DATA_DIR": str(worker_data_dir(cfg.data_dir, i))}
            )
            for i in range(args.workers)
        ]
    kids = []
    for c in cfgs:
        secure_data_dir(c)
        key = load_or_create_key(c.audit_key_path)
        kids.append(key_id_of(key.public_key()))
        pinned = "pinned" if kids[-1] in c.audit.pinned_keys else "NOT pinned yet"
        print(
            f"audit signing key {c.audit_key_path} ({pinned}); public key {public_key_path(c.audit_key_path)}"
        )
    print("Add to the config (and keep a copy of the public keys and of the checkpoints elsewhere):\n")
    print("[audit]\npinned_keys = [" + ", ".join(f'"{k}"' for k in kids) + "]")
    if args.workers is None:  # one file for N chain writers is refused under --workers
        print('checkpoint_export = "/var/lib/symbi-witness/checkpoints.jsonl"')
    return EXIT_OK


def _tail(args: argparse.Namespace) -> int:
    from gateway.audit import store

    log, _ = log_and_key(args)
    conn = store.open_reader(log)
    try:
        recs = store.query(conn, limit=args.n, newest_first=True)
        _print_records(recs, args.json)
        last = recs[-1].seq if recs else (store.head(conn).seq if store.head(conn) else 0)  # type: ignore[union-attr]
        while args.follow:
            time.sleep(0.5)
            new = list(store.iter_records(conn, after_seq=last))
            if new:
                _print_records(new, args.json)
                last = new[-1].seq
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        conn.close()
    return EXIT_OK


def _query(args: argparse.Namespace) -> int:
    from gateway.audit import store

    log, _ = log_and_key(args)
    conns = [c for c in (retention_cmd.archived_conn(args, log), store.open_reader(log)) if c is not None]
    recs: list[Any] = []
    try:
        for conn in conns:  # archived (oldest) first, then the live log
            left = None if args.limit is None else args.limit - len(recs)
            recs += store.query(
                conn,
                since_ns=parse_time(args.since),
                until_ns=parse_time(args.until),
                principal=args.principal,
                tool=args.tool,
                types=tuple(args.type),
                decision=args.decision,
                limit=left,
            )
    finally:
        for conn in conns:
            conn.close()
    _print_records(recs, args.json)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from gateway.audit import store

    log, _ = log_and_key(args)
    conns = [c for c in (retention_cmd.archived_conn(args, log), store.open_reader(log)) if c is not None]
    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(args.out, "w", encoding="utf-8")) if args.out else sys.stdout
            n = 0
            for conn in conns:  # archived (oldest) first, then the live log: one chain from seq 1
                for rec in store.iter_records(conn):
                    out.write(json.dumps(rec.as_dict(), ensure_ascii=False) + "\n")
                    n += 1
            out.flush()
    finally:
        for conn in conns:
            conn.close()
    if args.out:
        print(f"exported {n} records to {args.out}", file=sys.stderr)
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from gateway.audit import store, verify_log
    from gateway.audit.report import build_report, render_html

    log, key = log_and_key(args)
    keys = public_keys(args, key)
    integrity = verify_log(log, keys)
    since, until = parse_time(args.since), parse_time(args.until)
    from gateway.audit.retention import read_handoff

    conns = [c for c in (retention_cmd.archived_conn(args, log), store.open_reader(log)) if c is not None]
    recs: list[Any] = []
    try:
        handoff = read_handoff(conns[-1])
        for conn in conns:
            recs += store.query(conn, since_ns=since, until_ns=until)
    finally:
        for conn in conns:
            conn.close()
    report = build_report(
        recs,
        args.framework,
        integrity,
        since_ns=since,
        until_ns=until,
        log_path=str(log),
        handoff=handoff,
        includes_archived=args.archived,
    )
    fmt = args.format or ("html" if args.out and args.out.suffix in (".html", ".htm") else "json")
    text = render_html(report) if fmt == "html" else json.dumps(report, ensure_ascii=False, indent=2)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        print(
            f"{args.framework} report written to {args.out} (log {'intact' if integrity.ok else 'FAILED'})",
            file=sys.stderr,
        )
    else:
        print(text)
    return EXIT_OK if integrity.ok else EXIT_FAIL


def _rotate(args: argparse.Namespace) -> int:
    from gateway.audit import AuditLog, store
    from gateway.audit.keys import finish_rotation, public_key_path

    log_path, key = log_and_key(args)
    # every chain signed with this key moves to the new key together, or none does
    paths = [log_path] if args.log is not None else store.chain_paths(log_path)
    logs: list[AuditLog] = []
    try:
        for p in paths:
            logs.append(open_log(args, p, key))  # refuses while a gateway holds the log
        old = logs[0].key_id
        new = ""
        for log in logs:
            new = log.rotate_key(finish=False)
        finish_rotation(key)
    finally:
        for log in logs:
            log.close()
    print(
        f"rotated audit key {old} -> {new} in {len(logs)} log(s); public key exported to {public_key_path(key)}"
    )
    return EXIT_OK
