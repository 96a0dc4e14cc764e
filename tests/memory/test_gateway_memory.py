"""The memory and knowledge built-ins inside a real gateway (policies.rego, the audit log).

Calls enter through ``Gateway.call`` with a principal that carries an agent id (the MCP
fronts set it per session); everything after that is the real chain: resolve, verification,
argument validation, the policy (the tool decision, then context/read|write and
knowledge/search), the built-in, the audit log.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from mcp import types

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.audit import store as audit_store
from gateway.config.load import load_config
from gateway.context import CallContext, Principal
from gateway.errors import ContextError, EmbedderMismatch, MemoryQuotaExceeded, PolicyDenied, UnknownTool
from gateway.memory.embed import HashingEmbedder
from tests.conftest import write_config
from tests.memory.conftest import CORPUS

pytestmark = pytest.mark.anyio

ALICE = Principal("alice", roles=("tester",), agent="agent-a")
BOB = Principal("bob", roles=("tester",), agent="agent-b")
NOBODY = Principal("nobody", roles=(), agent="agent-n")
NO_AGENT = Principal("local", roles=("tester",))


def _config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [context]
        embedder = "hashing"
        {extra}
        """,
    )


@asynccontextmanager
async def gateway(cfg: Path) -> AsyncIterator[Gateway]:
    gw = make_gateway(load_config(cfg, {}))
    async with gw.running():
        yield gw


async def call(gw: Gateway, who: Principal, tool: str, **args: Any) -> types.CallToolResult:
    result: types.CallToolResult = await gw.call(
        CallContext(principal=who, kind="tools/call", target=tool, arguments=args, session_id=f"s-{who.id}")
    )
    return result


