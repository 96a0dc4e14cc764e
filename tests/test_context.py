"""Call ids (``gateway.context.CallIds``): what the audit record's ``call_id`` needs of them,
each unique (within a process, across a fork, across processes) and a UUID's canonical text."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid

from gateway.context import CallContext, CallIds, Principal, new_call_id


def _is_canonical_uuid4(text: str) -> bool:
    u = uuid.UUID(text)
    return str(u) == text and u.version == 4 and u.variant == uuid.RFC_4122


def test_call_ids_are_unique_canonical_uuid4_text() -> None:
    ids = [new_call_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(_is_canonical_uuid4(i) for i in ids)
    contexts = [CallContext(principal=Principal(id="p"), kind="tools/call", target="t") for _ in range(3)]
    assert len({c.call_id for c in contexts}) == 3
    assert all(_is_canonical_uuid4(c.call_id) for c in contexts)


def test_a_counter_at_its_end_draws_a_new_prefix_instead_of_repeating() -> None:
    ids = CallIds()
    ids._count = itertools.count((1 << 48) - 2)
    made = [ids() for _ in range(4)]
    assert made[0].endswith("-fffffffffffe") and made[1].endswith("-ffffffffffff")
    assert made[2].endswith("-000000000000") and made[3].endswith("-000000000001")
    assert made[2][:24] != made[1][:24]  # a new prefix, not the old one counted again
    assert len(set(made)) == 4 and all(_is_canonical_uuid4(i) for i in made)


def test_a_forked_child_never_makes_its_parents_ids() -> None:
    new_call_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write_end, " ".join(new_call_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as r:
        child = r.read().split()
    os.waitpid(pid, 0)
    parent = [new_call_id() for _ in range(3)]
    assert len(child) == 3 and all(_is_canonical_uuid4(i) for i in child)
    assert not set(child) & set(parent)
    assert child[0][:24] != parent[0][:24]


def test_two_processes_draw_different_prefixes() -> None:
    code = "from gateway.context import new_call_id; print(new_call_id())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first, second = (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
        for _ in range(2)
    )
    assert _is_canonical_uuid4(first) and _is_canonical_uuid4(second)
    assert first.endswith("-000000000000") and second.endswith("-000000000000")
    assert first != second
