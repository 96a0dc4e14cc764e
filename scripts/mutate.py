"""Mutation testing of the security-critical modules (`make mutate`; not part of `make test`).

Runs mutmut once per module group, each in a scratch copy of the tracked tree, with the
in-process tests that cover that group. mutmut picks the tests per mutated function from
the calls it sees in the pytest process, so code reached only through a `symbi`/gateway
subprocess shows up as "no tests": each group lists tests that call its code in-process.

Results accumulate in reports/mutation.json (one entry per group, replaced when the group
runs again) and reports/mutation.md is rendered from it. A surviving mutant is accounted
for in scripts/mutation-equivalents.toml: either the reason it is equivalent (cannot change
behaviour a test may observe) or the test added to kill it. Anything else is listed as
UNEXPLAINED, which is a hole to close.

    python scripts/mutate.py                 # every group
    python scripts/mutate.py steps auth      # some groups
    python scripts/mutate.py --list          # the groups
    python scripts/mutate.py --render        # re-render the report from the JSON
    python scripts/mutate.py runtime --recheck survived --recheck "not checked"  # continue a partial run
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

# the groups, running one, the report: siblings of this file, found next to it also when a
# driver loads it by its path (run as a script, its directory is sys.path[0] already)
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mutate_base import REPORT_JSON, REPORT_MD, ROOT
from _mutate_groups import BY_NAME, DEFAULT, GROUPS
from _mutate_render import group_cpu, render, score, update_readme
from _mutate_run import run_group


def merge_recheck(old: dict[str, Any], new: dict[str, Any], names: list[str], what: str) -> dict[str, Any]:
    """The group's earlier result with the named mutants' statuses from a by-name re-check
    (``--recheck``); a named mutant the re-check did not reach keeps its earlier status."""
    fresh = {
        str(m["name"]): m
        for m in new["mutants"]
        if _named(str(m["name"]), names) and m["status"] != "not checked"
    }
    known = {str(m["name"]) for m in old["mutants"]}
    # a --module run names a module's mutants by pattern: those new to the report are added
    merged = [fresh.get(str(m["name"]), m) for m in old["mutants"]] + [
        m for n, m in fresh.items() if n not in known
    ]
    before = score([m for m in old["mutants"] if m["name"] in fresh])
    after = score(list(fresh.values()))
    # a --module run names its modules by pattern: count the mutants, not the patterns
    counted = (
        f"the {len(fresh)} mutants {what}"
        if all(n.endswith(".*") for n in names)
        else f"{len(fresh)} of the {len(names)} mutants that were {what}"
    )
    note = (
        f"Re-checked by name at {new['commit']} ({int(new['seconds']) // 60} min, tests: {' '.join(new['tests'])}):"
        f" {counted}, {before} -> {after}."
    )
    commit = f"{old['commit']}+{new['commit']}" if new["commit"] not in str(old["commit"]) else old["commit"]
    cpu = (
        None
        if old.get("cpu_s") is None or new.get("cpu_s") is None
        else int(old["cpu_s"]) + int(new["cpu_s"])
    )
    whole_cpu, how = group_cpu(old)
    return {
        **old,
        "whole_cpu_s": whole_cpu if how == "measured" else None,
        "tests": new["tests"],
        "seconds": int(old["seconds"]) + int(new["seconds"]),
        "mutants": merged,
        "cpu_s": cpu,
        "commit": commit,
        "note": " ".join(n for n in (str(old.get("note", "")), note) if n),
    }


def _named(mutant: str, names: list[str]) -> bool:
    """Whether ``mutant`` is one of ``names`` (mutant names, or a module's ``pkg.mod.*``)."""
    return mutant in names or any(fnmatch.fnmatch(mutant, n) for n in names if n.endswith(".*"))


def sample_cost(old: dict[str, Any], new: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A full run's CPU-seconds estimated from a run of some of the group's mutants by name:
    set-up (stats + clean tests) + CPU per mutant x the mutants that have tests."""
    ran = [
        m
        for m in new["mutants"]
        if m["name"] in set(names) and m["status"] not in ("not checked", "no tests")
    ]
    cpu, setup = new.get("cpu_s"), new.get("setup_cpu_s")
    tested = sum(1 for m in old["mutants"] if m["status"] != "no tests")
    per = (int(cpu) - int(setup)) / len(ran) if cpu is not None and setup is not None and ran else None
    return {
        "commit": new["commit"],
        "mutants_run": len(ran),
        "seconds": new["seconds"],
        "cpu_s": cpu,
        "setup_cpu_s": setup,
        "cpu_s_per_mutant": None if per is None else round(per, 2),
        "mutants_with_tests": tested,
        "estimate_cpu_s": None if per is None else round(int(setup or 0) + per * tested),
        "statuses": score(ran),
    }


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("groups", nargs="*", help=f"group names (default: {' '.join(DEFAULT)})")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--render", action="store_true", help="only re-render reports/mutation.md")
    ap.add_argument("--readme", action="store_true", help="also rewrite the README's per-module table")
    ap.add_argument(
        "--collect", action="store_true", help="re-read the groups' last scratch runs, do not run"
    )
    ap.add_argument("--max-children", type=int, default=2, help="parallel mutant runs (2 cores here)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop a group's run after this many seconds (partial report)",
    )
    ap.add_argument(
        "--recheck",
        metavar="STATUS",
        action="append",
        default=None,
        help="run only the group's mutants that had this status in the report (e.g. survived, 'not checked'),"
        " by name, and merge their new statuses into the group's result (repeatable)",
    )
    ap.add_argument(
        "--sample",
        type=int,
        metavar="N",
        default=None,
        help="measure the group's cost only: run N of its mutants (random, seeded) by name and record"
        " CPU-seconds of set-up and per mutant, and the estimate for a full run (statuses untouched)",
    )
    ap.add_argument(
        "--module",
        metavar="PATH",
        action="append",
        default=None,
        help="run only the mutants of this file of the group (e.g. one just added to it), by name,"
        " and merge them into the group's result (repeatable)",
    )
    ap.add_argument("--scratch", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "symbi-mutate")
    return ap


def _load() -> dict[str, dict[str, Any]]:
    return json.loads(REPORT_JSON.read_text()) if REPORT_JSON.exists() else {}


def _save(data: dict[str, dict[str, Any]]) -> None:
    REPORT_JSON.parent.mkdir(exist_ok=True)
    REPORT_JSON.write_text(json.dumps(data, indent=1) + "\n")


def _names(
    ap: argparse.ArgumentParser, args: argparse.Namespace, name: str, data: dict[str, dict[str, Any]]
) -> tuple[list[str] | None, bool]:
    """(the mutants to run by name, None = all; whether there is nothing to run) for
    --sample (N of those with tests, seeded) or --recheck (those with the statuses named)."""
    if args.sample is not None:
        if name not in data:
            ap.error(f"--sample: group {name} has no result in {REPORT_JSON.name} yet")
        tested = sorted(str(m["name"]) for m in data[name]["mutants"] if m["status"] != "no tests")
        return random.Random(0).sample(tested, min(args.sample, len(tested))), False
    if args.module:
        if name not in data:
            ap.error(f"--module: group {name} has no result in {REPORT_JSON.name} yet")
        return [_module_pattern(ap, BY_NAME[name].mutate, m) for m in args.module], False
    if args.recheck:
        if name not in data:
            ap.error(f"--recheck: group {name} has no result in {REPORT_JSON.name} yet")
        names = [str(m["name"]) for m in data[name]["mutants"] if m["status"] in args.recheck]
        if not names:
            print(f"[mutate] {name}: no mutant is {' or '.join(args.recheck)}", flush=True)
        return names, not names
    return None, False


def _module_pattern(ap: argparse.ArgumentParser, paths: tuple[str, ...], module: str) -> str:
    """``gateway/textcheck.py`` -> ``gateway.textcheck.*`` (its mutants' names), if in the group."""
    if not any(fnmatch.fnmatch(module, p) for p in paths):
        ap.error(f"--module: {module} is not one of the group's files ({' '.join(paths)})")
    return module.removesuffix(".py").replace("/", ".") + ".*"


def _record(
    args: argparse.Namespace, name: str, result: dict[str, Any], names: list[str] | None
) -> dict[str, dict[str, Any]]:
    """Store a group's run in reports/mutation.json (its result, a re-check merged into the
    earlier one, or a sample's cost) and return the report's groups as they now are."""
    # read again: another group's run (another process) may have written its result since
    data = _load()
    if args.sample is not None and names is not None:
        if result.get("setup_cpu_s") is None:  # mutmut never reached the mutants
            print(f"[mutate] {name}: sample not run, see {args.scratch / name / 'mutmut.log'}")
            return data
        data[name]["cost_sample"] = sample_cost(data[name], result, names)
        print(f"[mutate] {name}: {data[name]['cost_sample']}", flush=True)
        REPORT_JSON.write_text(json.dumps(data, indent=1) + "\n")
        return data
    if names is not None:
        if all(m["status"] == "not checked" for m in result["mutants"] if _named(str(m["name"]), names)):
            # nothing re-checked (mutmut stopped at its clean run, or at once): keep the result
            print(f"[mutate] {name}: nothing re-checked, see {args.scratch / name / 'mutmut.log'}")
            return data
        what = " or ".join(args.recheck) if args.recheck else f"of {' '.join(args.module)}"
        result = merge_recheck(data[name], result, names, what)
    data[name] = result
    _save(data)
    return data


def _run(
    ap: argparse.ArgumentParser, args: argparse.Namespace, data: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Run the groups named (default: DEFAULT) one after the other; the report's groups after."""
    for name in args.groups or list(DEFAULT):
        print(f"[mutate] {name} ...", flush=True)
        names, nothing = _names(ap, args, name, data)
        if nothing:
            continue
        result: dict[str, Any] = run_group(
            BY_NAME[name],
            args.scratch / name,
            args.max_children,
            collect_only=args.collect,
            timeout_s=args.timeout,
            names=names,
        )
        print(
            f"[mutate] {name}: {score(result['mutants'])} in {result['seconds']} s ({result['cpu_s']} CPU-s)",
            flush=True,
        )
        data = _record(args, name, result, names)
    return data


def main() -> int:
    ap = _parser()
    args = ap.parse_args()
    if args.list:
        for g in GROUPS:
            print(f"{g.name}: {' '.join(g.mutate)}  <- {' '.join(g.tests)}")
        return 0
    unknown = [n for n in args.groups if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; see --list")
    data = _load()
    if not args.render:
        data = _run(ap, args, data)
    ordered = {n: data[n] for n in BY_NAME if n in data}
    REPORT_MD.write_text(render(ordered))
    if args.readme:
        update_readme(ordered)
    print(f"[mutate] report: {REPORT_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
