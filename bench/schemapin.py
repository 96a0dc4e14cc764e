"""Benchmark: cost of schemapin's strict verification vs the bare primitives, in one run.

Run: .venv/bin/python bench/schemapin.py   (prints JSON)

Baseline (measured in the same run, same machine): the reference's algorithm written with the
bare primitives -- json.dumps canonical form + SHA-256 + cryptography ECDSA verify. The ratios
show what strict parsing, checks, and the SQLite pin store add on top of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import schemapin

TOOL_TEXT = (
    Path(__file__).resolve().parents[1] / "tests/assets/schemapin/tools/translate_text.json"
).read_text()


def per_second(fn: Callable[[], Any], min_time: float = 0.5) -> float:
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(50):
            fn()
        n += 50
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return n / elapsed


def main() -> int:
    key = schemapin.generate_private_key()
    pub = key.public_key()
    tool = schemapin.parse_json(TOOL_TEXT)
    sig = schemapin.sign_tool(tool, key)
    snap = schemapin.KeySnapshot.from_public_key(pub, domain="acme.example")

    def baseline_verify() -> None:
        obj = json.loads(TOOL_TEXT)
        c = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
        pub.verify(base64.b64decode(sig), hashlib.sha256(c).digest(), ec.ECDSA(hashes.SHA256()))

    def ours_verify() -> None:
        t = schemapin.parse_json(TOOL_TEXT)
        schemapin.verify_tool(t, sig, domain="acme.example", tool_id="translate_text", key_source=snap)

    def baseline_canon() -> None:
        json.dumps(json.loads(TOOL_TEXT), ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()

    def ours_canon() -> None:
        schemapin.canonicalize(schemapin.parse_json(TOOL_TEXT))

    with tempfile.TemporaryDirectory() as d:
        pins = schemapin.PinStore(Path(d) / "pins.db")

        def ours_verify_pinned() -> None:
            t = schemapin.parse_json(TOOL_TEXT)
            schemapin.verify_tool(
                t, sig, domain="acme.example", tool_id="translate_text", key_source=snap, pin_store=pins
            )

        ours_verify_pinned()  # first use
        results = {
            "baseline_canonical_per_s": per_second(baseline_canon),
            "canonical_strict_per_s": per_second(ours_canon),
            "baseline_verify_per_s": per_second(baseline_verify),
            "verify_tool_per_s": per_second(ours_verify),
            "verify_tool_pinned_per_s": per_second(ours_verify_pinned),
            "sign_tool_per_s": per_second(lambda: schemapin.sign_tool(tool, key)),
        }
        pins.close()
    results["canonical_overhead_ratio"] = (
        results["baseline_canonical_per_s"] / results["canonical_strict_per_s"]
    )
    results["verify_overhead_ratio"] = results["baseline_verify_per_s"] / results["verify_tool_per_s"]
    results["verify_pinned_overhead_ratio"] = (
        results["baseline_verify_per_s"] / results["verify_tool_pinned_per_s"]
    )
    print(json.dumps({k: round(v, 2) for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
