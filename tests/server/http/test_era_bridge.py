"""The bridge between the protocol eras, through the HTTP front with real peers.

- ``ev``: npm server-everything over stdio (2025-11-25 only): its ``trigger-sampling-request``
  sends ``sampling/createMessage`` to the client during the call. A 2026-era client cannot
  take a server→client request; the gateway hands it an input-required result instead and
  resumes the waiting upstream call with the answer.
- ``fx``: the conformance fixture over stdio with ``protocol = "auto"`` (2026-07-28): its
  ``test_input_required_result_elicitation`` answers with an input-required result. A
  2025-era client cannot read one; the gateway asks it with ``elicitation/create`` and
  retries the call with the answer.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import Client, ClientSession, MCPError, types
from mcp.client.streamable_http import streamable_http_client

from tests.conformance.test_conformance import FIXTURE
from tests.conftest import EVERYTHING_JS, POLICY, write_config
from tests.server.http.conftest import Running, bearer, roles_policy_data, run_server

pytestmark = [pytest.mark.anyio, pytest.mark.npm]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, dict[str, str]]]:
    from gateway.config import load_config
    from gateway.server.auth import ApiKeyStore

    tmp = tmp_path_factory.mktemp("bridge")
    roles_policy_data(tmp, {"user": {"tools": ["*"], "resources": ["**"], "prompts": ["**"]}}, ("ev", "fx"))
    cfg = write_config(
        tmp,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{tmp / "data.json"}"

        [sandbox]
        code_tools = false

        [bus]
        enabled = false

        [servers.ev]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"

        [servers.fx]
        command = "{sys.executable}"
        args = ["{FIXTURE}", "--stdio"]
        verification = "warn"
        protocol = "auto"
        """,
    )
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    keys = {"alice": store.create("alice", ("user",))[0], "bob": store.create("bob", ("user",))[0]}
    with run_server(cfg) as run:
        yield run, keys


async def _sample(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="Paris, said the LLM"), model="test-llm"
    )


async def _answers(result: types.InputRequiredResult) -> types.InputResponses:
    """Answers to each of ``result``'s input requests: the LLM's for sampling, no roots for a
    roots/list (server-everything asks for roots on its own schedule, into whichever call is
    waiting); any other kind fails the test."""
    answers: types.InputResponses = {}
    for key, request in (result.input_requests or {}).items():
        if isinstance(request, types.CreateMessageRequest):
            answers[key] = await _sample(None, request.params)
        elif isinstance(request, types.ListRootsRequest):
            answers[key] = types.ListRootsResult(roots=[])
        else:
            pytest.fail(f"unexpected input request {request!r}")
    return answers


