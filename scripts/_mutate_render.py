"""The mutation report (scripts/mutate.py --render, --readme): reports/mutation.md and the
README's per-module table, from reports/mutation.json and scripts/mutation-equivalents.toml."""

from __future__ import annotations

import tomllib
from typing import Any

from _mutate_base import EQUIVALENTS, ROOT
from _mutate_groups import BY_NAME, DEFAULT


def _reasons() -> dict[str, dict[str, str]]:
    """scripts/mutation-equivalents.toml: per kind (killed_by, equivalent, gap), mutant -> why."""
    return tomllib.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}


def score(mutants: list[dict[str, object]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for m in mutants:
        counts[str(m["status"])] = counts.get(str(m["status"]), 0) + 1
    return counts


def _changed_lines(diff: str) -> str:
    lines = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(lines)


def verdict(name: str, reasons: dict[str, dict[str, str]]) -> tuple[str, str]:
    """(kind, text) for a surviving mutant: killed_by, equivalent, gap or unexplained."""
    for kind in ("killed_by", "equivalent", "gap"):
        if name in reasons.get(kind, {}):
            return kind, reasons[kind][name]
    return "unexplained", ""


def _row(label: str, mutants: list[dict[str, Any]], reasons: dict[str, dict[str, str]], extra: str) -> str:
    c = score(mutants)
    k, s = c.get("killed", 0), c.get("survived", 0) + c.get("suspicious", 0)
    kinds = [
        verdict(str(m["name"]), reasons)[0] for m in mutants if m["status"] in ("survived", "suspicious")
    ]
    eq, added, gap = kinds.count("equivalent"), kinds.count("killed_by"), kinds.count("gap")
    raw = f"{100 * k / (k + s):.0f}%" if k + s else "-"
    # equivalents are not mutants a test could kill; tests added after the run count as kills
    adj = f"{100 * (k + added) / (k + s - eq):.0f}%" if k + s - eq else "-"
    return (
        f"| {label} | {len(mutants)} | {k} | {s} | {eq} | {added} | {gap} | {kinds.count('unexplained')} | "
        f"{c.get('no tests', 0)} | {c.get('timeout', 0)} | {c.get('not checked', 0)} | {raw} | {adj} |{extra}"
    )


def render(data: dict[str, dict[str, Any]]) -> str:
    reasons = _reasons()
    head = (
        "| module | mutants | killed | survived | equivalent | killed by a test added since | gap | "
        "unexplained | no tests | timeout | not checked | raw score | score |"
    )
    lines = [
        "# Mutation report",
        "",
        "Produced by `make mutate` (scripts/mutate.py, mutmut). raw score = killed / (killed + survived);",
        "score = (killed + killed by a test added since the run) / (killed + survived - equivalent).",
        'Survivors are accounted for in scripts/mutation-equivalents.toml. "no tests" = no test of the',
        "group's in-process set calls that function (reached only through a `symbi` subprocess, which",
        'mutmut cannot attribute, or not tested); they are in the JSON, not listed here. "not checked"',
        "= the run was stopped before it reached them (a partial run).",
        "",
        head + " group | minutes | commit |",
        "| --- " * 16 + "|",
    ]
    for name, g in data.items():
        files = sorted({str(m["file"]) for m in g["mutants"]})
        for f in files:
            ms = [m for m in g["mutants"] if m["file"] == f]
            lines.append(_row(f, ms, reasons, f" {name} | {int(g['seconds']) // 60} | {g['commit']} |"))
    lines += ["", "Not run yet: " + (", ".join(n for n in BY_NAME if n not in data) or "none"), ""]
    lines += cost_table(data)
    for name, g in data.items():
        lines += _survivors(name, g, reasons)
    return "\n".join(lines) + "\n"


def _survivors(name: str, g: dict[str, Any], reasons: dict[str, dict[str, str]]) -> list[str]:
    """The report's section on a group's surviving mutants: each with its verdict and diff."""
    surv = [m for m in g["mutants"] if m["status"] in ("survived", "suspicious")]
    lines = [f"## {name}: surviving mutants ({len(surv)})", "", f"Tests: {' '.join(g['tests'])}", ""]
    if g.get("note"):
        lines += [f"Note: {g['note']}", ""]
    for m in surv:
        kind, text = verdict(str(m["name"]), reasons)
        label = {
            "killed_by": f"killed by {text} (added after this run)",
            "equivalent": f"equivalent: {text}",
            "gap": f"GAP (not closed): {text}",
            "unexplained": "UNEXPLAINED",
        }[kind]
        lines += [
            f"- `{m['name']}` ({m['status']}): {label}",
            "",
            "```diff",
            _changed_lines(str(m.get("diff", ""))),
            "```",
            "",
        ]
    return lines


def group_cpu(g: dict[str, Any]) -> tuple[int | None, str]:
    """A full run's CPU-seconds for the group: measured (its last run was whole and timed) or
    estimated from a sampled run (--sample); None if neither."""
    c = score(g["mutants"])
    whole = (
        g.get("cpu_s") is not None and not c.get("not checked") and "Re-checked" not in str(g.get("note", ""))
    )
    if whole:
        return int(g["cpu_s"]), "measured"
    if g.get("whole_cpu_s") is not None:  # the last whole run's, kept through later re-checks
        return int(g["whole_cpu_s"]), "measured"
    est = (g.get("cost_sample") or {}).get("estimate_cpu_s")
    return (int(est), "estimated") if est is not None else (None, "")


def cost_table(data: dict[str, dict[str, Any]]) -> list[str]:
    """Per group: its runs' cost in CPU-seconds, measured or estimated from a sample, and the
    default run's total as CPU-seconds / 2 (its wall time on this 2-core machine when idle)."""
    lines = [
        "## Cost per group",
        "",
        "CPU-seconds (user + system) of mutmut and the test processes it forked, not counting the",
        "containers dockerd runs for the sandbox tiers. A full run's CPU-seconds are measured when the",
        "group's last run was whole, else estimated from `--sample N` (N random mutants by name): set-up",
        "(mutmut's stats and clean-test runs) + CPU per mutant x the mutants that have tests. idle wall =",
        "CPU-seconds / 2: the wall time on this 2-core machine with nothing else running (2 mutants at",
        "a time, CPU-bound). Wall minutes measured on the shared machine are longer and say little.",
        "",
        "| group | in default | mutants | with tests | last run: wall min | last run: cpu_s | sample: mutants "
        "| sample: set-up cpu_s | sample: cpu_s per mutant | full run cpu_s | idle wall min |",
        "| --- " * 11 + "|",
    ]
    for name, g in data.items():
        cpu, how = group_cpu(g)
        sample = g.get("cost_sample") or {}
        with_tests = sum(1 for m in g["mutants"] if m["status"] != "no tests")
        lines.append(
            f"| {name} | {'yes' if name in DEFAULT else 'no'} | {len(g['mutants'])} | {with_tests} | "
            f"{int(g['seconds']) // 60} | {g.get('cpu_s') if g.get('cpu_s') is not None else '-'} | "
            f"{sample.get('mutants_run', '-')} | {sample.get('setup_cpu_s', '-')} | "
            f"{sample.get('cpu_s_per_mutant', '-')} | {f'{cpu} ({how})' if cpu is not None else '-'} | "
            f"{f'{cpu / 120:.0f}' if cpu is not None else '-'} |"
        )
    return [*lines, "", default_cost(data), ""]


def default_cost(data: dict[str, dict[str, Any]]) -> str:
    """One line: the default run's CPU-seconds (measured or estimated per group) and idle wall."""
    parts, total = [], 0
    for name in DEFAULT:
        cpu, how = group_cpu(data[name]) if name in data else (None, "")
        if cpu is None:
            return f"Default `make mutate` ({', '.join(DEFAULT)}): not measured or estimated for {name} yet."
        total += cpu
        parts.append(f"{name} {cpu}{'' if how == 'measured' else ' est.'}")
    return (
        f"Default `make mutate`: {total} CPU-seconds ({', '.join(parts)}): {total / 120:.0f} min of wall"
        " time on this 2-core machine when idle if the runs were CPU-bound. That is a lower bound: the"
        " tests' waits (request timeouts, sleeps, container starts) and the containers' own CPU (run by"
        " dockerd, not counted) add to it: the policy group's cache-defeating mutants wait for their"
        " timeouts, sandbox-limits for its containers. The README's Mutation score section gives the"
        " last run of the whole default timed end to end."
    )


README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- mutation-table: scripts/mutate.py --readme -->", "<!-- /mutation-table -->"


def readme_table(data: dict[str, dict[str, Any]]) -> str:
    """The README's per-module table (between its markers), from the same JSON as the report."""
    reasons = _reasons()
    lines = [
        "| module | group (minutes) | mutants | killed | survived: equivalent / gap / unexplained "
        "| no tests | timeout | not checked | score | raw | run on |",
        "| --- " * 11 + "|",
    ]
    for name, g in data.items():
        for f in sorted({str(m["file"]) for m in g["mutants"]}):
            ms = [m for m in g["mutants"] if m["file"] == f]
            c = score(ms)
            k, s = c.get("killed", 0), c.get("survived", 0) + c.get("suspicious", 0)
            kinds = [
                verdict(str(m["name"]), reasons)[0] for m in ms if m["status"] in ("survived", "suspicious")
            ]
            eq, added, gap = kinds.count("equivalent"), kinds.count("killed_by"), kinds.count("gap")
            more = f" (+{added} killed by tests added since)" if added else ""
            raw = f"{100 * k / (k + s):.0f}%" if k + s else "-"
            adj = f"{100 * (k + added) / (k + s - eq):.0f}%" if k + s - eq else "-"
            lines.append(
                f"| {f} | {name} ({int(g['seconds']) // 60}) | {len(ms)} | {k} | {s}: {eq} / {gap} / "
                f"{kinds.count('unexplained')}{more} | {c.get('no tests', 0)} | {c.get('timeout', 0)} | "
                f"{c.get('not checked', 0)} | {adj} | {raw} | {g['commit']} |"
            )
    missing = [n for n in BY_NAME if n not in data]
    lines += ["", "Not run yet: " + (", ".join(missing) or "none"), "", default_cost(data)]
    return "\n".join(lines)


def update_readme(data: dict[str, dict[str, Any]]) -> None:
    text = README.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    README.write_text(text[:start] + "\n" + readme_table(data) + "\n" + text[end:])
