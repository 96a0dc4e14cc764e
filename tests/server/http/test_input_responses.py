"""A client's ``inputResponses`` / ``requestState`` (2026-07-28) pass no check unseen, through
the HTTP front with the conformance fixture as a 2026 upstream (``protocol = "auto"``): its
``test_input_required_result_elicitation`` greets whatever name the answer to its question holds.

Red team /tmp/rt-call r5: a 2025-era client added both fields to a ``tools/call``; the gateway
forwarded them verbatim to the upstream, past the policy, the redaction and the audit.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from mcp import Client, ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from tests.conformance.test_conformance import FIXTURE
from tests.conftest import POLICY, write_config
from tests.server.http.conftest import Running, bearer, roles_policy_data, run_server
from tests.verify.test_gateway_verification import error_of

pytestmark = [pytest.mark.anyio]

SECRET = "SMUGGLED-SECRET-hunter2"
TOOL = "fx__test_input_required_result_elicitation"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, str]]:
    from gateway.config import load_config
    from gateway.server.auth import ApiKeyStore

    tmp = tmp_path_factory.mktemp("responses")
    path = roles_policy_data(tmp, {"user": {"tools": ["*"]}}, ("fx",))
    doc = json.loads(path.read_text())
    doc["symbi_data"]["redact_arguments"] = {"fx__*": ["api_token", "name"]}
    path.write_text(json.dumps(doc))
    cfg = write_config(
        tmp,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{path}"

        [sandbox]
        code_tools = false

        [bus]
        enabled = false

        [servers.fx]
        command = "{sys.executable}"
        args = ["{FIXTURE}", "--stdio"]
        verification = "warn"
        protocol = "auto"
        """,
    )
    key = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("alice", ("user",))[0]
    with run_server(cfg) as run:
        yield run, key


def _answer(name: str) -> dict[str, types.InputResponse]:
    return {"user_name": types.ElicitResult(action="accept", content={"name": name, "api_token": SECRET})}


def _calls(run: Running) -> list[dict[str, Any]]:
    gateway = run.state.gateway
    assert gateway is not None and gateway.audit is not None
    gateway.audit.flush(timeout=5)
    return [e["details"] for e in gateway.audit.recent(200) if e["type"] == "tool.call"]


async def test_a_2025_clients_input_responses_are_dropped(gw: tuple[Running, str]) -> None:
    run, key = gw
    asked: list[str] = []

    async def elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    async with (
        httpx2.AsyncClient(headers=bearer(key), timeout=60) as hc,
        streamable_http_client(run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w, elicitation_callback=elicit) as s,
    ):
        await s.initialize()
        assert s.protocol_version == "2025-11-25"
        res = await s.send_request(
            types.CallToolRequest(
                params=types.CallToolRequestParams(
                    name=TOOL, arguments={}, input_responses=_answer("Mallory"), request_state="x"
                )
            ),
            types.CallToolResult,
        )
    # the smuggled answer never reached the upstream: it asked, and the gateway asked the client
    # (whose answer, like arguments, is redacted by the rules: "name")
    assert not res.is_error and res.content[0].text == "Hello, Ada!"  # type: ignore[union-attr]
    assert asked == ["What is your name?"]
    assert SECRET not in json.dumps(_calls(run))


async def _answered_call(run: Running, key: str, answers: dict[str, types.InputResponse]) -> Any:
    """A 2026 client's call of TOOL, then its retry with ``answers`` to the question the first
    call's input-required result asked: the retry's result."""
    async with contextlib.AsyncExitStack() as stack:
        hc = await stack.enter_async_context(httpx2.AsyncClient(headers=bearer(key), timeout=60))
        c = await stack.enter_async_context(
            Client(streamable_http_client(run.mcp, http_client=hc), mode="2026-07-28")
        )
        first = await c.session.call_tool(TOOL, {}, allow_input_required=True)
        assert isinstance(first, types.InputRequiredResult)
        return await c.session.call_tool(
            TOOL, {}, allow_input_required=True, input_responses=answers, request_state=first.request_state
        )


async def test_a_2026_clients_input_responses_are_redacted_decided_and_recorded(
    gw: tuple[Running, str],
) -> None:
    run, key = gw
    final = await _answered_call(run, key, _answer("Grace"))
    assert isinstance(final, types.CallToolResult) and not final.is_error
    # the upstream got the answer redacted as arguments are (the rules name "name" here)
    assert final.content[0].text == "Hello, [REDACTED]!"  # type: ignore[union-attr]
    answered = [d for d in _calls(run) if "input_responses" in d]
    assert answered, "the answers are on the record"
    content = answered[-1]["input_responses"]["user_name"]["content"]
    assert content == {"name": "[REDACTED]", "api_token": "[REDACTED]"}
    assert SECRET not in json.dumps(_calls(run))


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        ("path", "/etc/passwd", True),  # outside the data's fs_roots
        ("url", "http://evil.com/collect", True),  # a host not in url_hosts
        ("path", "/tmp/notes.txt", False),  # under a root: the control
    ],
)
async def test_a_2026_clients_answer_gets_the_arguments_checks(
    gw: tuple[Running, str], field: str, value: str, refused: bool
) -> None:
    """Attack: a value the path / URL checks refuse in ``arguments`` put in an answer's field of
    the same name instead (an answer reaches the upstream with the call, as arguments do): it
    passed unchecked. Now the policy checks it as the argument (the reason names the answer);
    a value the check allows passes."""
    run, key = gw
    answer = types.ElicitResult(action="accept", content={"name": "Ada", field: value})
    final = await _answered_call(run, key, {"user_name": answer})
    assert isinstance(final, types.CallToolResult)
    if refused:
        error = error_of(final)
        assert error["code"] == "policy_denied"
        assert any(r.startswith("answer user_name: argument " + field) for r in error["reasons"])
    else:
        assert not final.is_error and final.content[0].text == "Hello, [REDACTED]!"  # type: ignore[union-attr]
