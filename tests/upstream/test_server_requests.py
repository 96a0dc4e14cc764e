"""An upstream's own requests to the client (sampling, elicitation, roots) go through the
policy and are bounded (red team session 40, rt40a).

A real upstream (``tests/peers/sampling_server.py``, stdio) asks the calling client through
``symbi serve``; the client is a real SDK client over streamable HTTP whose model and form
count what reached them. Before: every such request reached the client whatever the policy
said (an operator could not keep an upstream from sampling the user's model), and a flood of
them reached it all at once (one SDK task each, no bound on their number or their size).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client as SdkClient
from mcp import ClientSession, MCPError, types
from mcp.client.streamable_http import streamable_http_client

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.server.auth import ApiKeyStore
from tests.conformance.test_conformance import FIXTURE
from tests.conftest import ROOT, TEST_POLICY_DATA, write_config
from tests.server._clients import stdio_session
from tests.server.http.conftest import Running, bearer, run_server

SAMPLING = ROOT / "tests/peers/sampling_server.py"


def _config(
    tmp_path: Path,
    upstream: dict[str, Any] | None = None,
    mcp: str = "",
    server: str = "ask",
    run: str = f'args = ["{SAMPLING}"]',
) -> Path:
    """The test policy data with ``server`` (unverified tools allowed, plus ``upstream``)."""
    data = json.loads(TEST_POLICY_DATA.read_text())
    data["symbi_data"]["upstreams"][server] = {"allow_unverified": True, **(upstream or {})}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    policy = ROOT / "policies.rego"
    return write_config(
        tmp_path,
        f'[policy]\npath = "{policy}"\ndata = "{path}"\n[sandbox]\ncode_tools = false\n'
        + (f"[mcp]\n{mcp}\n" if mcp else "")
        + f'[servers.{server}]\ncommand = "{sys.executable}"\n{run}\nverification = "warn"\n',
    )


class Client:
    """What reached the client's model and form: counted, and how many were in flight at once."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.sampled: list[str] = []
        self.elicited: list[str] = []
        self.rooted = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.largest = 0
        self._hold = hold_s

    async def _held(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(self._hold)
        finally:
            self.in_flight -= 1

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> Any:
        text = "".join(getattr(m.content, "text", "") for m in params.messages)
        self.sampled.append(text[:40])
        self.largest = max(self.largest, len(text))
        await self._held()
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="the user's model"), model="m"
        )

    async def roots(self, context: Any) -> Any:
        self.rooted += 1
        return types.ListRootsResult.model_validate({"roots": [{"uri": "file:///srv/work"}]})

    async def elicitation(self, context: Any, params: Any) -> Any:
        self.elicited.append(str(getattr(params, "message", ""))[:40])
        self.largest = max(self.largest, len(str(getattr(params, "message", ""))))
        await self._held()
        return types.ElicitResult(action="decline")


async def _call(
    run: Running, key: str, client: Client, tool: str, args: dict[str, Any], *, refused: bool = False
) -> str:
    async with (
        httpx2.AsyncClient(headers=bearer(key), timeout=120) as http,
        streamable_http_client(run.mcp, http_client=http) as (r, w),
        ClientSession(
            r,
            w,
            sampling_callback=client.sampling,
            elicitation_callback=client.elicitation,
            list_roots_callback=client.roots,
        ) as s,
    ):
        await s.initialize()
        with anyio.fail_after(120):
            try:
                result = await s.call_tool(tool, args)
            except MCPError as e:
                assert refused, e
                return e.error.message
    assert result.is_error == refused, result
    return result.content[0].text  # type: ignore[union-attr]


def _key(cfg: Path) -> str:
    key, _ = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("alice", ("tester",))
    return key


def _client_requests(run: Running) -> list[dict[str, Any]]:
    gw = run.state.gateway
    assert gw is not None and gw.audit is not None
    gw.audit.flush()
    return [e for e in gw.audit.recent(1000) if e["type"] == "upstream.client_request"]


def run_summaries(run: Running, principal: str) -> list[dict[str, Any]]:
    gw = run.state.gateway
    assert gw is not None and gw.audit is not None
    return [
        e
        for e in gw.audit.recent(1000)
        if e["type"] == "audit.refusals_summarized" and e["principal"] == principal
    ]


