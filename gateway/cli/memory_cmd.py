"""``symbi knowledge add|list|search|remove`` and ``symbi memory stats|purge``.

Operator commands on the store the gateway uses (``[context]``): they act as the operator,
not as an agent, so the policy is asked one thing only: which patterns ``knowledge add``
redacts from the files before they are embedded (kind ``knowledge/ingest``). The embedded store has one owner at a time: with
a gateway running on the same data dir they fail with a reason (use a Qdrant server,
``vector_db_url``, to share a store between processes). With ``[context] enabled = false``
they refuse (exit 2): no gateway serves that store. On the data dir of `symbi serve --workers`
with the embedded store they refuse too (`gateway.workerdirs`): each worker has its own.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import HELP, whole_number
from gateway.cli.terminal import raw_stream

# the memory stack (numpy, the embedder), the policy engine and the config models are
# imported as a command runs: at the top they were ~0.6 s of CPU in every --help
if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.memory.manager import ContextManager

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h, 90m")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("knowledge", help=HELP["knowledge"])
    ks = k.add_subparsers(dest="knowledge_command", metavar="ACTION")
    a = ks.add_parser("add", help="ingest files: chunk, embed, store (only changed files are redone)")
    a.add_argument("base")
    a.add_argument("path", type=Path)
    a.add_argument("--glob", default="**/*", help="which files under PATH (default **/*)")
    a.add_argument("--no-prune", action="store_true", help="keep chunks of files that left PATH")
    a.add_argument(
        "--accept-flagged",
        type=_rules,
        default=frozenset(),
        metavar="RULE[,RULE]",
        help="store the one file PATH names though screening flags it with these rules (read it first); "
        "kept for its exact bytes only",
    )
    a.set_defaults(func=_add)
    ls = ks.add_parser("list", help="bases with their files and chunks")
    ls.set_defaults(func=_list)
    s = ks.add_parser("search", help="run the RAG pipeline's search on one base")
    s.add_argument("base")
    s.add_argument("query")
    s.add_argument("--top-k", type=whole_number(1), default=5)
    s.set_defaults(func=_search)
    r = ks.add_parser("remove", help="remove a base, or the files at/under PATH from it")
    r.add_argument("base")
    r.add_argument("path", type=Path, nargs="?")
    r.set_defaults(func=_remove)
    for p in (a, ls, s, r):
        p.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
        p.add_argument("--json", action="store_true")
    k.set_defaults(func=lambda args: (k.print_help(sys.stderr), 2)[1])

    mem = sub.add_parser("memory", help=HELP["memory"])
    ms = mem.add_subparsers(dest="memory_command", metavar="ACTION")
    st = ms.add_parser("stats", help="counts per memory type")
    st.add_argument("--agent", default=None)
    st.set_defaults(func=_stats)
    pu = ms.add_parser("purge", help="delete long-term and shared memories older than a duration")
    pu.add_argument(
        "--older-than",
        type=parse_duration,
        default=None,
        help="e.g. 30d (default: [context] knowledge_retention_days)",
    )
    pu.add_argument("--agent", default=None)
    pu.set_defaults(func=_purge)
    for p in (st, pu):
        p.add_argument("--config", type=Path, default=None)
        p.add_argument("--json", action="store_true")
    mem.set_defaults(func=lambda args: (mem.print_help(sys.stderr), 2)[1])


def _command(args: argparse.Namespace) -> str:
    if getattr(args, "knowledge_command", None):
        return f"symbi knowledge {args.knowledge_command}"
    return f"symbi memory {getattr(args, 'memory_command', '')}"


def _config(args: argparse.Namespace) -> Config:
    """The config, refused when its store is the embedded one of a ``--workers`` data dir."""
    from gateway.config import load_config
    from gateway.workerdirs import refuse_on_workers_dir

    config = load_config(args.config, args.environ)
    if config.context.vector_db_url is None:
        refuse_on_workers_dir(
            config,
            _command(args) + " (on the embedded store)",
            "share one Qdrant server between the workers ([context] vector_db_url), or act on one "
            "worker's store with SYMBI_DATA_DIR=<data_dir>/worker-<i> while that worker is stopped",
        )
    return config


def _manager(args: argparse.Namespace) -> ContextManager:
    from gateway.events import LoggingSink
    from gateway.memory.build import build_manager

    return build_manager(_config(args), LoggingSink())


def _progress(n: int, total: int, path: str) -> None:
    width = 30
    done = int(width * n / max(total, 1))
    raw_stream(sys.stderr).write("\r")  # the bar's own return; the file name is escaped
    print(
        f"[{'#' * done}{'.' * (width - done)}] {n}/{total} {Path(path).name[:40]:<40}",
        end="",
        file=sys.stderr,
    )
    if n == total:
        print(file=sys.stderr)


def _redact_patterns(config: Config, base: str) -> list[str]:
    """The policy's ``redact_text`` for ``knowledge/ingest`` (none when policies are off)."""
    if not config.policies_enforced:
        return []
    from gateway.memory.access import ingest_patterns
    from gateway.policy import build_engine

    engine = build_engine(config)
    try:
        return ingest_patterns(engine, base)
    finally:
        engine.close()