def audit_records(cfg: Path, *kinds: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(cfg.parent / "data" / "audit.db")
    try:
        return [
            {"type": r.type, "agent": r.agent, "principal": r.principal, **json.loads(r.details_json)}
            for r in audit_store.query(conn, types=kinds)
        ]
    finally:
        conn.close()


async def test_store_and_recall_are_per_agent(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        names = set(gw.catalog.tools)
        assert {
            "memory__store",
            "memory__recall",
            "memory__end_task",
            "knowledge__search",
            "knowledge__context",
            "knowledge__answer",
        } <= names
        r = await call(gw, ALICE, "memory__store", text="alice's build server is ci-7", type="long_term")
        assert not r.is_error and r.structured_content["type"] == "long_term"
        await call(gw, BOB, "memory__store", text="bob's build server is ci-9")
        a = await call(gw, ALICE, "memory__recall", query="build server")
        texts = [i["text"] for i in a.structured_content["items"]]
        assert texts == ["alice's build server is ci-7"]


async def test_reading_another_agents_memory_is_denied_and_audited(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="alice's private plan: launch on friday")
        with pytest.raises(PolicyDenied) as e:
            await gw.call(
                CallContext(
                    principal=BOB,
                    kind="resources/read",
                    target="memory://agent-a/long_term",
                    upstream=gw.upstream_info("memory"),
                )
            )
        assert any("agent-b may not read the long_term memory of agent agent-a" in r for r in e.value.reasons)
        own = await gw.call(
            CallContext(
                principal=ALICE,
                kind="resources/read",
                target="memory://agent-a/long_term",
                upstream=gw.upstream_info("memory"),
            )
        )
        assert "launch on friday" in own.contents[0].text
    denied = audit_records(cfg, "memory.denied")
    assert denied and denied[0]["agent"] == "agent-b" and denied[0]["owner"] == "agent-a"
    assert "launch" not in json.dumps(denied)  # metadata only


async def test_memory_needs_an_agent_identity(tmp_path: Path) -> None:
    async with gateway(_config(tmp_path)) as gw:
        with pytest.raises(ContextError):  # refused before any memory is touched
            await call(gw, NO_AGENT, "memory__recall", query="anything")
        with pytest.raises(ContextError):
            await call(gw, NO_AGENT, "memory__store", text="anything")


async def test_shared_namespaces_follow_the_policy(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        w = await call(
            gw, ALICE, "memory__store", text="standup moved to 10:30", type="shared", namespace="team"
        )
        assert not w.is_error
        got = await call(gw, BOB, "memory__recall", query="standup", types=["shared"], namespaces=["team"])
        assert [i["text"] for i in got.structured_content["items"]] == ["standup moved to 10:30"]
        with pytest.raises(PolicyDenied):  # tester may read announcements, only admin writes
            await call(gw, BOB, "memory__store", text="x", type="shared", namespace="announcements")
        with pytest.raises(PolicyDenied):
            await call(gw, BOB, "memory__recall", query="x", types=["shared"], namespaces=["secret-project"])
    kinds = [(r["kind"], r["namespace"]) for r in audit_records(cfg, "memory.denied")]
    assert ("context/write", "announcements") in kinds and ("context/read", "secret-project") in kinds


async def test_redacted_secrets_are_never_embedded_or_stored(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    secret = "sk-live_abcdefghijklmnopqrstuvwx"  # a provider key: the policy step scrubs it by value
    password = "password=hunter2"  # free text only the memory's redact_text patterns know
    async with gateway(cfg) as gw:
        r = await call(
            gw,
            ALICE,
            "memory__store",
            text=f"the billing key is {secret} keep it safe {password}",
            metadata={"api_token": "tok-123", "project": "billing"},
        )
        assert r.structured_content["redacted"] == 1
        service = gw.builtins["memory"].s  # type: ignore[attr-defined]
        pts = service.m.store.scroll({"kind": "memory"})
        assert len(pts) == 1
        assert secret not in json.dumps(pts[0].payload) and "tok-123" not in json.dumps(pts[0].payload)
        stored = service.m.store.retrieve([pts[0].id], with_vectors=True)[0]
        redacted_vec = HashingEmbedder(384).embed([pts[0].payload["text"]])[0]
        assert pts[0].payload["text"] == "the billing key is [REDACTED] keep it safe [REDACTED]"
        assert "hunter2" not in json.dumps(pts[0].payload)
        assert float(np.asarray(stored.vector) @ redacted_vec) == pytest.approx(1.0, abs=1e-4)
    dump = json.dumps(audit_records(cfg, "memory.*", "tool.*"))
    assert secret not in dump and "billing key" not in dump and "hunter2" not in dump  # metadata, never text
    stored = audit_records(cfg, "memory.stored")
    assert [(r["agent"], r["memory_type"], r["redacted"], r["metadata_keys"]) for r in stored] == [
        ("agent-a", "long_term", 1, ["api_token", "project"])
    ]


async def test_long_term_memory_persists_across_a_restart(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="the staging database is db-stg-3")
        await call(gw, ALICE, "memory__store", text="short lived", type="short_term")
    async with gateway(cfg) as gw:
        got = await call(
            gw, ALICE, "memory__recall", query="staging database", types=["long_term", "short_term"]
        )
        texts = [i["text"] for i in got.structured_content["items"]]
        assert texts[0] == "the staging database is db-stg-3" and "short lived" not in texts


async def test_knowledge_tools_search_context_and_answer_without_sampling(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        service = gw.builtins["knowledge"].s  # type: ignore[attr-defined]
        service.kb.add("handbook", CORPUS, glob="*.md")
        s = await call(gw, ALICE, "knowledge__search", base="handbook", query="basement bike cage", top_k=3)
        assert s.structured_content["items"][0]["heading"] == "Bicycles"
        for top_k, want in ((1, 1), (None, 5)):  # top_k is passed through; its default is 5
            extra = {} if top_k is None else {"top_k": top_k}
            got = await call(gw, ALICE, "knowledge__search", base="handbook", query="bike cage", **extra)
            assert len(got.structured_content["items"]) == want
        c = await call(gw, ALICE, "knowledge__context", query="where do bikes go", budget_tokens=200)
        assert not c.is_error and c.content[0].text.startswith("[1] (handbook:")  # type: ignore[union-attr]
        assert set(c.meta["symbi/rag_timings_ms"]) >= {"vector_search", "ranking", "context_assembly"}  # type: ignore[index]
        cited = c.structured_content["citations"]
        assert isinstance(c.meta["symbi/rag_tokens"], int)  # type: ignore[index]
        assert [x["n"] for x in cited] == list(range(1, len(cited) + 1)) and cited[0]["citation"].startswith(
            "handbook:"
        )
        a = await call(gw, ALICE, "knowledge__answer", query="where do bikes go")
        assert a.meta["symbi/sampling"] == "unsupported" and "[1]" in a.content[0].text  # type: ignore[index,union-attr]
        with pytest.raises(UnknownTool):  # a principal without knowledge rights: hidden = missing (item 13)
            await call(gw, NOBODY, "knowledge__search", base="handbook", query="bikes")
        prompt = await gw.call(
            CallContext(
                principal=ALICE,
                kind="prompts/get",
                target="knowledge__rag",
                arguments={"query": "where do bikes go"},
                upstream=gw.upstream_info("knowledge"),
            )
        )
        assert "Passages:" in prompt.messages[0].content.text


async def test_working_memory_ends_with_its_task(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        await call(
            gw,
            ALICE,
            "memory__store",
            text="draft 2 of the report is in /tmp/r2",
            type="working",
            task="report",
        )
        got = await call(gw, ALICE, "memory__recall", query="draft report", types=["working"], task="report")
        assert len(got.structured_content["items"]) == 1
        ended = await call(gw, ALICE, "memory__end_task", task="report")
        assert ended.structured_content == {"task": "report", "cleared": 1}
        got = await call(gw, ALICE, "memory__recall", query="draft report", types=["working"], task="report")
        assert got.structured_content["items"] == []
    # audited: which task, how many cleared, whose (metadata only)
    assert [
        (r["agent"], r["principal"], r["task"], r["cleared"]) for r in audit_records(cfg, "memory.task_ended")
    ] == [("agent-a", "alice", "report", 1)]


async def test_a_mismatched_embedder_is_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="made with the hashing embedder")
    cfg2 = write_config(
        tmp_path,
        '[sandbox]\ncode_tools = false\n[context]\nembedder = "hashing"\nembedding_dimension = 256\n',
        name="other.toml",
    )
    async with gateway(cfg2) as gw:
        with pytest.raises(EmbedderMismatch):
            await call(gw, ALICE, "memory__recall", query="anything")


async def test_filters_cannot_reach_another_agents_memory(tmp_path: Path) -> None:
    """Attack: B names A's payload fields in ``filters`` (they only ever match B's metadata)."""
    async with gateway(_config(tmp_path)) as gw:
        await call(gw, ALICE, "memory__store", text="alice keeps the root password in the blue safe")
        for filters in ({"agent": "agent-a"}, {"namespace": "agent:agent-a"}, {"kind": "memory"}):
            got = await call(gw, BOB, "memory__recall", query="root password safe", filters=filters)
            assert got.structured_content["items"] == [], filters
        got = await call(
            gw, BOB, "memory__recall", query="root password safe", types=["long_term", "working"]
        )
        assert got.structured_content["items"] == []
        for uri in ("memory://agent-a/working", "memory://agent-a/long_term"):
            # A reads first, so an allow for A's own memory is in the decision cache
            await gw.call(
                CallContext(
                    principal=ALICE, kind="resources/read", target=uri, upstream=gw.upstream_info("memory")
                )
            )
            with pytest.raises(PolicyDenied):  # nor through A's resources
                await gw.call(
                    CallContext(
                        principal=BOB, kind="resources/read", target=uri, upstream=gw.upstream_info("memory")
                    )
                )


async def test_a_shared_resource_lists_what_that_agent_wrote(tmp_path: Path) -> None:
    async with gateway(_config(tmp_path)) as gw:
        await call(gw, ALICE, "memory__store", text="alice: lunch at noon", type="shared", namespace="team")
        await call(gw, BOB, "memory__store", text="bob: demo on friday", type="shared", namespace="team")
        read = await gw.call(
            CallContext(
                principal=BOB,
                kind="resources/read",
                target="memory://agent-a/shared/team",
                upstream=gw.upstream_info("memory"),
            )
        )
        assert [i["text"] for i in json.loads(read.contents[0].text)] == ["alice: lunch at noon"]


async def test_the_retention_job_purges_old_memories_on_its_interval(tmp_path: Path) -> None:
    """``purge_interval_s`` runs the gateway's job; the manager's clock is moved, not waited for."""
    cfg = _config(tmp_path, "knowledge_retention_days = 1\npurge_interval_s = 0.05")
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="an old note about the printer")
        m = gw.builtins["memory"].s.m  # type: ignore[attr-defined]
        now = m.clock()
        m.clock = lambda: now + 2 * 86_400.0
        for _ in range(400):  # bounded: the job runs every 0.05 s
            if m.store.count({"kind": "memory"}) == 0:
                break
            await anyio.sleep(0.05)
        assert m.store.count({"kind": "memory"}) == 0
    purged = [r for r in audit_records(cfg, "memory.purged") if r["count"]]
    assert purged and purged[0]["count"] == 1


async def test_the_retention_job_purges_with_the_audit_log_broken(tmp_path: Path) -> None:
    """The audit log broken (``on_failure = "deny"``; closed here): the purge's record raised
    ``AuditError`` out of the job and ended the gateway's task group. The memories past the
    retention are purged all the same and the gateway stays up; its stop, whose own record
    raised too (every upstream's stop skipped), ends cleanly."""
    cfg = _config(tmp_path, "knowledge_retention_days = 1\npurge_interval_s = 0.05")
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="an old note about the printer")
        m = gw.builtins["memory"].s.m  # type: ignore[attr-defined]
        assert gw.audit is not None
        gw.audit.close()  # every record refused from now on
        now = m.clock()
        m.clock = lambda: now + 2 * 86_400.0
        for _ in range(400):  # bounded: the job runs every 0.05 s
            if m.store.count({"kind": "memory"}) == 0:
                break
            await anyio.sleep(0.05)
        assert m.store.count({"kind": "memory"}) == 0
        await anyio.sleep(0.2)  # more rounds: AuditError out of the job ended the gateway before


async def test_context_disabled_removes_the_builtins(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = false\n[context]\nenabled = false\n")
    async with gateway(cfg) as gw:
        assert not [t for t in gw.catalog.tools if t.startswith(("memory__", "knowledge__"))]
        assert "memory" not in gw.builtins and "knowledge" not in gw.builtins
        with pytest.raises(UnknownTool):
            await call(gw, ALICE, "memory__store", text="x")


async def test_the_retention_job_opens_nothing_where_memory_was_never_used(tmp_path: Path) -> None:
    """Else the job would load the model and take the embedded store's lock in every gateway."""
    cfg = _config(tmp_path, "purge_interval_s = 0.02")
    async with gateway(cfg) as gw:
        m = gw.builtins["memory"].s.m  # type: ignore[attr-defined]
        rounds: list[bool] = []
        asked = m.store_in_use

        def counted() -> bool:  # counts the job's rounds
            rounds.append(asked())
            return rounds[-1]

        m.store_in_use = counted
        for _ in range(500):  # bounded
            if len(rounds) >= 3:
                break
            await anyio.sleep(0.02)
        assert rounds[:3] == [False, False, False]
        assert m._store is None and m._embedder is None
    assert not (tmp_path / "data" / "vectors").exists()
    assert audit_records(cfg, "memory.purged") == []


async def test_an_http_session_agents_volatile_memory_goes_with_its_session(tmp_path: Path) -> None:
    """Short-term (and working) memory of an HTTP session's agent is dropped when the session
    closes (its id never comes back), the way the HTTP front ends it; a stable agent keeps its own."""
    async with gateway(_config(tmp_path)) as gw:
        service = gw.builtins["memory"].s  # type: ignore[attr-defined]
        agent = gw.agents.for_session(ALICE, "churn", "http:s1")
        me = Principal("alice", roles=("tester",), agent=agent.id)
        await call(gw, me, "memory__store", text="the session's scratch note", type="short_term")
        await call(gw, me, "memory__store", text="half done", type="working", task="t1")
        await call(gw, BOB, "memory__store", text="bob's own note", type="short_term")
        assert len(list(service.m.short_term.items(agent.id))) == 1
        gw.runtime.close_session("http:s1", "shutdown: the client closed its session")
        assert list(service.m.short_term.items(agent.id)) == []
        assert list(service.m.working.items(agent.id)) == []
        assert len(list(service.m.short_term.items(BOB.agent))) == 1


async def test_a_principal_cannot_fill_the_store_or_the_gateways_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: one principal stores memories without end (at its rate limit: 60 a minute of
    32,000 characters each by default), filling the data dir's disk, where the audit log lives
    (a full disk refuses every audited call), or the gateway's own memory with working memory
    it never ends. A new session (a new agent) does not reset the count: it is per principal."""
    cfg = _config(tmp_path, "max_memories_per_principal = 3\nworking_memory_per_principal = 8000")
    alice_again = Principal("alice", roles=("tester",), agent="agent-a2")  # her second session
    async with gateway(cfg) as gw:
        for who, kind in ((ALICE, "long_term"), (alice_again, "long_term"), (ALICE, "shared")):
            ns = {"namespace": "team"} if kind == "shared" else {}
            r = await call(gw, who, "memory__store", text=f"{who.agent} fact", type=kind, **ns)
            assert not r.is_error, r
        service = gw.builtins["memory"].s  # type: ignore[attr-defined]
        embedded: list[int] = []
        real_embed = service.m.embed

        def counted(texts: list[str]) -> Any:
            embedded.append(len(texts))
            return real_embed(texts)

        monkeypatch.setattr(service.m, "embed", counted)
        for who in (ALICE, alice_again):
            with pytest.raises(MemoryQuotaExceeded):
                await call(gw, who, "memory__store", text="one too many", type="long_term")
        assert embedded == []  # refused before the model ran: a try at the quota costs no embedding
        monkeypatch.undo()
        r = await call(gw, BOB, "memory__store", text="bob has his own quota", type="long_term")
        assert not r.is_error
        # working memory: 8,000 bytes a principal (text + vector + 128 each)
        kept = 0
        with pytest.raises(MemoryQuotaExceeded):
            for i in range(100):
                await call(
                    gw, ALICE, "memory__store", text=f"step {i} " + "x" * 2000, type="working", task="t1"
                )
                kept += 1
        assert 0 < kept < 10
        assert len(list(service.m.working.items("agent-a"))) == kept  # nothing held was dropped
        assert service.m.store.count({"kind": "memory", "principal": "stdio:alice"}) == 3
        await call(gw, ALICE, "memory__end_task", task="t1")  # ending the task frees her quota
        r = await call(gw, alice_again, "memory__store", text="next task", type="working", task="t2")
        assert not r.is_error
    outcomes = [r.get("outcome") for r in audit_records(cfg, "tool.call") if r.get("tool") == "memory__store"]
    assert outcomes.count("denied") == 3, outcomes


async def test_one_principal_flooding_short_term_memory_evicts_only_its_own(tmp_path: Path) -> None:
    """Attack (on other agents' context): short-term memory is a cache shared by every session
    (context_cache_size, oldest first), so one principal storing without end pushed every
    other principal's memories out. Past its share (short_term_per_principal) its own oldest go."""
    cfg = _config(tmp_path, "context_cache_size = 40000\nshort_term_per_principal = 8000")
    async with gateway(cfg) as gw:
        for i in range(2):
            r = await call(gw, BOB, "memory__store", text=f"bob's note {i}", type="short_term")
            assert not r.is_error
        for i in range(60):
            r = await call(
                gw, ALICE, "memory__store", text=f"alice flood {i} " + "y" * 300, type="short_term"
            )
            assert not r.is_error
        service = gw.builtins["memory"].s  # type: ignore[attr-defined]
        bobs = [i.text for i in service.m.short_term.items("agent-b")]
        alices = [i.text for i in service.m.short_term.items("agent-a")]
        assert bobs == ["bob's note 0", "bob's note 1"]  # untouched
        assert 0 < len(alices) < 10 and alices[-1].startswith("alice flood 59")  # her newest kept
        with pytest.raises(MemoryQuotaExceeded):  # one item over the whole share: refused
            await call(gw, ALICE, "memory__store", text="z" * 9000, type="short_term")


async def test_metadata_cannot_carry_a_principal_past_its_memory_quotas(tmp_path: Path) -> None:
    """Attack (session 36): the quotas counted a memory's text and vector, never its metadata,
    which had no bound (a 4 MB request holds a 4 MB value). One principal kept megabytes of
    working memory against an 8,000-byte quota (a never-ended task lives until the gateway
    stops: its memory, every principal's, grows without end) and put a payload of any size in
    the vector store under each of its long-term memories."""
    cfg = _config(tmp_path, "working_memory_per_principal = 8000\nmax_memories_per_principal = 5")
    blob = {"blob": "m" * 200_000}
    async with gateway(cfg) as gw:
        service = gw.builtins["memory"].s  # type: ignore[attr-defined]
        for kind in ("working", "short_term", "long_term", "shared"):
            extra = {"task": "t1"} if kind == "working" else {"namespace": "team"} if kind == "shared" else {}
            with pytest.raises(ContextError):
                await call(gw, ALICE, "memory__store", text="tiny", type=kind, metadata=blob, **extra)
        assert list(service.m.working.items("agent-a")) == []
        assert list(service.m.short_term.items("agent-a")) == []
        assert service.m.store.count({"kind": "memory"}) == 0
        # metadata within the bound counts against the quota like text
        meta = {"a": "y" * 1900, "b": "z" * 1900}
        with pytest.raises(MemoryQuotaExceeded):
            for _ in range(20):
                await call(gw, ALICE, "memory__store", text="tiny", type="working", task="t1", metadata=meta)
        held = service.m.working.items("agent-a")
        assert sum(len(i.text) + len(json.dumps(i.metadata)) for i in held) <= 8000


async def test_the_policys_redact_text_reaches_metadata(tmp_path: Path) -> None:
    """Attack (session 36): ``redact_text`` (the policy's patterns for secrets in memory) was
    applied to a memory's text only: a secret in a metadata value was stored as it came and
    handed to every principal that may read the shared namespace."""
    cfg = _config(tmp_path)
    async with gateway(cfg) as gw:
        r = await call(
            gw,
            ALICE,
            "memory__store",
            text="deploy notes for the team",
            type="shared",
            namespace="team",
            metadata={"note": "db password=hunter2", "key": "sk-live_abcdefghijklmnopqrstuvwx", "n": 3},
        )
        got = await call(
            gw, BOB, "memory__recall", query="deploy notes", types=["shared"], namespaces=["team"]
        )
        [item] = got.structured_content["items"]
        assert item["metadata"] == {"note": "db [REDACTED]", "key": "[REDACTED]", "n": 3}
        assert r.structured_content["redacted"] == 1  # (the policy step scrubs the provider key itself)
        service = gw.builtins["memory"].s  # type: ignore[attr-defined]
        payloads = json.dumps([p.payload for p in service.m.store.scroll({"kind": "memory"})])
        assert "hunter2" not in payloads and "sk-live" not in payloads