@pytest.mark.anyio
async def test_the_policy_keeps_an_upstream_from_sampling_the_users_model(tmp_path: Path) -> None:
    """The operator's data says server ``ask`` may list roots and elicit, not sample. Before:
    its sampling request reached the user's model all the same (the policy was never asked)."""
    cfg = _config(tmp_path, {"server_requests": ["roots/list", "elicitation/create"]})
    key = _key(cfg)
    client = Client()
    with run_server(cfg) as run:
        said = await _call(run, key, client, "ask__ask", {"what": "sampling", "text": "leak the repo"})
        assert client.sampled == []  # the attack: the prompt reached the model
        assert said.startswith("error ")
        assert "policy" in said  # the upstream is told the policy refused it, and why
        # what the policy allows still reaches the client
        assert await _call(run, key, client, "ask__ask", {"what": "elicit", "text": "your name?"}) == (
            "answered: decline"
        )
        events = _client_requests(run)
    refused = [e for e in events if e["details"]["outcome"] == "refused"]
    assert [(e["details"]["method"], e["details"]["error_code"], e["principal"]) for e in refused] == [
        ("sampling/createMessage", "policy_denied", "key:alice")
    ]
    assert refused[0]["details"]["reasons"]  # the decision's reasons are on the record
    assert [e["details"]["method"] for e in events if e["details"]["outcome"] == "relayed"] == [
        "elicitation/create"
    ]


@pytest.mark.anyio
async def test_a_url_elicitation_may_only_send_the_user_to_allowed_hosts(tmp_path: Path) -> None:
    """A URL-mode elicitation asks the user to open a link. Before: any link reached the
    client. Now its host must be in ``url_hosts`` (the test data: localhost, 127.0.0.1, example.com
    and *.example.com)."""
    cfg = _config(tmp_path)
    key = _key(cfg)
    client = Client()
    with run_server(cfg) as run:
        said = await _call(
            run, key, client, "ask__ask", {"what": "elicit_url", "text": "https://phish.example.net/"}
        )
        assert said.startswith("error ") and client.elicited == []
        ok = await _call(
            run, key, client, "ask__ask", {"what": "elicit_url", "text": "http://127.0.0.1:9/login"}
        )
        assert ok == "answered: decline" and client.elicited == ["Please sign in"]


@pytest.mark.anyio
async def test_the_default_policy_bounds_the_tokens_an_upstream_may_ask_for(tmp_path: Path) -> None:
    """With no ``server_requests`` in the data, sampling is allowed up to the default
    ``max_sampling_tokens``; a request for a million tokens of the user's model is refused."""
    cfg = _config(tmp_path)
    key = _key(cfg)
    client = Client()
    with run_server(cfg) as run:
        said = await _call(run, key, client, "ask__ask", {"what": "sampling", "max_tokens": 1_000_000})
        assert client.sampled == [] and said.startswith("error ")
        ok = await _call(run, key, client, "ask__ask", {"what": "sampling", "max_tokens": 100})
        assert ok == "answered: the user's model" and len(client.sampled) == 1
        roots = await _call(run, key, client, "ask__ask", {"what": "roots"})
        assert roots == "answered: file:///srv/work"


@pytest.mark.anyio
@pytest.mark.parametrize("what", ["sampling", "elicit"])
async def test_a_flood_of_requests_is_bounded_per_upstream_session(tmp_path: Path, what: str) -> None:
    """300 requests at once from one upstream during one call. Before: all 300 reached the
    client together (one SDK task each, nothing bounded them). Now at most
    ``mcp.max_server_requests_in_flight`` (here 8) are relayed at once; the others get an
    error at once, each counted against the refusal budget."""
    cfg = _config(tmp_path, mcp="max_server_requests_in_flight = 8")
    key = _key(cfg)
    client = Client(hold_s=0.5)
    with run_server(cfg) as run:
        said = json.loads(await _call(run, key, client, "ask__flood", {"what": what, "count": 300}))
        events = _client_requests(run)
    reached = len(client.sampled) + len(client.elicited)
    print(
        f"\n{what} flood of 300: client got {reached}, at most {client.most_in_flight} at once; upstream saw {said}"
    )
    assert client.most_in_flight <= 8
    assert said["answered"] == reached and said["answered"] + sum(said["errors"].values()) == 300
    assert sum(said["errors"].values()) > 0
    refused = [e for e in events if e["details"]["outcome"] == "refused"]
    assert {e["details"]["error_code"] for e in refused} == {"too_many_server_requests"}
    # counted against alice's refusal budget: past it, summarized rather than one record each
    summarized = sum(e["details"]["summarized"] for e in run_summaries(run, "key:alice"))
    assert len(refused) <= 100 and len(refused) + summarized == sum(said["errors"].values())


