"""bench/_common.write_gateway_config for another checkout (``--baseline-tree``): keys that
tree's config refuses are left out, keys it knows are kept, and the result loads. The older
tree is this one's key set minus the lane switches (a real older checkout is not in a fresh
clone); the key set itself is asked of this tree's real config model in a subprocess."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from bench import _common, _machine
from bench._common import ROOT, accepted_keys, keep_accepted, write_gateway_config
from gateway.config.load import load_config
from gateway.errors import ConfigError

SERVERS = '[servers.everything]\ncommand = "node"\nargs = ["x.js"]\nverification = "off"\n'
EXTRA = '[mcp]\ntool_verification = "off"\nstdio_fast_lane = false\n'


def test_this_trees_keys_include_tables_keys_and_dict_entries() -> None:
    keys = accepted_keys(ROOT)
    assert {
        "mcp",
        "mcp.stdio_fast_lane",
        "gateway.stdio_principal.id",
        "servers.*",
        "servers.*.verification",
    } <= keys
    assert "mcp.no_such_key" not in keys


def test_unknown_keys_and_tables_are_dropped_known_ones_kept() -> None:
    older = accepted_keys(ROOT) - {"mcp.stdio_fast_lane", "sandbox"}
    text = "[sandbox]\ncode_tools = false\n" + EXTRA + SERVERS
    kept, dropped = keep_accepted(text, frozenset(older))
    assert dropped == ["sandbox", "mcp.stdio_fast_lane"]
    assert "stdio_fast_lane" not in kept and "code_tools" not in kept
    assert 'tool_verification = "off"' in kept and 'verification = "off"' in kept


def test_config_for_an_older_tree_leaves_out_what_it_refuses_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = write_gateway_config(tmp_path / "full", SERVERS, extra=EXTRA)
    assert "stdio_fast_lane" in full.read_text()
    older = frozenset(accepted_keys(ROOT) - {"mcp.stdio_fast_lane"})
    monkeypatch.setitem(_common._ACCEPTED, tmp_path.resolve(), older)  # tmp_path stands for an older tree
    cfg = write_gateway_config(tmp_path / "old", SERVERS, extra=EXTRA, tree=tmp_path)
    assert "stdio_fast_lane" not in cfg.read_text()
    loaded = load_config(cfg, {})
    assert loaded.mcp.tool_verification == "off" and loaded.servers["everything"].verification == "off"
    # an unknown key is what an older tree's loader refuses (its model forbids extras)
    bad = tmp_path / "bad.toml"
    bad.write_text(full.read_text().replace("stdio_fast_lane = false", "stdio_fast_lane_x = false"))
    with pytest.raises(ConfigError):
        load_config(bad, {})


def test_machine_speed_is_an_ordered_positive_reading() -> None:
    speed = _machine.machine_speed(samples=3, n=20_000)
    assert set(speed) == {"loop_mops_min", "loop_mops_median", "loop_mops_max"}
    assert 0 < speed["loop_mops_min"] <= speed["loop_mops_median"] <= speed["loop_mops_max"]
    assert "machine_speed" in _machine.host()


def test_interleaved_sequential_calls_alternate_the_targets_and_check_every_reply() -> None:
    seen: list[str] = []

    def target(name: str, reply: Callable[[str], str]) -> _common.Call:
        async def call(msg: str) -> str | None:
            seen.append(name)
            return reply(msg)

        return call

    def echo(msg: str) -> str:
        return f"Echo: {msg}"

    calls = {"a": target("a", echo), "b": target("b", lambda msg: "Echo: someone else's")}
    out = anyio.run(_common.interleaved_sequential_calls, calls, 5, "t", echo, 2)
    # slices of 2 timed calls, each opened by one untimed call, the targets taking turns
    assert seen == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3 + ["a"] * 2 + ["b"] * 2
    assert out["a"].calls == 5 and out["a"].ok == 5 and out["a"].errors == 0
    assert out["b"].ok == 0 and out["b"].errors == 8  # every reply checked, the openers' too
    assert out["a"].wall_s > 0
