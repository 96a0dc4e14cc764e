"""Rename the keys of scripts/mutation-equivalents.toml after code moved (a split function or
module, a renamed helper): mutmut names a mutant by its function and a number, so a move
renumbers or renames the mutants the file accounts for.

Each mutant of the old and the new source is identified by its (original, mutated) code
(whitespace and trailing commas ignored, optional renames applied); old and new sequences
are aligned per function, in order (difflib), first with the function of the same name,
then with the others (what moved). Keys that have no counterpart are listed and left as
they are (the mutation is gone or changed: look at it by hand).

    git show HEAD~1:gateway/x.py > /tmp/old_x.py
    python scripts/mutation_remap.py gateway.x=/tmp/old_x.py gateway.x=gateway/x.py \\
        gateway.y=gateway/y.py [--rename 'self._a=>a'] [--dry-run]

The first MODULE=PATH is the old source; the others are where its code is now.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOML = ROOT / "scripts" / "mutation-equivalents.toml"

Sig = tuple[str, str]


def mutants(path: str, renames: list[tuple[str, str]]) -> list[tuple[str, Sig]]:
    """(mutmut's key without the module, signature) of every mutant of ``path``, in order."""
    import libcst as cst
    from mutmut.mutation.file_mutation import create_mutations

    module, muts, _, _ = create_mutations(path, Path(path).read_text())
    owner: dict[int, str] = {}
    for st in module.body:
        if isinstance(st, cst.FunctionDef):
            owner[id(st)] = f"x_{st.name.value}"
        elif isinstance(st, cst.ClassDef):
            for b in st.body.body:
                if isinstance(b, cst.FunctionDef):
                    owner[id(b)] = f"xǁ{st.name.value}ǁ{b.name.value}"
    count: collections.Counter[str] = collections.Counter()
    out = []
    for m in muts:
        f = m.contained_by_top_level_function
        if f is None or id(f) not in owner:
            continue
        base = owner[id(f)]
        count[base] += 1
        sig = (
            _norm(module.code_for_node(m.original_node), renames),
            _norm(module.code_for_node(m.mutated_node), renames),
        )
        out.append((f"{base}__mutmut_{count[base]}", sig))
    return out


def _norm(code: str, renames: list[tuple[str, str]]) -> str:
    for a, b in renames:
        code = code.replace(a, b)
    return re.sub(r",(?=[)\]])", "", re.sub(r"\s+", "", code))


def _function(key: str) -> str:
    return key.rsplit("__mutmut_", 1)[0]


def _name(key: str) -> str:
    return _function(key).split(".")[-1].split("ǁ")[-1].removeprefix("x_")


def remap(old: list[tuple[str, Sig]], new: list[tuple[str, Sig]]) -> dict[str, str | None]:
    by_old: dict[str, list[tuple[str, Sig]]] = collections.defaultdict(list)
    by_new: dict[str, list[tuple[str, Sig]]] = collections.defaultdict(list)
    for k, s in old:
        by_old[_function(k)].append((k, s))
    for k, s in new:
        by_new[_function(k)].append((k, s))
    mapping: dict[str, str | None] = {}
    used: set[str] = set()

    def align(olds: list[tuple[str, Sig]], news: list[tuple[str, Sig]]) -> None:
        olds = [(k, s) for k, s in olds if k not in mapping]
        news = [(k, s) for k, s in news if k not in used]
        sm = difflib.SequenceMatcher(None, [s for _, s in olds], [s for _, s in news], autojunk=False)
        for blk in sm.get_matching_blocks():
            for i in range(blk.size):
                mapping[olds[blk.a + i][0]] = news[blk.b + i][0]
                used.add(news[blk.b + i][0])

    for fo, olds in by_old.items():  # the function of the same name first
        for fn, news in by_new.items():
            if _name(fn + "__") == _name(fo + "__"):
                align(olds, news)
    for olds in by_old.values():  # then what moved to another function
        for news in by_new.values():
            align(olds, news)
    for k, _ in old:
        mapping.setdefault(k, None)
    return mapping


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="MODULE=PATH of the old source")
    ap.add_argument("new", nargs="+", help="MODULE=PATH of each file the code is in now")
    ap.add_argument("--rename", action="append", default=[], help="'a=>b': code renamed by the move")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    renames = [tuple(r.split("=>", 1)) for r in args.rename]
    # mutmut wants a configured source path: run it from a scratch folder that has one
    with tempfile.TemporaryDirectory() as scratch:
        Path(scratch, "setup.cfg").write_text("[mutmut]\nsource_paths=.\n")
        specs = [(m, str(Path(p).resolve())) for m, p in (s.split("=", 1) for s in [args.old, *args.new])]
        here = os.getcwd()
        os.chdir(scratch)
        try:
            old = [(f"{specs[0][0]}.{k}", s) for k, s in mutants(specs[0][1], renames)]
            new = [(f"{m}.{k}", s) for m, p in specs[1:] for k, s in mutants(p, renames)]
        finally:
            os.chdir(here)
    mapping = remap(old, new)
    text = TOML.read_text()
    changed = missing = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal changed, missing
        key = m.group(1)
        if key not in mapping:
            return m.group(0)
        target = mapping[key]
        if target is None:
            missing += 1
            print(f"no counterpart: {key}")
            return m.group(0)
        if target != key:
            changed += 1
            print(f"{key} -> {target}")
        return f'"{target}" ='

    text = re.sub(r'^"([^"]+)" =', sub, text, flags=re.M)
    if not args.dry_run:
        TOML.write_text(text)
    print(f"{changed} keys renamed, {missing} without a counterpart", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
