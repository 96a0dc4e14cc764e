"""``knowledge__answer`` through a real SDK client that implements sampling, over ``symbi mcp``.

The client's "model" is the test's sampling callback (the seam that cannot be a real LLM
here): it answers from the passages the gateway sent, so the test can check that the context
reached the client's model and the model's answer came back as the tool result.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, stdio_client, types

from tests.conftest import SYMBI, symbi_env, write_config
from tests.memory.conftest import CORPUS
from tests.server._clients import gateway_params

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _config(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path, '[sandbox]\ncode_tools = false\n[context]\nembedder = "hashing"\n')
    r = subprocess.run(
        [str(SYMBI), "knowledge", "add", "handbook", str(CORPUS), "--glob", "*.md", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
        env=symbi_env(),
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return cfg


async def test_answer_is_written_by_the_clients_model(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    asked: list[types.CreateMessageRequestParams] = []

    async def model(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(params)
        prompt = params.messages[0].content.text  # type: ignore[union-attr]
        n = next(m.group(1) for m in re.finditer(r"\[(\d+)\] \([^)]*Bicycles\)", prompt))
        return types.CreateMessageResult(
            role="assistant",
            model="test-model",
            content=types.TextContent(type="text", text=f"In the basement cage [{n}]."),
        )

    async with stdio_client(gateway_params(cfg)) as (r, w), ClientSession(r, w, sampling_callback=model) as s:
        await s.initialize()
        res = await s.call_tool(
            "knowledge__answer", {"query": "where can I park my bike?", "bases": ["handbook"]}
        )
        assert not res.is_error, res
        assert res.content[0].text.startswith("In the basement cage [")  # type: ignore[union-attr]
        assert res.meta["symbi/sampling"] == {"model": "test-model"}  # type: ignore[index]
        assert any("Bicycles" in c["citation"] for c in res.meta["symbi/citations"])  # type: ignore[index]
    assert len(asked) == 1 and "Question: where can I park my bike?" in asked[0].messages[0].content.text  # type: ignore[union-attr]


async def test_without_sampling_the_context_comes_back_with_a_note(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    async with stdio_client(gateway_params(cfg)) as (r, w), ClientSession(r, w) as s:
        await s.initialize()
        res = await s.call_tool("knowledge__answer", {"query": "where can I park my bike?"})
        assert not res.is_error, res
        assert res.meta["symbi/sampling"] == "unsupported"  # type: ignore[index]
        assert "[1] (handbook:" in res.content[0].text  # type: ignore[union-attr]
