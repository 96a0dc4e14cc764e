"""Attack (session 40): one agent burned the CPU every memory call shares with one query.

A query's length had no bound (4 MB fit a request) and every stage paid for it: the local
model's tokenizer read all of it before cutting to its 256 tokens (3.5 MB: 6.7 s, 5 ms for a
sentence), and BM25 scored every chunk of a base once per distinct keyword in a Python loop:
20,000 identifier-like words (129 KB) against a 4,000-chunk base held a worker thread for 76 s
in ``knowledge__context`` (50 s in ``knowledge__search``), past the call's 300 s budget at
4 MB. Those threads (``runtime.scheduler_threads``) serve every principal's memory, code tools
and key lookups. Now a query is at most ``MAX_QUERY_CHARS`` and BM25 reads at most
``MAX_KEYWORDS`` of its words, identifiers first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ContextError
from gateway.memory.manager import MAX_QUERY_CHARS, ContextManager
from gateway.memory.rag import MAX_KEYWORDS, RagPipeline
from tests.memory.test_gateway_memory import ALICE, _config, call, gateway

pytestmark = pytest.mark.anyio

HUGE = " ".join(f"w{i}" for i in range(20_000))  # 128,889 characters of identifier-like words


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("memory__recall", {}),
        ("knowledge__search", {"base": "docs"}),
        ("knowledge__context", {}),
        ("knowledge__answer", {}),
    ],
)
async def test_a_query_past_the_bound_is_refused_before_any_work(
    tmp_path: Path, tool: str, args: dict[str, str]
) -> None:
    async with gateway(_config(tmp_path)) as gw:
        with pytest.raises(ContextError):
            await call(gw, ALICE, tool, query=HUGE, **args)
        ok = await call(gw, ALICE, tool, query="w1 " * (MAX_QUERY_CHARS // 3), **args)
        assert not ok.is_error  # a long query within the bound still works


def test_bm25_reads_a_bounded_number_of_keywords_identifiers_first(manager: ContextManager) -> None:
    words = " ".join(f"plain{chr(97 + i % 26)}{chr(97 + i // 26 % 26)}" for i in range(600))
    q = RagPipeline(manager).analyse(f"{words} error-E1234 flag_x")
    assert len(q.keywords) == MAX_KEYWORDS and q.keywords[:2] == ("error-e1234", "flag_x")
    short = RagPipeline(manager).analyse("where is flag_x set")
    assert short.keywords == ("flag_x", "set")  # a query under the bound keeps its words


async def test_a_rag_prompt_budget_that_is_not_a_number_is_refused_with_a_reason(tmp_path: Path) -> None:
    from gateway.context import CallContext

    async with gateway(_config(tmp_path)) as gw:
        with pytest.raises(ContextError):
            await gw.call(
                CallContext(
                    principal=ALICE,
                    kind="prompts/get",
                    target="knowledge__rag",
                    arguments={"query": "where do bikes go", "budget_tokens": "lots"},
                    upstream=gw.upstream_info("knowledge"),
                )
            )
