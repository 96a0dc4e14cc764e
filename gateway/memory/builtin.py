"""The ``memory`` and ``knowledge`` built-in upstreams: agent memory and RAG as MCP tools.

Tools (namespaced by the catalogue): ``memory__store``, ``memory__recall``, ``memory__end_task``,
``knowledge__search``, ``knowledge__context``, ``knowledge__answer``; the resource template
``memory://{agent}/{type}``; the prompt ``knowledge__rag``. Every call has already passed the
chain (verification, the tool's policy decision, audit); each memory touched is then decided
again with the memory input kinds (``gateway.memory.access``). Events carry metadata only:
ids, types, namespaces, counts and sizes, never memory text or queries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
from mcp import types
from mcp.shared.message import ServerMessageMetadata

from gateway.context import CallContext
from gateway.errors import AuditError, ContextError
from gateway.events import Event, record_acted
from gateway.memory.access import MemoryAccess, caller_agent, redact_metadata, redact_text, text_patterns
from gateway.memory.knowledge import KnowledgeBases
from gateway.memory.manager import ContextManager, check_bounds
from gateway.memory.rag import RagPipeline, RagResult
from gateway.memory.schemas import KNOWLEDGE_TOOLS, MEMORY_TOOLS, RAG_PROMPT, TEMPLATES
from gateway.memory.types import MEMORY_TYPES, PERSISTENT_TYPES, AgentContext, ContextQuery
from gateway.policy.decision import RESULT_ENVELOPE_BYTES
from gateway.policy.results import result_cap, result_size

_logger = logging.getLogger("symbi.memory")

NO_SAMPLING_NOTE = (
    "The calling client does not support MCP sampling, so no answer was generated: "
    "the assembled context follows; answer from it and cite the passages by number."
)


def _ok(
    text: str, structured: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=structured, _meta=meta
    )


def _within_cap(items: list[dict[str, Any]], cap: int | None) -> types.CallToolResult:
    """The recall's items as JSON text and structured. Past ``cap`` the chain cut the text in
    the middle of an item (a JSON text that does not parse): the most items that fit are kept
    whole, and the answer says how many were left out (``left_out``, and a second text)."""

    def built(k: int) -> types.CallToolResult:
        kept = items[:k]
        if k == len(items):
            return _ok(json.dumps(kept, ensure_ascii=False), {"items": kept})
        left = len(items) - k
        r = _ok(json.dumps(kept, ensure_ascii=False), {"items": kept, "left_out": left})
        note = (
            f"{left} more item(s) left out: past the policy's max_result_bytes ({cap}); ask for fewer (top_k)"
        )
        return r.model_copy(update={"content": [*r.content, types.TextContent(type="text", text=note)]})

    whole = built(len(items))
    if cap is None or result_size(whole) <= cap - RESULT_ENVELOPE_BYTES:
        return whole
    lo, hi = 0, len(items) - 1  # the most items that fit (a result grows with its items)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if result_size(built(mid)) <= cap - RESULT_ENVELOPE_BYTES:
            lo = mid
        else:
            hi = mid - 1
    return built(lo)


def _int(args: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = args.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ContextError(f"arguments.{key}: expected an integer from {lo} to {hi}")
    return v


class MemoryService:
    """What both built-ins share: the context manager, knowledge bases, RAG pipeline, access checks."""

    def __init__(
        self, manager: ContextManager, access: MemoryAccess, *, retention_interval_s: float = 3600.0
    ) -> None:
        self.m = manager
        self.kb = KnowledgeBases(manager)
        self.rag = RagPipeline(manager)
        self.access = access
        self.retention = retention_job(manager, retention_interval_s)  # a gateway background task

    def close(self) -> None:
        self.m.close()

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Embedding and vector search off the event loop."""
        return await anyio.to_thread.run_sync(fn)

    def audit(self, event: Event, call: CallContext, details: dict[str, Any]) -> None:
        self.m.events.emit(
            event, {"tool": call.target, **details}, principal=call.principal.id, agent=call.principal.agent
        )


