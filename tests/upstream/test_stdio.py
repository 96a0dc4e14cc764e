"""The stdio writers' coalescing (``with_waiting``): messages already waiting leave together,
in order, bounded; a lone message is not held back."""

from __future__ import annotations

import anyio
import pytest

from gateway.upstream import stdio
from gateway.upstream.stdio import with_waiting

pytestmark = pytest.mark.anyio


async def test_waiting_messages_are_taken_in_order_and_a_lone_one_at_once() -> None:
    send, receive = anyio.create_memory_object_stream[int](0)
    taken: list[list[int]] = []
    async with send, receive, anyio.create_task_group() as tg:
        for i in range(5):  # five senders parked on the zero-buffer stream, as concurrent replies are
            tg.start_soon(send.send, i)
        await anyio.wait_all_tasks_blocked()
        first = await receive.receive()
        taken.append(with_waiting(first, receive))
        with anyio.fail_after(5):  # a lone message: nothing waits for a batch to fill
            tg.start_soon(send.send, 99)
            taken.append(with_waiting(await receive.receive(), receive))
    assert taken == [[0, 1, 2, 3, 4], [99]]


async def test_a_batch_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio, "_COALESCE_MAX", 3)
    send, receive = anyio.create_memory_object_stream[int](10)
    async with send, receive:
        for i in range(7):
            send.send_nowait(i)
        batches = [with_waiting(receive.receive_nowait(), receive) for _ in range(3)]
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


async def test_a_closed_stream_ends_the_batch() -> None:
    send, receive = anyio.create_memory_object_stream[int](10)
    async with receive:
        send.send_nowait(1)
        send.send_nowait(2)
        send.close()
        assert with_waiting(receive.receive_nowait(), receive) == [1, 2]
