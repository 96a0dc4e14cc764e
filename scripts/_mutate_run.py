"""Running one mutation group (scripts/mutate.py): a scratch copy of the tracked tree with the
group's mutmut config, mutmut run in it (timed, in CPU-seconds, and stopped past --timeout),
and its mutants' statuses and survivors' diffs read back."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from _mutate_base import ALSO_COPY, LINKED, ROOT, Group


def _toml_list(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(group: Group, scratch: Path) -> None:
    """A scratch copy of the tracked tree (as in the working tree) with this group's config."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.split(
        b"\0"
    )
    for rel in (f.decode() for f in files if f):
        src = ROOT / rel
        if src.is_symlink() or not src.is_file():
            continue  # node_modules symlinks etc. are linked below, deleted files skipped
        dst = scratch / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    (scratch / "mutants").mkdir()
    for name in LINKED:
        target = Path("/work/main") / name if not (ROOT / name).exists() else (ROOT / name).resolve()
        for where in (scratch, scratch / "mutants"):
            link = where / name
            if not link.exists():
                link.symlink_to(target)
    packages = sorted({m.split("/")[0] for m in group.mutate} | {"gateway", "schemapin"})
    pyproject = scratch / "pyproject.toml"
    text = re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject.read_text())
    text += (
        "\n[tool.mutmut]\n"
        f"source_paths = {_toml_list(packages)}\n"  # whole packages, else imports break
        f"only_mutate = {_toml_list(group.mutate)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(group.tests)}\n"
        f"also_copy = {_toml_list(ALSO_COPY)}\n"
        'pytest_add_cli_args = ["-q", "-p", "no:cacheprovider", "-p", "no:randomly"]\n'
        + (f"timeout_multiplier = {group.timeout_multiplier}\n" if group.timeout_multiplier else "")
    )
    pyproject.write_text(text)


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def _tests_tmp(scratch: Path) -> Path | None:
    """The tests' TMPDIR (their tmp_path: audit logs, memory stores, key files) on tmpfs.

    The tests fsync (the audit store's synchronous=FULL, the memory store's flushes) and make
    and delete many files; on this machine's shared disk that made a mutant's run I/O-bound
    (the memory tests: 78-93 s wall on /tmp, 13-21 s on /dev/shm, for the same 9 CPU-seconds).
    What the tests check does not depend on the medium (the durability test counts the fsync
    calls with strace, which tmpfs receives too). SYMBI_MUTATE_TMP=DIR overrides, "" = the
    system's TMPDIR."""
    base = os.environ.get("SYMBI_MUTATE_TMP", "/dev/shm")
    if not base or not Path(base).is_dir():
        return None
    d = Path(base) / f"symbi-mutate-tmp-{os.getpid()}-{scratch.name}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _proc_cpu(pid: int) -> float | None:
    """CPU-seconds of a running process and its reaped children so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _children_cpu() -> float:
    """User + system CPU-seconds of this process's reaped descendants (mutmut and its forks).
    Not counted: containers (run by dockerd, not our children) and forks a stopped run left."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


STOPPED = -9  # mutmut_exit of a run stopped by --timeout