class MemoryBuiltin:
    """``memory__store``, ``memory__recall``, ``memory__end_task`` and ``memory://{agent}/{type}``."""

    name = "memory"

    def __init__(self, service: MemoryService) -> None:
        self.s = service
        self._tools = [types.Tool.model_validate(t) for t in MEMORY_TOOLS]

    def tools(self) -> list[types.Tool]:
        return self._tools

    def templates(self) -> list[types.ResourceTemplate]:
        return [types.ResourceTemplate.model_validate(t) for t in TEMPLATES]

    async def call(self, call: CallContext) -> types.CallToolResult:
        assert call.tool is not None
        handler: dict[str, Callable[[CallContext], Awaitable[types.CallToolResult]]] = {
            "store": self._store,
            "recall": self._recall,
            "end_task": self._end_task,
        }
        fn = handler.get(call.tool.original_name)
        if fn is None:
            raise ContextError(f"unknown memory tool {call.tool.original_name!r}")
        return await fn(call)

    async def _store(self, call: CallContext) -> types.CallToolResult:
        agent = caller_agent(call)
        a = call.arguments
        mtype = a.get("type", "long_term")
        if mtype not in MEMORY_TYPES:
            raise ContextError(f"arguments.type: expected one of {', '.join(MEMORY_TYPES)}")
        ns = a.get("namespace") if mtype == "shared" else None
        if mtype == "shared" and not ns:
            raise ContextError("arguments.namespace: shared memory needs a namespace")
        decision = await self.s.access.check(
            call, "context/write", owner=agent, memory_type=mtype, namespace=ns
        )
        patterns = text_patterns(decision)
        raw_meta = a.get("metadata") or {}
        if not isinstance(raw_meta, dict):
            raise ContextError("arguments.metadata: expected an object")
        check_bounds(str(a.get("text", "")).strip(), raw_meta)  # before the costs that grow with size

        def prepared() -> tuple[str, dict[str, Any], int]:  # off the event loop: regexes over the text
            text, n = redact_text(str(a.get("text", "")), patterns)
            metadata, n_meta = redact_metadata(raw_meta, patterns)
            if mtype == "shared":
                self.s.access.screen_shared(call, agent, str(ns), text, metadata)
            return text, metadata, n + n_meta

        text, metadata, n_redacted = await self.s.run(prepared)
        ctx = AgentContext(
            text=text,
            memory_type=mtype,
            metadata=metadata,
            namespace=ns,
            session=call.session_id,
            task=a.get("task"),
        )
        who = call.principal.qualified
        item_id = await self.s.run(lambda: self.s.m.store_context(agent, ctx, who))
        self.s.audit(
            Event.MEMORY_STORED,
            call,
            {
                "id": item_id,
                "memory_type": mtype,
                "namespace": ns,
                "chars": len(text),
                "redacted": n_redacted,
                "metadata_keys": sorted(ctx.metadata),
            },
        )
        return _ok(
            f"stored {mtype} memory {item_id}"
            + (f" ({n_redacted} secret(s) redacted)" if n_redacted else ""),
            {"id": item_id, "type": mtype, "namespace": ns, "redacted": n_redacted},
        )

    async def _recall(self, call: CallContext) -> types.CallToolResult:
        agent = caller_agent(call)
        a = call.arguments
        mtypes = tuple(a.get("types") or MEMORY_TYPES)
        bad = [t for t in mtypes if t not in MEMORY_TYPES]
        if bad:
            raise ContextError(f"arguments.types: unknown memory type(s) {bad}")
        namespaces = tuple(a.get("namespaces") or ())
        if "shared" in mtypes and not namespaces:
            mtypes = tuple(t for t in mtypes if t != "shared")  # no namespace named: nothing shared to read
        for t in mtypes:
            if t != "shared":
                await self.s.access.check(call, "context/read", owner=agent, memory_type=t)
        for ns in namespaces if "shared" in mtypes else ():
            await self.s.access.check(call, "context/read", owner=agent, memory_type="shared", namespace=ns)
        q = ContextQuery(
            text=str(a.get("query", "")),
            memory_types=mtypes,
            filters=dict(a.get("filters") or {}),
            top_k=_int(a, "top_k", 5, 1, 100),
            min_score=float(a.get("min_score", 0.0)),
            namespaces=namespaces,
            session=call.session_id,
            task=a.get("task"),
        )
        items = await self.s.run(lambda: self.s.m.retrieve_context(agent, q))
        self.s.audit(
            Event.MEMORY_SEARCHED,
            call,
            {
                "memory_types": list(mtypes),
                "namespaces": list(namespaces),
                "results": len(items),
                "query_chars": len(q.text),
            },
        )
        return _within_cap([i.as_dict() for i in items], result_cap(call))

    async def _end_task(self, call: CallContext) -> types.CallToolResult:
        agent = caller_agent(call)
        task = str(call.arguments.get("task", ""))
        await self.s.access.check(call, "context/write", owner=agent, memory_type="working")
        n = self.s.m.end_task(agent, task)
        self.s.audit(Event.MEMORY_TASK_ENDED, call, {"task": task, "cleared": n})
        return _ok(f"task {task} ended: {n} working memories cleared", {"task": task, "cleared": n})

    async def read_resource(self, call: CallContext) -> types.ReadResourceResult:
        """``memory://{agent}/{type}[/{namespace}]``: the newest items, as JSON."""
        caller_agent(call)
        rest = call.target.removeprefix("memory://")
        parts = rest.split("/")
        if len(parts) not in (2, 3) or parts[1] not in MEMORY_TYPES:
            raise ContextError(
                f"{call.target}: expected memory://AGENT/TYPE with TYPE one of {', '.join(MEMORY_TYPES)}"
            )
        owner, mtype = parts[0], parts[1]
        ns = parts[2] if len(parts) == 3 else None
        if mtype == "shared" and not ns:
            raise ContextError(f"{call.target}: shared memory is read as memory://AGENT/shared/NAMESPACE")
        await self.s.access.check(call, "context/read", owner=owner, memory_type=mtype, namespace=ns)
        items = await self.s.run(lambda: self.s.m.list_items(owner, mtype, namespace=ns))
        self.s.audit(
            Event.MEMORY_READ,
            call,
            {"owner": owner, "memory_type": mtype, "namespace": ns, "results": len(items)},
        )
        text = json.dumps([i.as_dict() for i in items], ensure_ascii=False)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=call.target, text=text, mime_type="application/json")]
        )


