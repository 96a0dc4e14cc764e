"""Sizes in the config: ``"1GB"``, ``"512MiB"``, ``"64 MB"`` or a number of bytes."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(value: object) -> int:
    """``"1GB"``, ``"512MiB"``, ``"64 MB"`` or a number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as "1GB" or a number of bytes')  # noqa: TRY004 - pydantic reports ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
    raise ValueError(f'{value!r} is not a size (use e.g. "1GB", "256MB", "64MiB" or a number of bytes)')
