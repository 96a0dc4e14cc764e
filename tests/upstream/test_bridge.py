"""The era bridge's waiting calls (gateway/upstream/bridge.py), without a network.

``run`` stands in for the upstream call: it asks one question through ``ask`` (what the
upstream relay does with a 2025 server's sampling request) and returns what it was told.
The end-to-end path with real peers is tests/server/http/test_era_bridge.py.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import types

from gateway.errors import PolicyDenied, UpstreamError
from gateway.upstream.bridge import PendingQuestions

pytestmark = pytest.mark.anyio

QUESTION = types.ElicitRequest(
    params=types.ElicitRequestFormParams(
        message="name?", requested_schema={"type": "object", "properties": {}}
    )
)
ANSWER = types.ElicitResult(action="accept", content={"name": "Ada"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _asks_once(ask: Any) -> str:
    answer = await ask(QUESTION)
    return f"told {answer.content['name']}"


async def test_a_question_becomes_input_required_and_the_answer_resumes_the_call() -> None:
    pending = PendingQuestions(answer_timeout_s=10)
    async with anyio.create_task_group() as tg:
        first = await pending.start(tg, "alice", "ev__tool", _asks_once)
        assert isinstance(first, types.InputRequiredResult) and first.request_state
        assert pending.owns(first.request_state)
        (key,) = (first.input_requests or {}).keys()
        # someone else, or the same principal naming another tool, cannot answer it
        with pytest.raises(PolicyDenied):
            await pending.resume("bob", "ev__tool", first.request_state, {key: ANSWER})
        with pytest.raises(PolicyDenied):
            await pending.resume("alice", "ev__other", first.request_state, {key: ANSWER})
        assert await pending.resume("alice", "ev__tool", first.request_state, {key: ANSWER}) == "told Ada"
        # answered once: the state is spent
        assert not pending.owns(first.request_state)
        with pytest.raises(UpstreamError):
            await pending.resume("alice", "ev__tool", first.request_state, {key: ANSWER})
    assert len(pending) == 0


async def test_a_call_that_asks_nothing_returns_its_result() -> None:
    pending = PendingQuestions(answer_timeout_s=10)

    async def quiet(ask: Any) -> str:
        return "done"

    async with anyio.create_task_group() as tg:
        assert await pending.start(tg, "alice", "ev__tool", quiet) == "done"


async def test_an_unanswered_question_expires_and_the_upstream_gets_no_answer() -> None:
    pending = PendingQuestions(answer_timeout_s=0.2)
    outcome: list[Any] = []

    async def patient(ask: Any) -> str:
        try:
            await ask(QUESTION)
        except TimeoutError:
            outcome.append("timed out")
            raise
        return "answered"

    async with anyio.create_task_group() as tg:
        first = await pending.start(tg, "alice", "ev__tool", patient)
        assert isinstance(first, types.InputRequiredResult)
        await anyio.sleep(0.4)
    assert outcome == ["timed out"]
    pending._sweep()
    assert not pending.owns(first.request_state)