class KnowledgeBuiltin:
    """``knowledge__search``, ``knowledge__context``, ``knowledge__answer`` and the ``rag`` prompt."""

    name = "knowledge"

    def __init__(self, service: MemoryService) -> None:
        self.s = service
        self._tools = [types.Tool.model_validate(t) for t in KNOWLEDGE_TOOLS]

    def tools(self) -> list[types.Tool]:
        return self._tools

    def prompts(self) -> list[types.Prompt]:
        return [types.Prompt.model_validate(RAG_PROMPT)]

    async def call(self, call: CallContext) -> types.CallToolResult:
        assert call.tool is not None
        name = call.tool.original_name
        if name == "search":
            return await self._search(call)
        if name == "context":
            res = await self._context(call)
            return _ok(
                res.context or "(no matching passages)",
                {"citations": res.citations},
                {"symbi/rag_timings_ms": res.timings_ms, "symbi/rag_tokens": res.tokens},
            )
        if name == "answer":
            return await self._answer(call)
        raise ContextError(f"unknown knowledge tool {name!r}")

    async def _bases(self, call: CallContext, asked: Any) -> list[str]:
        """The bases to search: named ones must each be allowed (``knowledge/search``), else
        every base the caller may search."""
        if asked is None:
            return await self.s.access.allowed_bases(call, await self.s.run(self.s.kb.names))
        if isinstance(asked, str):
            asked = [asked]
        if not isinstance(asked, list) or not all(isinstance(b, str) for b in asked):
            raise ContextError("arguments.bases: expected a list of knowledge base names")
        for b in asked:
            await self.s.access.check(call, "knowledge/search", owner=call.principal.agent, base=b)
        return list(asked)

    async def _search(self, call: CallContext) -> types.CallToolResult:
        caller_agent(call)
        a = call.arguments
        bases = await self._bases(call, [a.get("base")] if a.get("base") is not None else [])
        if not bases:
            raise ContextError("arguments.base: which knowledge base to search")
        k = _int(a, "top_k", 5, 1, 100)
        query = str(a.get("query", ""))
        res = await self.s.run(
            lambda: self.s.rag.run(query, bases=bases, top_k=k, filters=a.get("filters"), budget_tokens=10**9)
        )
        self.s.audit(
            Event.KNOWLEDGE_SEARCHED,
            call,
            {"bases": bases, "results": len(res.items), "query_chars": len(query)},
        )
        body = [i.as_dict() for i in res.items]
        return _ok(
            json.dumps(body, ensure_ascii=False), {"items": body}, {"symbi/rag_timings_ms": res.timings_ms}
        )

    async def _context(self, call: CallContext) -> RagResult:
        caller_agent(call)
        a = call.arguments
        bases = await self._bases(call, a.get("bases"))
        budget = _int(a, "budget_tokens", 1500, 50, 100_000)
        k = _int(a, "top_k", 8, 1, 50)
        query = str(a.get("query", ""))
        if not query.strip():
            raise ContextError("arguments.query: empty")
        res: RagResult = await self.s.run(
            lambda: self.s.rag.run(query, bases=bases, top_k=k, budget_tokens=budget)
        )
        self.s.audit(
            Event.KNOWLEDGE_SEARCHED,
            call,
            {"bases": bases, "results": len(res.items), "tokens": res.tokens, "query_chars": len(query)},
        )
        return res

    async def _answer(self, call: CallContext) -> types.CallToolResult:
        res = await self._context(call)
        query = str(call.arguments.get("query", ""))
        meta = {"symbi/rag_timings_ms": res.timings_ms, "symbi/citations": res.citations}
        session = call.downstream.session if call.downstream is not None else None
        sampling = session is not None and session.check_client_capability(
            types.ClientCapabilities(sampling=types.SamplingCapability())
        )
        if not sampling:
            meta["symbi/sampling"] = "unsupported"
            return _ok(
                f"{NO_SAMPLING_NOTE}\n\n{res.context}", {"answer": None, "citations": res.citations}, meta
            )
        assert session is not None
        params = types.CreateMessageRequestParams(
            messages=[
                types.SamplingMessage(
                    role="user", content=types.TextContent(type="text", text=rag_prompt(query, res.context))
                )
            ],
            max_tokens=_int(call.arguments, "max_tokens", 512, 16, 8192),
            system_prompt="Answer only from the numbered passages; cite them as [n]. Say so if they do not answer it.",
        )
        rid = call.downstream.request_id if call.downstream is not None else None
        try:
            reply = await session.send_request(
                types.CreateMessageRequest(params=params),
                types.CreateMessageResult,
                metadata=ServerMessageMetadata(related_request_id=rid) if rid is not None else None,
            )
        except Exception as e:  # noqa: BLE001 - no back channel (2026 clients), a refusal: the context still helps
            meta["symbi/sampling"] = {"error": type(e).__name__}
            return _ok(
                f"{NO_SAMPLING_NOTE}\n\n{res.context}", {"answer": None, "citations": res.citations}, meta
            )
        content = reply.content
        answer = (
            content.text
            if isinstance(content, types.TextContent)
            else json.dumps(
                content.model_dump(mode="json") if hasattr(content, "model_dump") else str(content)
            )
        )
        meta["symbi/sampling"] = {"model": reply.model}
        return _ok(answer, {"answer": answer, "citations": res.citations}, meta)

    async def get_prompt(self, call: CallContext) -> types.GetPromptResult:
        a = call.arguments
        call.arguments = {
            "query": a.get("query", ""),
            "bases": [b for b in str(a.get("bases", "")).split(",") if b] or None,
            "budget_tokens": _prompt_int(a.get("budget_tokens"), 1500),
        }
        res = await self._context(call)
        return types.GetPromptResult(
            description="Answer from the knowledge bases, with citations",
            messages=[
                types.PromptMessage(
                    role="user",
                    content=types.TextContent(
                        type="text", text=rag_prompt(str(a.get("query", "")), res.context)
                    ),
                )
            ],
        )


