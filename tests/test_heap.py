"""The collector's set-up after a gateway's start-up (gateway/heap.py), in a started gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.heap import YOUNG_COLLECTION_AFTER
from tests.conftest import ROOT, write_config

# A fresh interpreter: this test process's collector has been set up by earlier tests' gateways.
_STARTED = """
import gc, json, sys
from pathlib import Path
import anyio
from gateway.assemble import make_gateway
from gateway.config import load_config

async def main():
    before = [gc.get_freeze_count(), gc.get_threshold()[0]]
    gw = make_gateway(load_config(Path(sys.argv[1]), {}))
    async with gw.running():
        print(json.dumps({"before": before, "serving": [gc.get_freeze_count(), gc.get_threshold()[0]]}))

anyio.run(main)
"""


def test_a_started_gateway_has_frozen_its_start_up_and_collects_young_objects_less_often(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = false\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _STARTED, str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"][0] == 0 and seen["before"][1] < YOUNG_COLLECTION_AFTER  # CPython's defaults
    frozen, young = seen["serving"]
    assert frozen > 10_000  # the modules, the catalogue, the policy: not walked again
    assert young == YOUNG_COLLECTION_AFTER
