"""``symbi knowledge`` and ``symbi memory`` as a user runs them (subprocesses, real store)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, SYMBI, symbi_env, write_config
from tests.memory.conftest import CORPUS


def _symbi(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYMBI), *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=symbi_env(),
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path, '[context]\nembedder = "hashing"\ncontext_cache_size = "1GB"\n')


@pytest.mark.slow
def test_knowledge_add_list_search_remove(cfg: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(CORPUS, docs)
    r = _symbi(cfg, "knowledge", "add", "handbook", str(docs), "--glob", "*.md", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 5
    again = json.loads(
        _symbi(cfg, "knowledge", "add", "handbook", str(docs), "--glob", "*.md", "--json").stdout
    )
    assert (again["unchanged"], again["chunks"]) == (5, 0)
    assert json.loads(_symbi(cfg, "knowledge", "list", "--json").stdout)["handbook"]["files"] == 5
    s = _symbi(cfg, "knowledge", "search", "handbook", "basement cage badge", "--json")
    assert s.returncode == 0 and json.loads(s.stdout)["items"][0]["heading"] == "Bicycles"
    rm = _symbi(cfg, "knowledge", "remove", "handbook", str(docs / "office.md"), "--json")
    assert json.loads(rm.stdout)["removed_chunks"] > 0
    assert json.loads(_symbi(cfg, "knowledge", "list", "--json").stdout)["handbook"]["files"] == 4
    assert _symbi(cfg, "knowledge", "add", "../bad", str(docs)).returncode == 1


@pytest.mark.slow
def test_memory_stats_and_purge(cfg: Path) -> None:
    st = _symbi(cfg, "memory", "stats", "--json")
    assert st.returncode == 0, st.stderr
    stats = json.loads(st.stdout)
    assert stats["backend"] == "qdrant-edge" and (stats["long_term"], stats["shared"]) == (0, 0)
    assert "short_term" not in stats  # in-process memory of a gateway: a CLI process cannot count it
    assert json.loads(_symbi(cfg, "memory", "purge", "--older-than", "30d", "--json").stdout) == {"purged": 0}
    assert _symbi(cfg, "memory", "purge", "--older-than", "30 parsecs").returncode == 2


SECRET = "sk-live_abcdefghijklmnopqrstuvwx"


def _secret_docs(tmp_path: Path) -> Path:
    docs = tmp_path / "ops"
    docs.mkdir()
    (docs / "ops.md").write_text(f"# Ops\n\n## Deploy\nThe token is {SECRET}; password: hunter2.\n")
    return docs


def _files_with(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.slow
def test_knowledge_add_redacts_what_the_default_policy_names(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        f'[policy]\npath = "{ROOT / "policies.rego"}"\ndata = "{ROOT / "policies/data.json"}"\n'
        '[context]\nembedder = "hashing"\n',
    )
    r = _symbi(cfg, "knowledge", "add", "ops", str(_secret_docs(tmp_path)), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["redacted"] == 2
    s = json.loads(_symbi(cfg, "knowledge", "search", "ops", "deploy token", "--json").stdout)
    assert s["items"][0]["text"] == "The token is [REDACTED]; [REDACTED]"
    data = tmp_path / "data"
    assert _files_with(data, SECRET.encode()) == [] and _files_with(data, b"hunter2") == []


@pytest.mark.slow
def test_knowledge_add_stops_when_the_policy_denies_ingestion(tmp_path: Path) -> None:
    rego = tmp_path / "deny.rego"
    rego.write_text(
        'package symbi\n\ndecision := {"allow": false, "reasons": ["ingestion is closed"], "conditions": {}}\n'
    )
    cfg = write_config(tmp_path, f'[policy]\npath = "{rego}"\n[context]\nembedder = "hashing"\n')
    r = _symbi(cfg, "knowledge", "add", "ops", str(_secret_docs(tmp_path)), "--json")
    assert r.returncode == 1 and "ingestion is closed" in r.stderr
    assert not (tmp_path / "data" / "vectors").exists()  # nothing was embedded or stored


@pytest.mark.parametrize(
    "args",
    [("knowledge", "add", "handbook", str(CORPUS)), ("knowledge", "list"), ("memory", "stats")],
)
def test_with_context_off_the_commands_refuse(tmp_path: Path, args: tuple[str, ...]) -> None:
    """``[context] enabled = false``: the gateway serves no memory or knowledge, so a base added
    would reach no one and the stats are of a store no gateway keeps: a usage error naming the
    key (exit 2), and no store made."""
    cfg = write_config(tmp_path, "[context]\nenabled = false\n")
    r = _symbi(cfg, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert not (tmp_path / "data" / "vectors").exists()