def _prompt_int(value: Any, default: int) -> int:
    """A prompt argument (a string) as an integer, or a refusal naming it (``int`` of a
    non-number raised a ValueError: an internal error instead of a reason)."""
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ContextError(f"arguments.budget_tokens: expected an integer, got {str(value)[:40]!r}") from None


def rag_prompt(query: str, context: str) -> str:
    return (
        f"Answer the question using only the passages below. Cite passages as [n].\n\n"
        f"Passages:\n{context or '(none found)'}\n\nQuestion: {query}"
    )


def retention_job(manager: ContextManager, interval_s: float) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """Purge long-term and shared memory past ``knowledge_retention_days``, every ``interval_s``."""

    async def run(gw: Any) -> None:
        while True:
            await anyio.sleep(interval_s)
            if not manager.store_in_use():
                continue  # memory never used here: nothing to purge, nothing to open
            try:
                await anyio.to_thread.run_sync(manager.purge)
            except ContextError as e:  # the store is down: try again next round
                record_acted(manager.events, Event.MEMORY_PURGE_FAILED, {"error": e.message})
            except AuditError as e:  # purged, its record refused (the log broken, deny): it ended
                # the job and the gateway with it; every call is refused meanwhile
                _logger.error("memory purged, its record refused: %s", e.message)

    return run


__all__ = ["PERSISTENT_TYPES", "KnowledgeBuiltin", "MemoryBuiltin", "MemoryService", "retention_job"]
