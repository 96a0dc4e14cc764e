"""``symbi mcp`` (stdio) and ``symbi serve`` (streamable HTTP)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from gateway.cli import HELP, whole_number
from gateway.config import load_config
from gateway.config.notices import report
from gateway.custody import check_trusted_files


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    m = sub.add_parser("mcp", help=HELP["mcp"])
    m.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    m.set_defaults(func=_mcp)
    s = sub.add_parser("serve", help=HELP["serve"])
    s.add_argument("--config", type=Path, default=None, help="symbi.toml (default $SYMBI_CONFIG_PATH)")
    s.add_argument("--host", default=None, help="bind address (default from config: 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="port (default from config: 8080; 0 = any free)")
    s.add_argument(
        "--workers",
        type=whole_number(1),
        default=1,
        metavar="N",
        help="N gateway processes behind HAProxy on --host/--port (default 1: this process serves). "
        "N > 1 needs [state] redis_url and postgres_url and [bus] secret (shared rate limits, keys, "
        "pins, bus) and haproxy; each worker keeps its audit chain in <data_dir>/worker-<i>",
    )
    s.set_defaults(func=_serve)


def _graceful_sigterm() -> None:
    """SIGTERM (what an MCP client or a supervisor sends) unwinds like Ctrl-C: every finally
    block runs, so sandboxed upstreams, audit batches and cgroups are cleaned up, not orphaned."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _mcp(args: argparse.Namespace) -> int:
    from gateway.cli import setup_logging
    from gateway.server.stdio import run_stdio

    cfg = load_config(args.config, args.environ)
    check_trusted_files(cfg)  # before anything starts: exit 2 naming the file
    setup_logging(cfg.gateway.log_level, cfg.gateway.log_format)
    report(cfg)
    _graceful_sigterm()
    run_stdio(cfg)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gateway.cli import setup_logging
    from gateway.server.http import run_http

    cfg = load_config(args.config, args.environ)
    check_trusted_files(cfg)
    setup_logging(cfg.gateway.log_level, cfg.gateway.log_format)
    if args.workers > 1:
        from gateway.server.workers import run_workers

        run_workers(
            cfg, args.workers, config_path=args.config, environ=args.environ, host=args.host, port=args.port
        )
        return 0
    report(cfg)
    run_http(cfg, host=args.host, port=args.port)
    return 0
