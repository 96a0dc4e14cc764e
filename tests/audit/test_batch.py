"""A batch's rows as the writer makes them: ids, canonical bytes and chain hashes, and the
multi-row inserts that store them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import store
from gateway.audit.batch import Item, chain_rows, new_ids
from gateway.audit.record import GENESIS_HASH, canonical_details, chain_hash, record_bytes
from gateway.audit.writer import INSERT_CHUNK, INSERT_EXACT, insert_rows

# names with what JSON must escape: quotes, backslashes, control characters, non-ASCII, a surrogate pair
_names = st.one_of(
    st.none(), st.sampled_from(["alice", 'a"b', "c\\d", "e\nf", "\u00e9\u4e2d", "\U0001f600"]), st.text()
)


def _items(draw_principals: list[str | None], agents: list[str | None], types: list[str]) -> list[Item]:
    return [
        Item(
            "event",
            t,
            canonical_details({"i": i, "s": 'x\u00e9"\\'}),
            p,
            a,
            "" if i % 3 else f"given-id-{i}\u00e9",  # ids the writer assigns, and ids already set
            1_700_000_000_000_000_000 + i,
        )
        for i, (p, a, t) in enumerate(zip(draw_principals, agents, types, strict=True))
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_names, _names, st.text(min_size=1)), min_size=1, max_size=12),
    st.sampled_from([GENESIS_HASH, "ab" * 32]),
    st.integers(min_value=0, max_value=2**40),
)
def test_every_row_hashes_its_record_bytes_and_links_the_one_before(
    fields: list[tuple[str | None, str | None, str]], prev: str, seq: int
) -> None:
    principals, agents, types = (list(x) for x in zip(*fields, strict=True))
    items = _items(principals, agents, types)
    rows = chain_rows(items, seq, prev, "ed25519:0123")
    for row, it in zip(rows, items, strict=True):
        seq += 1
        canon = record_bytes(
            seq=seq,
            id=it.id,
            ts_ns=it.ts_ns,
            principal=it.principal,
            agent=it.agent,
            type=it.type,
            details_json=it.details_json,
            prev_hash=prev,
            key_id="ed25519:0123",
        )
        expected = (seq, it.id, it.ts_ns, it.principal, it.agent, it.type, it.details_json, prev)
        assert row[:8] == expected
        assert row[8] == chain_hash(prev, canon)
        assert row[9:] == ("", "ed25519:0123")
        prev = row[8]


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17, 256, 500])  # formatted one by one, and strided
def test_ids_are_distinct_uuid4_strings(n: int) -> None:
    ids = new_ids(n)
    assert len(set(ids)) == n
    for i in ids:
        u = uuid.UUID(i)
        assert str(u) == i and u.version == 4 and u.variant == uuid.RFC_4122


@pytest.mark.parametrize(
    "n",
    [
        1,
        2,
        3,
        INSERT_EXACT,
        INSERT_EXACT + 1,
        INSERT_CHUNK - 1,
        INSERT_CHUNK,
        INSERT_CHUNK + 1,
        3 * INSERT_CHUNK + 7,
        256,
    ],
)
def test_rows_are_inserted_whole_and_in_order_whatever_their_number(tmp_path: Path, n: int) -> None:
    conn = store.open_writer(tmp_path / "a.db")
    items = _items(["alice"] * n, [None] * n, ["tool.call"] * n)
    rows = chain_rows(items, 0, GENESIS_HASH, "ed25519:0123")
    conn.execute("BEGIN IMMEDIATE")
    insert_rows(conn, rows)
    conn.execute("COMMIT")
    stored = [tuple(r) for r in store.iter_records(conn)]
    conn.close()
    assert stored == rows


@pytest.mark.parametrize(
    ("n", "statements"), [(1, 1), (3, 1), (INSERT_EXACT, 1), (INSERT_EXACT + 1, 2), (INSERT_CHUNK + 3, 2)]
)
def test_a_small_batch_is_inserted_by_one_statement(tmp_path: Path, n: int, statements: int) -> None:
    """A sequential call's commit (its record and two agent.state flips) is one INSERT, not 2 + 1."""
    conn = store.open_writer(tmp_path / "a.db")
    rows = chain_rows(_items(["alice"] * n, [None] * n, ["tool.call"] * n), 0, GENESIS_HASH, "ed25519:0123")
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    conn.execute("BEGIN IMMEDIATE")
    insert_rows(conn, rows)
    conn.execute("COMMIT")
    conn.close()
    assert sum(t.startswith("INSERT INTO events") for t in traced) == statements


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=2**62), min_size=1, max_size=16),
    st.integers(min_value=0, max_value=2**62),
)
def test_a_clock_that_steps_back_never_stamps_a_record_before_the_one_before(
    stamps: list[int], floor: int
) -> None:
    """Queries read a time window as a seq range (store.seq_from): the rows' ts_ns never decrease,
    from the head's (floor) on, and the chain hash covers the time stamped, not the event's."""
    items = [Item("event", "tool.call", "{}", None, None, "", ts) for ts in stamps]
    rows = chain_rows(items, 0, GENESIS_HASH, "ed25519:0123", floor)
    prev, expected = GENESIS_HASH, floor
    for seq, (row, ts) in enumerate(zip(rows, stamps, strict=True), 1):
        expected = max(expected, ts)
        assert row[2] == expected
        canon = record_bytes(
            seq=seq,
            id=row[1],
            ts_ns=expected,
            principal=None,
            agent=None,
            type="tool.call",
            details_json="{}",
            prev_hash=prev,
            key_id="ed25519:0123",
        )
        assert row[8] == chain_hash(prev, canon)
        prev = row[8]