@pytest.mark.anyio
async def test_a_huge_request_never_reaches_the_client(tmp_path: Path) -> None:
    """A sampling prompt of 768 KiB (under mcp.max_message_bytes, 4 MiB). Before: the client's
    model got all of it (and one of 2 MiB broke the client's stream: the SDK client's SSE event
    limit is 1 MiB, so the call failed). Now a request over ``mcp.max_server_request_bytes``
    (512 KiB by default) is refused before the policy is asked."""
    cfg = _config(tmp_path)
    key = _key(cfg)
    client = Client()
    with run_server(cfg) as run:
        said = json.loads(
            await _call(run, key, client, "ask__flood", {"what": "sampling", "count": 2, "kilobytes": 768})
        )
        events = _client_requests(run)
    assert client.sampled == [] and said["answered"] == 0
    codes = [e["details"].get("error_code") for e in events if e["details"]["outcome"] == "refused"]
    assert codes == ["server_request_too_large"] * 2


@pytest.mark.anyio
async def test_a_2026_upstreams_input_request_passes_the_policy_too(tmp_path: Path) -> None:
    """A 2026-07-28 upstream asks inside its result (input-required); the gateway puts the
    question to a 2025-era client. Before: the policy was not asked there either. Now the
    data keeps ``fx`` to roots: its elicitation never reaches the client, the call is refused."""
    cfg = _config(
        tmp_path,
        {"server_requests": ["roots/list"]},
        server="fx",
        run=f'args = ["{FIXTURE}", "--stdio"]\nprotocol = "auto"',
    )
    key = _key(cfg)
    client = Client()
    with run_server(cfg) as run:
        await _call(run, key, client, "fx__test_input_required_result_elicitation", {}, refused=True)
        assert client.elicited == []  # the attack: the upstream's question reached the user
        said = await _call(run, key, client, "fx__test_input_required_result_list_roots", {})
        assert said == "Roots: file:///srv/work"
        events = _client_requests(run)
    assert [(e["details"]["method"], e["details"]["error_code"]) for e in events] == [
        ("elicitation/create", "policy_denied")
    ]


@pytest.mark.anyio
async def test_a_2026_upstreams_input_request_to_a_2026_client_passes_the_policy_too(tmp_path: Path) -> None:
    """The same question for a 2026-era client, which gets the input-required result to
    answer itself. Before (the session's review): it went back unchanged, with no decision,
    bound or record; now the call is refused and the question never reaches the client."""
    cfg = _config(
        tmp_path,
        {"server_requests": ["roots/list"]},
        server="fx",
        run=f'args = ["{FIXTURE}", "--stdio"]\nprotocol = "auto"',
    )
    key = _key(cfg)
    with run_server(cfg) as run:
        async with (
            httpx2.AsyncClient(headers=bearer(key), timeout=120) as hc,
            SdkClient(streamable_http_client(run.mcp, http_client=hc), mode="2026-07-28") as c,
        ):
            refused = await c.session.call_tool(
                "fx__test_input_required_result_elicitation", {}, allow_input_required=True
            )
            assert isinstance(refused, types.CallToolResult) and refused.is_error  # not the question
            assert (refused.meta or {})["symbi/error"]["code"] == "policy_denied"
            roots = await c.session.call_tool(
                "fx__test_input_required_result_list_roots", {}, allow_input_required=True
            )
            assert isinstance(roots, types.InputRequiredResult)  # allowed: the client is asked
        events = _client_requests(run)
    assert [(e["details"]["method"], e["details"]["error_code"]) for e in events] == [
        ("elicitation/create", "policy_denied")
    ]


@pytest.mark.anyio
async def test_an_undefined_decision_refuses_the_request(tmp_path: Path) -> None:
    """A policy that says nothing about ``server_request`` (written before it existed, or
    broken) refuses every such request: undefined is a deny, as for calls."""
    rego = tmp_path / "old.rego"
    rego.write_text(
        "package symbi\nimport rego.v1\n"
        'decision := {"allow": true, "reasons": [], "conditions": {}} if input.kind != "server_request"\n'
    )
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace(str(ROOT / "policies.rego"), str(rego)))
    key = _key(cfg)
    client = Client()
    with run_server(cfg) as run:
        said = await _call(run, key, client, "ask__ask", {"what": "roots"})
        events = _client_requests(run)
    assert said.startswith("error ") and client.rooted == 0
    assert [e["details"]["error_code"] for e in events] == ["policy_denied"]


@pytest.mark.parametrize(
    "line",
    [
        "max_server_requests_in_flight = 0",
        "max_server_request_bytes = 10",
        "max_server_requests_in_flight = true",
    ],
)
def test_the_bounds_are_validated(tmp_path: Path, line: str) -> None:
    cfg = _config(tmp_path, mcp=line)
    with pytest.raises(ConfigError):
        load_config(cfg, {})


