"""This checkout's bench modules, whichever checkout ``PYTHONPATH`` names.

A bench script that measures another checkout (``PYTHONPATH=<tree> bench/chain_ops.py``) imports
``bench.*`` from that tree: what its gateway needs (configs, the echo gateway) comes from the
same tree. What only this checkout's scripts know (their own helpers, ``loaded_gateway_tree``)
may be missing there, so a script loads it from its own folder by path with ``sibling``; the
script reaches this file by path too (``runpy.run_path``), an older tree has no copy of it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent


def sibling(name: str) -> ModuleType:
    """``bench/<name>.py`` of this checkout, loaded by its path and registered in ``sys.modules``
    as ``name`` (a dataclass looks its module up there), not as ``bench.<name>`` (that name may
    be the measured tree's module)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
