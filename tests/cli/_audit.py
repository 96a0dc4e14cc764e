"""``symbi audit ...`` run as a real subprocess of this checkout (the CLI tests' one runner)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def symbi(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