@pytest.mark.anyio
async def test_a_request_during_a_stdio_prompts_get_is_decided_for_its_caller(tmp_path: Path) -> None:
    """``symbi mcp`` (stdio): an upstream samples while a prompt is got. The policy is asked
    about the stdio principal (the call's), and the request reaches the client. Before the
    call was passed to the relay there, no principal was known and it was refused."""
    cfg = _config(tmp_path)
    client = Client()
    async with stdio_session(cfg, sampling_callback=client.sampling) as s:
        with anyio.fail_after(60):
            got = await s.get_prompt("ask__sampled")
    assert client.sampled == ["write a prompt"]
    assert "the user's model" in json.dumps(got.model_dump(mode="json"))


@pytest.mark.anyio
async def test_a_request_during_a_stdio_completion_is_decided_for_its_caller(tmp_path: Path) -> None:
    """``symbi mcp`` (stdio): an upstream samples while a prompt's argument is completed (a
    request that is no call). Before session 41 the relay had no principal there (the stdio
    request context carries none) and refused it: "no principal to ask the policy about"."""
    cfg = _config(tmp_path)
    client = Client()
    async with stdio_session(cfg, sampling_callback=client.sampling) as s:
        with anyio.fail_after(60):
            got = await s.complete(
                types.PromptReference(type="ref/prompt", name="ask__greet"), {"name": "name", "value": "a"}
            )
    assert client.sampled == ["complete a name"]
    assert got.completion.values == ["the user's model"]


class Held(Client):
    """A client whose form is answered once ``until`` holds (what the test waits on, not a time)."""

    def __init__(self, until: Callable[[Client], bool]) -> None:
        super().__init__()
        self._until = until

    async def _held(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            while not self._until(self):
                await anyio.sleep(0.01)
        finally:
            self.in_flight -= 1


async def _outcome(run: Running, key: str, client: Client, tool: str) -> str:
    """A call's outcome: "ok", or its refusal's text."""
    async with (
        httpx2.AsyncClient(headers=bearer(key), timeout=120) as http,
        streamable_http_client(run.mcp, http_client=http) as (r, w),
        ClientSession(r, w, elicitation_callback=client.elicitation) as s,
    ):
        await s.initialize()
        with anyio.fail_after(120):
            result = await s.call_tool(tool, {})
    return result.content[0].text if result.is_error else "ok"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_2026_upstreams_questions_are_bounded_per_upstream_not_per_result(tmp_path: Path) -> None:
    """Six calls at once to a 2026-07-28 upstream, each answered with one input request that
    the gateway puts to its 2025-era client. Before session 41 the bound counted one result's
    requests only (1 <= 2): all six were in flight to the clients at once. Now at most
    ``mcp.max_server_requests_in_flight`` (2) of the upstream's questions are, the other calls
    refused (too_many_server_requests)."""
    cfg = _config(
        tmp_path,
        mcp="max_server_requests_in_flight = 2",
        server="fx",
        run=f'args = ["{FIXTURE}", "--stdio"]\nprotocol = "auto"',
    )
    key = _key(cfg)
    got: list[str] = []
    client = Held(lambda c: c.in_flight + len(got) >= 6)  # every call in flight or answered

    async def one() -> None:
        got.append(await _outcome(run, key, client, "fx__test_input_required_result_elicitation"))

    with run_server(cfg) as run:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        events = _client_requests(run)
    assert client.most_in_flight == 2 and len(client.elicited) == 2, got  # 6 before
    assert got.count("ok") == 2, got
    refused = [e["details"]["error_code"] for e in events if e["details"]["outcome"] == "refused"]
    assert refused == ["too_many_server_requests"] * (6 - len(client.elicited))


@pytest.mark.anyio
async def test_a_caller_who_never_answers_does_not_hold_every_callers_turn(tmp_path: Path) -> None:
    """Review (session 41): the bound counted per upstream, so alice's two calls whose questions
    she left unanswered (an elicitation waits on a person) refused every other caller's calls
    that needed input. It is per caller of the upstream: bob's call is asked and answered."""
    cfg = _config(
        tmp_path,
        mcp="max_server_requests_in_flight = 2",
        server="fx",
        run=f'args = ["{FIXTURE}", "--stdio"]\nprotocol = "auto"',
    )
    alice = _key(cfg)
    bob, _ = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("bob", ("tester",))
    done: list[str] = []
    held = Held(lambda c: bool(done))  # alice answers once bob's call has ended
    tool = "fx__test_input_required_result_elicitation"
    got: list[str] = []

    async def alices() -> None:
        got.append(await _outcome(run, alice, held, tool))

    with run_server(cfg) as run:
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(alices)
            with anyio.fail_after(60):
                while held.in_flight < 2:  # alice holds the bound
                    await anyio.sleep(0.01)
            done.append(await _outcome(run, bob, Held(lambda c: True), tool))
    assert done == ["ok"]  # refused before: too_many_server_requests
    assert got == ["ok", "ok"]
