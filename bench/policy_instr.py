"""Benchmark: instructions per evaluated policy decision (valgrind callgrind), per input class.

Deterministic where timings on a loaded machine are not: each policy decides every input of
``policies/cases.json`` (``EmbeddedEngine.decide``, cache off, as ``bench/policy.py``'s
``evaluated``) ``--repeat`` times between two ``getppid()`` marks, and callgrind
(``--dump-before=getppid``) dumps its count at each mark. JSON on stdout:

    .venv/bin/python bench/policy_instr.py [--before tests/policy/reference/policies_v6.rego]

Thousands of instructions per decision, the mean per class (tool calls by argument kind, the
other kinds) and over all cases, for the previous policy (``--before``) and ``policies.rego``,
same data, same process. Needs ``valgrind``; ~3 minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from typing import Any

from gateway.policy.cases import load_cases
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles, discover_files

CASES = ROOT / "policies" / "cases.json"
PATH_ARGS = ("path", "paths", "source", "destination")
URL_ARGS = ("url", "uri", "endpoint")


def input_class(inp: dict[str, Any]) -> str:
    kind = str(inp.get("kind"))
    args = inp.get("arguments")
    if kind != "tools/call" or not isinstance(args, dict):
        return kind
    return "tools/call" + "".join(
        tag for tag, names in (("+path", PATH_ARGS), ("+url", URL_ARGS)) if any(a in args for a in names)
    )


def child(policies: list[Path], repeat: int, labels: Path) -> None:
    """Under callgrind: the phases, one per (policy, case), between getppid() marks."""
    data = discover_files().data
    inputs = [c.input for c in load_cases(CASES)]
    engines = []
    for p in policies:
        eng = EmbeddedEngine(PolicyFiles(policy=p, data=data), cache_entries=0)
        if not eng.load():
            raise SystemExit(f"{p} does not load")
        for inp in inputs:  # warm: the thread's engine, lazily prepared rules
            eng.decide(inp)
        engines.append(eng)
    names = []
    for p, eng in zip(policies, engines, strict=True):
        for i, inp in enumerate(inputs):
            os.getppid()
            for _ in range(repeat):
                eng.decide(inp)
            names.append(f"{p}\t{i}")
    os.getppid()
    labels.write_text("\n".join(names) + "\n")


def totals(out: Path) -> list[int]:
    """Each dump's instruction count, in dump order (cg.out.1, cg.out.2, ...)."""
    dumps = sorted(out.glob("cg.out.*"), key=lambda f: int(f.suffix[1:]) if f.suffix[1:].isdigit() else -1)
    counts = []
    for f in dumps:
        for line in f.read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                counts.append(int(line.split()[1]))
                break
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--before", type=Path, default=ROOT / "tests" / "policy" / "reference" / "policies_v6.rego"
    )
    ap.add_argument("--repeat", type=int, default=3, help="decisions per case and phase")
    ap.add_argument("--child", nargs="*", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--labels", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.repeat, args.labels)
        return 0
    if shutil.which("valgrind") is None:
        print(json.dumps({"error": "valgrind is not installed"}))
        return 1
    policies = [args.before.resolve(), (ROOT / "policies.rego").resolve()]
    with tempfile.TemporaryDirectory() as tmp:
        out, labels = Path(tmp), Path(tmp) / "labels"
        env = {**os.environ, "PYTHONHASHSEED": "0", "RUST_LIB_BACKTRACE": "0"}  # as the gateway sets it
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=getppid",
            f"--callgrind-out-file={out}/cg.out",
            "-q",
        ]
        cmd += [sys.executable, __file__, "--repeat", str(args.repeat), "--labels", str(labels), "--child"]
        subprocess.run([*cmd, *map(str, policies)], env=env, check=True, stderr=subprocess.DEVNULL)
        counts, names = totals(out), labels.read_text().splitlines()
    # dump 1 is everything before the first mark; then one per phase
    per: dict[str, dict[int, float]] = {}
    for name, n in zip(names, counts[1 : 1 + len(names)], strict=True):
        pol, case = name.split("\t")
        per.setdefault(pol, {})[int(case)] = n / args.repeat / 1000
    classes: dict[str, list[int]] = {}
    for i, c in enumerate(load_cases(CASES)):
        classes.setdefault(input_class(c.input), []).append(i)
    before, after = (per[str(p)] for p in policies)
    table = {
        cls: {
            "cases": len(idx),
            "before_k": round(statistics.fmean(before[i] for i in idx), 1),
            "after_k": round(statistics.fmean(after[i] for i in idx), 1),
        }
        for cls, idx in sorted(classes.items(), key=lambda kv: -len(kv[1]))
    }
    mean_b, mean_a = statistics.fmean(before.values()), statistics.fmean(after.values())
    print(
        json.dumps(
            {
                "benchmark": "policy_instructions",
                "before_policy": str(args.before),
                "unit": "thousands of instructions per decision (set_input + eval + the engine's Python)",
                "classes": table,
                "all_cases": {"before_k": round(mean_b, 1), "after_k": round(mean_a, 1)},
                "ratio_after_over_before": round(mean_a / mean_b, 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
