"""Operator commands on a ``symbi serve --workers`` config (``gateway.workerdirs``): the
workers keep their audit chains, keys and embedded stores in ``<data_dir>/worker-<i>``, so a
command on ``<data_dir>``'s own files made a signing key no worker signs with (and printed
its id to pin), read a log no worker writes, or filled a knowledge base no worker searches.
They refuse; ``symbi audit init --workers N`` makes every worker's key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.server.workers import worker_data_dir
from tests.conftest import write_config


def _call(environ: dict[str, str], *argv: str) -> int:
    args: argparse.Namespace = build_parser(argv[0]).parse_args(list(argv))
    args.environ = environ
    return int(args.func(args))


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A config whose data dir a `symbi serve --workers 2` has run in (its workers' folders)."""
    cfg = write_config(tmp_path, "")
    data = load_config(cfg, {}).data_dir
    for i in range(2):
        worker_data_dir(data, i).mkdir(parents=True)
    return cfg


@pytest.mark.parametrize(
    "argv",
    [
        ("audit", "init"),
        ("audit", "tail"),
        ("audit", "query"),
        ("audit", "export"),
        ("audit", "checkpoint"),
        ("knowledge", "list"),
        ("knowledge", "add", "docs", "/nonexistent-docs"),
        ("memory", "stats"),
    ],
)
def test_data_dir_commands_refuse_a_workers_data_dir(served: Path, argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        _call({}, *argv, "--config", str(served))
    data = load_config(served, {}).data_dir
    assert not (data / "audit-key.pem").exists()  # nothing made where no worker reads it


def test_audit_verify_refuses_a_workers_data_dir(served: Path) -> None:
    """Not the workers' chains: a key an earlier `audit init` left in <data_dir> verified an
    empty log there (no worker writes it) and said nothing of the workers'."""
    from gateway.audit.keys import load_or_create_key

    load_or_create_key(load_config(served, {}).audit_key_path)
    with pytest.raises(ConfigError):
        _call({}, "audit", "verify", "--config", str(served))


def test_audit_init_with_workers_makes_every_workers_key(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _call({}, "audit", "init", "--workers", "2", "--config", str(served)) == 0
    out = capsys.readouterr().out
    data = load_config(served, {}).data_dir
    for i in range(2):  # where each worker's gateway looks for it (SYMBI_DATA_DIR=worker-<i>)
        worker = load_config(served, {"SYMBI_DATA_DIR": str(worker_data_dir(data, i))})
        assert worker.audit_key_path.exists() and str(worker.audit_key_path) in out
    assert not (data / "audit-key.pem").exists()
    pins = next(line for line in out.splitlines() if line.startswith("pinned_keys"))
    assert pins.count('"') == 4  # two key ids to pin
    assert "checkpoint_export" not in out  # refused under --workers: not suggested


def test_one_workers_dir_and_the_shared_chains_are_still_reachable(served: Path) -> None:
    worker = {"SYMBI_DATA_DIR": str(worker_data_dir(load_config(served, {}).data_dir, 0))}
    assert _call(worker, "audit", "init", "--config", str(served)) == 0  # that worker's own dir
    from gateway.cli.audit_keys import log_and_key

    args = build_parser("audit").parse_args(["audit", "verify", "--shared", "--config", str(served)])
    args.environ = {}
    log_and_key(args)  # --shared reads PostgreSQL: not refused here


def test_a_shared_knowledge_store_is_not_refused(served: Path) -> None:
    from gateway.cli.memory_cmd import _config

    args = build_parser("knowledge").parse_args(["knowledge", "list", "--config", str(served)])
    args.environ = {"QDRANT_URL": "http://127.0.0.1:6333"}  # one Qdrant server for every worker
    assert _config(args).context.vector_db_url is not None


def test_a_plain_data_dir_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, "")
    assert _call({}, "audit", "init", "--config", str(cfg)) == 0
    assert "checkpoint_export" in capsys.readouterr().out
