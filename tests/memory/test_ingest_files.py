"""What ``symbi knowledge add`` reads: the files in the folder it is given, bounded."""

from __future__ import annotations

import json
import os
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from gateway.errors import ContextError
from gateway.memory.knowledge import MAX_FILE_BYTES, KnowledgeBases
from gateway.memory.manager import ContextManager
from tests.conftest import SYMBI, symbi_env, write_config

SECRET = "sk-proj-rt38aENVIRONSECRET0123456789"


def _symbi(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYMBI), *args, "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=symbi_env(OPENAI_API_KEY_FOR_TOOLS=SECRET),
    )


def test_a_link_in_the_folder_to_outside_it_is_never_ingested(tmp_path: Path) -> None:
    """Attack: someone who can write to a shared docs folder leaves ``env.md`` linked to
    ``/proc/self/environ`` and ``keys.md`` to a file of the gateway's data dir. ``symbi knowledge
    add docs FOLDER`` ingested the CLI's environment (its API keys) and the file, and agents
    searching the base were handed them. Now a file that leads outside the folder refuses the
    ingestion, naming it, before anything is stored."""
    cfg = write_config(tmp_path, '[context]\nembedder = "hashing"\n')
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("# Team\nLunch is at noon.\n")
    private = tmp_path / "data" / "private.txt"
    private.parent.mkdir(exist_ok=True)
    private.write_text("gateway private material\n")
    for name, target in (("env.md", Path("/proc/self/environ")), ("keys.md", private)):
        (docs / name).symlink_to(target)
        r = _symbi(cfg, "knowledge", "add", "docs", str(docs), "--json")
        assert r.returncode == 1, r.stdout
        assert name in r.stderr
        assert json.loads(_symbi(cfg, "knowledge", "list", "--json").stdout) == {}
        (docs / name).unlink()
    (docs / "inside.md").symlink_to(docs / "notes.md")  # a link within the folder is fine
    assert _symbi(cfg, "knowledge", "add", "docs", str(docs), "--json").returncode == 0


def test_a_huge_file_is_refused_without_being_read_whole(tmp_path: Path, manager: ContextManager) -> None:
    """Attack: a 200 MB file in the folder (here sparse) was read whole, then refused for its size."""
    docs = tmp_path / "docs"
    docs.mkdir()
    with (docs / "big.md").open("wb") as f:
        f.truncate(40 * MAX_FILE_BYTES)
    tracemalloc.start()
    try:
        with pytest.raises(ContextError):
            KnowledgeBases(manager).add("docs", docs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_FILE_BYTES


def test_a_fifo_named_by_itself_is_refused_not_waited_on(tmp_path: Path, manager: ContextManager) -> None:
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    with pytest.raises(ContextError):
        KnowledgeBases(manager).add("docs", fifo)


def test_hidden_files_and_folders_are_left_out_unless_the_glob_names_them(
    tmp_path: Path, manager: ContextManager
) -> None:
    """Attack (on the default glob ``**/*``): a handbook folder that is a git clone. Its
    ``.git/config`` (the remote URL with its token), every ``.git/objects`` file and the folder's
    ``.env`` were ingested, and agents searching the base were handed them. Now hidden files
    and folders are left out, as a shell's glob leaves them, unless the glob names them."""
    docs = tmp_path / "handbook"
    (docs / ".git").mkdir(parents=True)
    (docs / ".git" / "config").write_text(
        '[remote "origin"]\n\turl = https://alice:ghp_TOKEN0123@example.test/x\n'
    )
    (docs / ".env").write_text("DB_PASSWORD=hunter2-prod\n")
    (docs / ".github").mkdir()
    (docs / ".github" / "guide.md").write_text("# Contributing\nOpen a pull request.\n")
    (docs / "bikes.md").write_text("# Bikes\nBikes go in the basement cage.\n")
    kb = KnowledgeBases(manager)
    assert kb.add("hb", docs).added == [str(docs / "bikes.md")]
    assert kb.add("gh", docs, glob=".github/*.md").added == [str(docs / ".github" / "guide.md")]
