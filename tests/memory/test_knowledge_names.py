"""A file whose name is not valid UTF-8 is refused by ``symbi knowledge add``, storing nothing.

Python decodes file names with ``surrogateescape``: the name ``b\\xff.md`` became the source
``"b\\udcff.md"``, which the store's filter refused with a TypeError traceback after the files
before it were stored (gateway/textcheck.py). Now the ingest is refused before the store is
touched, naming the file (exit 1, the error family's ``ContextError``); renamed, it ingests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, symbi_env, write_config


def _symbi(cfg: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
        env=symbi_env(),
    )


def test_a_file_name_that_is_not_utf8_refuses_the_ingest_and_stores_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[context]\nembedder = "hashing"\n')
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Cats\nsome text about cats\n")
    odd = os.path.join(os.fsencode(docs), b"b\xff.md")
    with open(odd, "wb") as f:
        f.write(b"# Dogs\nsome text about dogs\n")
    refused = _symbi(cfg, "knowledge", "add", "kb", str(docs))
    assert refused.returncode == 1 and b"Traceback" not in refused.stderr
    listed = _symbi(cfg, "knowledge", "list", "--json")
    assert listed.returncode == 0 and "kb" not in json.loads(listed.stdout or b"{}")
    os.rename(odd, os.path.join(os.fsencode(docs), b"b.md"))
    added = _symbi(cfg, "knowledge", "add", "kb", str(docs), "--json")
    assert added.returncode == 0 and json.loads(added.stdout)["added"] == 2