def _rules(text: str) -> frozenset[str]:
    """``SP002,SP004``: screening rule ids, each named exactly (no pattern, no "all")."""
    rules = frozenset(r.strip().upper() for r in text.split(","))
    if not rules or not all(re.fullmatch(r"SP\d{3}", r) for r in rules):
        raise argparse.ArgumentTypeError(f"{text!r}: screening rule ids such as SP002,SP004")
    return rules


def _add(args: argparse.Namespace) -> int:
    from gateway.events import LoggingSink
    from gateway.memory.build import build_manager
    from gateway.memory.knowledge import KnowledgeBases

    config = _config(args)
    redact = _redact_patterns(config, args.base)
    m = build_manager(config, LoggingSink())
    try:
        rep = KnowledgeBases(m).add(
            args.base,
            args.path,
            glob=args.glob,
            prune=not args.no_prune,
            progress=None if args.json else _progress,
            redact=redact,
            accept_flagged=args.accept_flagged,
        )
        if rep.chunks:
            m.store.optimize()  # build the HNSW index now, not on the gateway's request path
    finally:
        m.close()
    d = rep.as_dict()
    for src, reasons in rep.flagged.items():
        print(f"{src}: not ingested: screening flagged it: {'; '.join(reasons)}", file=sys.stderr)
    for src, reasons in rep.held.items():
        print(
            f"{src}: kept as ingested before, not served to agents: screening now flags it (accept it with "
            f"--accept-flagged or remove it): {'; '.join(reasons)}",
            file=sys.stderr,
        )
    for src, rules in rep.accepted.items():
        print(f"{src}: ingested though screening flags it: {', '.join(rules)} accepted", file=sys.stderr)
    if args.json:
        print(json.dumps(d))
    else:
        print(
            f"{d['base']}: {d['added']} added, {d['updated']} updated, {d['unchanged']} unchanged, "
            f"{d['removed']} removed; {d['chunks']} chunks embedded in {d['seconds']} s"
            + (f"; {d['redacted']} secret(s) redacted by the policy" if d["redacted"] else "")
            + (f"; {d['flagged']} file(s) flagged by screening, not ingested" if d["flagged"] else "")
            + (f"; {d['held']} file(s) kept as before, flagged by screening now" if d["held"] else "")
        )
    return 1 if rep.flagged or rep.held else 0


def _list(args: argparse.Namespace) -> int:
    from gateway.memory.knowledge import KnowledgeBases

    m = _manager(args)
    try:
        bases = KnowledgeBases(m).list()
    finally:
        m.close()
    if args.json:
        print(json.dumps(bases))
    else:
        for name, b in bases.items():
            print(f"{name}\t{b['files']} files\t{b['chunks']} chunks")
    return 0


def _search(args: argparse.Namespace) -> int:
    from gateway.memory.rag import RagPipeline

    m = _manager(args)
    try:
        res = RagPipeline(m).run(args.query, bases=[args.base], top_k=args.top_k, budget_tokens=10**9)
    finally:
        m.close()
    if args.json:
        print(json.dumps({"items": [i.as_dict() for i in res.items], "timings_ms": res.timings_ms}))
    else:
        for i in res.items:
            print(f"{i.score:.3f}  {i.citation()}\n       {i.text[:160].replace(chr(10), ' ')}")
    return 0 if res.items else 1


def _remove(args: argparse.Namespace) -> int:
    from gateway.memory.knowledge import KnowledgeBases

    m = _manager(args)
    try:
        n = KnowledgeBases(m).remove(args.base, args.path)
    finally:
        m.close()
    print(json.dumps({"removed_chunks": n}) if args.json else f"removed {n} chunks")
    return 0 if n else 1


def _stats(args: argparse.Namespace) -> int:
    m = _manager(args)
    try:
        st = m.stats(args.agent)
    finally:
        m.close()
    # short-term and working memory live in the running gateway's process: this one has none
    for k in ("short_term", "working", "short_term_cache"):
        st.pop(k, None)
    if args.json:
        print(json.dumps(st))
    else:
        for k, v in st.items():
            print(f"{k}\t{v}")
        print("(short_term and working memory live in the running gateway; not counted here)")
    return 0


def _purge(args: argparse.Namespace) -> int:
    m = _manager(args)
    try:
        n = m.purge(older_than_s=args.older_than, agent=args.agent)
    finally:
        m.close()
    print(json.dumps({"purged": n}) if args.json else f"purged {n} memories")
    return 0
