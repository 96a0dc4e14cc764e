"""bench/_sibling.py: a bench script measuring another checkout (``PYTHONPATH=<tree>``) gets
this checkout's bench modules by path, though ``bench.*`` is that tree's and lacks them (as
bench/decisions.py and bench/chain_ops.py do for ``loaded_gateway_tree``). The older tree is a
folder with a bench/_common.py of its own (a real older checkout is not in a fresh clone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench._common import ROOT

PROBE = """
import json, runpy, sys
import bench._common as measured
sibling = runpy.run_path(sys.argv[1])["sibling"]
mine = sibling("_common")
print(json.dumps({
    "measured": measured.__file__,
    "measured_has": hasattr(measured, "loaded_gateway_tree"),
    "mine": mine.__file__,
    "mine_has": callable(getattr(mine, "loaded_gateway_tree", None)),
    "registered": sys.modules["_common"] is mine,
}))
"""


def test_sibling_loads_this_checkouts_module_when_bench_is_an_older_trees(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "_common.py").write_text("ROOT = None  # an older _common\n")
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "bench" / "_sibling.py")],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(out.stdout)
    assert Path(seen["measured"]) == tmp_path / "bench" / "_common.py"
    assert not seen["measured_has"]
    assert Path(seen["mine"]) == ROOT / "bench" / "_common.py"
    assert seen["mine_has"] and seen["registered"]
