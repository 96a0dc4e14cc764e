"""``symbi knowledge`` and ``symbi memory`` as a user runs them (subprocesses, real store)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SYMBI, symbi_env, write_config
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
    assert json.loads(st.stdout)["backend"] == "qdrant-edge"
    assert json.loads(_symbi(cfg, "memory", "purge", "--older-than", "30d", "--json").stdout) == {"purged": 0}
    assert _symbi(cfg, "memory", "purge", "--older-than", "30 parsecs").returncode == 2