def _mutmut_env(group: Group, tests_tmp: Path | None) -> dict[str, str]:
    """mutmut's environment: ours without PYTHONPATH (the tests import the mutants), the tests'
    TMPDIR, the group's own settings, and unbuffered output (read while it runs)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # import the mutants
    if tests_tmp is not None:
        env["TMPDIR"] = str(tests_tmp)
    env.update(group.env)
    env["PYTHONUNBUFFERED"] = "1"  # its "Running mutation testing" line marks the end of set-up
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop mutmut and every process it forked (its own process group)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _watch(
    proc: subprocess.Popen[bytes], log_path: Path, start: float, timeout_s: float | None
) -> tuple[bool, float | None]:
    """Wait for mutmut, noting its CPU-seconds when set-up ends; stop it past ``timeout_s``.
    (stopped, set-up CPU-seconds or None if it never reached the mutants)."""
    setup_cpu: float | None = None
    seen = 0
    while proc.poll() is None:
        time.sleep(1)
        if setup_cpu is None:  # the stats and clean-test runs are done: mutmut's set-up cost
            with log_path.open("rb") as log:
                log.seek(max(seen - 64, 0))
                chunk = log.read()
                seen += len(chunk)
            if b"Running mutation testing" in chunk:
                setup_cpu = _proc_cpu(proc.pid)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            _stop(proc)
            return True, setup_cpu
    return False, setup_cpu


def _run_mutmut(
    group: Group, scratch: Path, max_children: int, timeout_s: float | None, names: list[str] | None
) -> None:
    """One mutmut run in a fresh scratch copy; its wall time, exit, commit and CPU-seconds go
    to scratch/seconds (read by _read_seconds, also after the fact by --collect)."""
    prepare(group, scratch)
    commit = _head()  # the tree the run starts from (HEAD may move while it runs)
    tests_tmp = _tests_tmp(scratch)
    env = _mutmut_env(group, tests_tmp)
    start = time.monotonic()
    cpu_before = _children_cpu()
    if names is not None:
        (scratch / "names").write_text("\n".join(names) + "\n")
    argv = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    with (scratch / "mutmut.log").open("w") as out:
        # its own process group, so a run past --timeout is stopped whole (mutmut forks)
        proc = subprocess.Popen(
            [*argv, *(names if names is not None else group.only)],
            cwd=scratch,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stopped, setup_cpu = _watch(proc, scratch / "mutmut.log", start, timeout_s)
        if stopped:
            (scratch / "note").write_text(
                f"stopped by --timeout after {timeout_s:g} s: the mutants it had not reached are 'not checked'"
            )
        code = STOPPED if stopped else proc.wait()
    cpu = round(_children_cpu() - cpu_before)
    setup = -1 if setup_cpu is None else round(setup_cpu)
    (scratch / "seconds").write_text(f"{round(time.monotonic() - start)} {code} {commit} {cpu} {setup}")
    if tests_tmp is not None:
        shutil.rmtree(tests_tmp, ignore_errors=True)


def parse_seconds(text: str) -> tuple[int, int, str, int | None, int | None]:
    """(wall seconds, mutmut's exit, commit, CPU-seconds, set-up CPU-seconds) from a run's
    scratch/seconds; the last two are None in a file written before they were recorded, and
    set-up is None (-1 in the file) when mutmut never reached the mutants."""
    seconds, exit_code, commit, *rest = text.split()
    cpu_s = int(rest[0]) if rest else None
    setup_cpu_s = int(rest[1]) if len(rest) > 1 and int(rest[1]) >= 0 else None
    return int(seconds), int(exit_code), commit, cpu_s, setup_cpu_s


def _note(group: Group, scratch: Path) -> str:
    """The run's note (e.g. stopped by --timeout), the group's scope and its own note."""
    parts = (
        (scratch / "note").read_text().strip() if (scratch / "note").exists() else "",
        f"Only the mutants of {', '.join(group.only)}." if group.only else "",
        group.note,
    )
    return " ".join(n for n in parts if n)


def run_group(
    group: Group,
    scratch: Path,
    max_children: int,
    *,
    collect_only: bool = False,
    timeout_s: float | None = None,
    names: list[str] | None = None,
) -> dict[str, object]:
    if not collect_only:
        _run_mutmut(group, scratch, max_children, timeout_s, names)
    seconds_file = scratch / "seconds"
    if seconds_file.exists():
        seconds, exit_code, commit, cpu_s, setup_cpu_s = parse_seconds(seconds_file.read_text())
    else:  # the run was stopped: what it reached is in the .meta files, the rest is "not checked"
        seconds, exit_code, commit, cpu_s, setup_cpu_s = 0, -1, _head(), None, None
    mutants = collect(scratch)
    if group.only:
        mutants = [m for m in mutants if any(fnmatch.fnmatch(str(m["name"]), p) for p in group.only)]
    return {
        "mutate": list(group.mutate),
        "tests": list(group.tests),
        "seconds": seconds,
        # CPU-seconds (user + system) of mutmut and every test process it forked and reaped: on
        # a shared machine a better measure of the run's cost than wall time; cpu_s / 2 is the
        # wall time the run would take on this 2-core machine idle (2 children, CPU-bound)
        "cpu_s": cpu_s,
        "setup_cpu_s": setup_cpu_s,  # of cpu_s: mutmut's stats and clean-test runs before the mutants
        "mutmut_exit": exit_code,
        "commit": commit,  # of the tree the group ran on (plus uncommitted changes, if any)
        "mutants": mutants,
        # a run made otherwise than by this script (e.g. a re-check of named mutants) says so here
        "note": _note(group, scratch),
    }


STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    36: "timeout",
    37: "caught by type check",
    None: "not checked",
    -24: "timeout",
    24: "timeout",
    152: "timeout",
    255: "timeout",
}


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({n: get_diff_for_mutant(n, path=f) for n, f in json.load(sys.stdin)}))
"""


def collect(scratch: Path) -> list[dict[str, object]]:
    """Every mutant with its status and, if it survived, its diff (one mutmut process)."""
    out: list[dict[str, object]] = []
    for meta in sorted((scratch / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(scratch / "mutants"))[: -len(".meta")]
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out += [
            {"name": n, "file": source, "status": STATUS.get(c, "suspicious")}
            for n, c in sorted(codes.items())
        ]
    wanted = [[m["name"], m["file"]] for m in out if m["status"] not in ("killed", "no tests", "not checked")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        input=json.dumps(wanted),
        check=True,
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
    )
    diffs = json.loads(shown.stdout)
    for m in out:
        if m["name"] in diffs:
            m["diff"] = diffs[m["name"]]
    return out