async def test_a_2026_client_answers_a_2025_upstreams_sampling_request(
    gw: tuple[Running, dict[str, str]],
) -> None:
    run, keys = gw
    async with contextlib.AsyncExitStack() as stack:
        hc = await stack.enter_async_context(httpx2.AsyncClient(headers=bearer(keys["alice"]), timeout=60))
        c = await stack.enter_async_context(
            Client(
                streamable_http_client(run.mcp, http_client=hc), mode="2026-07-28", sampling_callback=_sample
            )
        )
        assert c.protocol_version == "2026-07-28"
        args = {"prompt": "capital of France?", "maxTokens": 20}
        # what the wire carries: an input-required result with the upstream's sampling request
        first = await c.session.call_tool("ev__trigger-sampling-request", args, allow_input_required=True)
        for _ in range(3):  # server-everything asks for roots when it pleases: alone, before it
            assert isinstance(first, types.InputRequiredResult) and first.request_state, first
            asked = [
                r for r in (first.input_requests or {}).values() if not isinstance(r, types.ListRootsRequest)
            ]
            if asked:
                break
            first = await c.session.call_tool(
                "ev__trigger-sampling-request",
                args,
                allow_input_required=True,
                input_responses=await _answers(first),
                request_state=first.request_state,
            )
        assert isinstance(first, types.InputRequiredResult)
        (request,) = asked  # the upstream's sampling request, nothing else but roots beside it
        assert isinstance(request, types.CreateMessageRequest)
        # another principal cannot answer (or steal the result of) Alice's waiting call
        async with (
            httpx2.AsyncClient(headers=bearer(keys["bob"]), timeout=60) as bob_hc,
            Client(streamable_http_client(run.mcp, http_client=bob_hc), mode="2026-07-28") as bob,
        ):
            stolen = await bob.session.call_tool(
                "ev__trigger-sampling-request",
                args,
                allow_input_required=True,
                input_responses=await _answers(first),
                request_state=first.request_state,
            )
            assert isinstance(stolen, types.CallToolResult) and stolen.is_error
            assert (stolen.meta or {})["symbi/error"]["code"] == "policy_denied"
        pending = first
        for _ in range(3):  # the sampling answer, then at most a late roots/list or two
            final = await c.session.call_tool(
                "ev__trigger-sampling-request",
                args,
                allow_input_required=True,
                input_responses=await _answers(pending),
                request_state=pending.request_state,
            )
            if not isinstance(final, types.InputRequiredResult):
                break
            assert all(
                isinstance(r, types.ListRootsRequest) for r in (final.input_requests or {}).values()
            ), final
            pending = final
        assert isinstance(final, types.CallToolResult) and not final.is_error, final
        assert "Paris, said the LLM" in json.dumps(final.model_dump(mode="json"))
        # and the SDK's own driver does the same loop by itself
        res = await c.call_tool("ev__trigger-sampling-request", args)
        assert not res.is_error and "Paris, said the LLM" in json.dumps(res.model_dump(mode="json"))
    # on the record: the upstream's question was bridged, for Alice's call
    assert any(e["principal"] == "alice" for e in _bridged(run, "2025-upstream-to-2026-client"))


async def test_a_2025_client_answers_a_2026_upstreams_input_required_result(
    gw: tuple[Running, dict[str, str]],
) -> None:
    run, keys = gw
    asked: list[str] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada", "context": "the 1840s"})

    async with (
        httpx2.AsyncClient(headers=bearer(keys["alice"]), timeout=60) as hc,
        streamable_http_client(run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w, elicitation_callback=elicit) as s,
    ):
        await s.initialize()
        assert s.protocol_version == "2025-11-25"
        res = await s.call_tool("fx__test_input_required_result_elicitation", {})
        assert not res.is_error, res
        assert res.content[0].text == "Hello, Ada!"  # type: ignore[union-attr]
        assert asked == ["What is your name?"]
        # prompts/get: the same loop
        prompt = await s.get_prompt("fx__test_input_required_result_prompt")
        assert isinstance(prompt, types.GetPromptResult)
        assert prompt.messages[0].content.text == "Use this context: the 1840s"  # type: ignore[union-attr]
    # on the record: the question was bridged, for Alice's call
    assert any(e["principal"] == "alice" for e in _bridged(run, "2026-upstream-to-2025-client"))


def _bridged(run: Running, direction: str) -> list[dict[str, Any]]:
    """The audit log's bridged questions in ``direction`` (each test checks its own)."""
    gateway = run.state.gateway
    assert gateway is not None and gateway.audit is not None
    gateway.audit.flush(timeout=5)
    return [
        e
        for e in gateway.audit.recent(200)
        if e["type"] == "bridge.input_request" and e["details"]["direction"] == direction
    ]


async def test_a_2025_client_that_cannot_answer_gets_an_error_result(
    gw: tuple[Running, dict[str, str]],
) -> None:
    run, keys = gw
    async with (
        httpx2.AsyncClient(headers=bearer(keys["bob"]), timeout=60) as hc,
        streamable_http_client(run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,  # no elicitation capability
    ):
        await s.initialize()
        try:
            res = await s.call_tool("fx__test_input_required_result_elicitation", {})
        except MCPError:
            return  # refused at the protocol level: also not a result it cannot read
        assert res.is_error
