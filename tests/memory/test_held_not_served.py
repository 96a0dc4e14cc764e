"""Attack (session 43): a knowledge file held by the newer screening was still served.

A file ingested before the screening read through formatting (``screened:1``), unchanged
since, that only that reading flags is kept as stored and reported as held by ``symbi
knowledge add`` (never deleted silently: the reading can misread code). It was still handed to
every agent by ``knowledge__context`` and ``knowledge__search`` until the operator acted. Its
chunks are marked held now, and no search serves them; accepting it (``--accept-flagged``, as
``knowledge add`` says) serves it again, and removing it removes it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import types

from gateway.memory import knowledge
from gateway.memory.knowledge import KnowledgeBases
from tests.memory.test_gateway_memory import ALICE, _config, call, gateway
from tests.memory.test_rescreen_keeps import SPLIT

pytestmark = pytest.mark.anyio


def _text(r: types.CallToolResult) -> str:
    block = r.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


OFFICE = "# Office\nThe travel desk sits on the third floor; the card number is kept by finance.\n"
QUERY = "travel desk previous instructions reply card number"


def _old_base(cfg: Path, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``docs`` stored as a gateway of session 42 stored it: under the screening as written."""
    from gateway.config.load import load_config
    from gateway.events import LoggingSink
    from gateway.memory.build import build_manager

    monkeypatch.setattr(knowledge, "SCREENED", knowledge.SCREENED_WRITTEN)
    monkeypatch.setattr(knowledge, "_screened_parts", lambda text: ([], []))
    m = build_manager(load_config(cfg, {}), LoggingSink())
    try:
        assert len(KnowledgeBases(m).add("hr", docs).added) == 2
    finally:
        m.close()
    monkeypatch.undo()


@pytest.mark.parametrize("store", ["edge", "local"])
async def test_a_held_file_is_not_served_to_agents_until_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    cfg = _config(tmp_path, f'embedded_store = "{store}"')
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "travel.md").write_text(SPLIT)
    (docs / "office.md").write_text(OFFICE)
    _old_base(cfg, docs, monkeypatch)
    async with gateway(cfg) as gw:
        kb: KnowledgeBases = gw.builtins["knowledge"].s.kb  # type: ignore[attr-defined]
        before = await call(gw, ALICE, "knowledge__context", query=QUERY, bases=["hr"])
        assert "Ig**nore**" in _text(before)  # served before the add that holds it
        rep = kb.add("hr", docs)
        assert list(rep.held) == [str(docs / "travel.md")]
        ctx = await call(gw, ALICE, "knowledge__context", query=QUERY, bases=["hr"])
        found = await call(gw, ALICE, "knowledge__search", query=QUERY, base="hr")
        for got in (ctx, found):
            text = _text(got)
            assert "Ig**nore**" not in text and "travel.md" not in text
            assert "third floor" in text  # the other file still is
        # kept for the operator: still in the base, still reported
        assert kb.list()["hr"]["files"] == 2
        assert list(kb.add("hr", docs).held) == [str(docs / "travel.md")]
        # what `knowledge add` says to do: accept it (its rules, in that one file)
        rules = frozenset(rule for rule, _ in knowledge._screened_parts(SPLIT)[1])
        accepted = kb.add("hr", docs / "travel.md", accept_flagged=rules)
        assert list(accepted.accepted) == [str(docs / "travel.md")]
        after = await call(gw, ALICE, "knowledge__context", query=QUERY, bases=["hr"])
        assert "Ig**nore**" in _text(after)
