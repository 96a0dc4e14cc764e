"""The bus's quotas in-process: a body is at most ``bus.max_body_bytes`` in its compact UTF-8
JSON form (what is encrypted), and must be JSON; a TTL is bounded by ``bus.max_age_s``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing
from gateway.bus.embedded import EmbeddedBackend
from gateway.context import Principal
from gateway.errors import ArgumentsInvalid, BusBufferFull
from tests.bus.test_core import Env, Recorder, _pair, env  # noqa: F401 - the backends' fixture

pytestmark = pytest.mark.anyio

A = Principal(id="team", agent="agent-a", source="key")
B = Principal(id="team", agent="agent-b", source="key")
# separators and a non-ASCII character: the compact UTF-8 form is what counts
BODY = {"k": ["é", 1]}
SIZE = len(json.dumps(BODY, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _bus(tmp_path: Path, max_body_bytes: int) -> Bus:
    backend = EmbeddedBackend(tmp_path / "bus.db")
    await backend.start()
    bus = Bus(
        backend, KeyRing(b"k" * 32, None), events=Recorder(), buffer_size=10, max_body_bytes=max_body_bytes
    )
    await bus.register("agent-b", "key:team")
    return bus


async def test_a_body_of_exactly_the_limit_passes_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    bus = await _bus(tmp_path, SIZE)
    await bus.send(A, "agent-b", BODY)
    assert [r.body for r in await bus.receive(B)] == [BODY]
    over = await _bus(tmp_path / "over", SIZE - 1)
    with pytest.raises(ArgumentsInvalid):
        await over.send(A, "agent-b", BODY)
    with pytest.raises(ArgumentsInvalid):
        await over.publish(A, "news", BODY)
    assert await over.receive(B) == []


async def test_a_body_that_is_not_json_is_refused(tmp_path: Path) -> None:
    bus = await _bus(tmp_path, 1000)
    with pytest.raises(ArgumentsInvalid):
        await bus.send(A, "agent-b", {1, 2})
    with pytest.raises(ArgumentsInvalid):
        await bus.send(A, "agent-b", object())
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(ArgumentsInvalid):  # json's ValueError
        await bus.send(A, "agent-b", circular)
    assert await bus.receive(B) == []


async def test_a_refused_message_is_counted_once_as_buffer_full(env: Env) -> None:  # noqa: F811
    """Both backends: one refusal, one count (Redis's enqueue counted it a second time)."""
    bus = await _pair(env, buffer_size=1)
    await bus.send(A, "agent-b", 1)
    with pytest.raises(BusBufferFull):
        await bus.send(A, "agent-b", 2)
    counters = (await bus.backend.stats())["counters"]
    assert isinstance(counters, dict) and (counters["sent"], counters["buffer_full"]) == (1, 1)
