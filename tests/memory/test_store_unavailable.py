"""A Qdrant server that fails after the gateway opened its collection (down for maintenance,
overloaded, out of disk): memory calls are refused with a reason, the gateway stays up.

The server is ``tests.memory.qdrant_stand_in`` (no Qdrant server is installable here); the
gateway is the real one (``make_gateway``, policies.rego, the audit log), its store the real
``QdrantClientStore`` over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from gateway.boundary import error_result
from gateway.config.load import load_config
from gateway.errors import VectorStoreUnavailable
from gateway.memory.build import COLLECTION, embedder_factory
from gateway.memory.store import CollectionSpec, EdgeStore
from tests.local_http import serving
from tests.memory.qdrant_stand_in import QdrantStandIn
from tests.memory.test_gateway_memory import ALICE, _config, audit_records, call, gateway

pytestmark = pytest.mark.anyio


async def test_a_failing_qdrant_server_refuses_memory_calls_and_the_gateway_stays_up(tmp_path: Path) -> None:
    """Attack (session 36): the store's errors were the client library's own exceptions, not
    the gateway's: the retention job (which expects a ``ContextError`` from a store that is
    down) raised out of its task, and the gateway's task group took every session down with
    it; a memory call failed as an unexplained internal error."""
    probe = _config(tmp_path)
    emb = embedder_factory(load_config(probe, {}))()
    with serving(QdrantStandIn(CollectionSpec(COLLECTION, emb.dimension, emb.id))) as q:
        cfg = _config(
            tmp_path, f'vector_db_url = "{q.url}"\nknowledge_retention_days = 1\npurge_interval_s = 0.05'
        )
        async with gateway(cfg) as gw:
            r = await call(gw, ALICE, "memory__store", text="the printer is on floor 3", type="long_term")
            assert not r.is_error and len(q.points) == 1
            q.failing = True
            seen = len(q.requests)
            for _ in range(200):  # bounded: the retention job asks every 0.05 s
                if len(q.requests) >= seen + 3:
                    break
                await anyio.sleep(0.05)
            assert len(q.requests) >= seen + 3  # three rounds of the job met the failing server
            with pytest.raises(VectorStoreUnavailable):
                await call(gw, ALICE, "memory__store", text="another note", type="long_term")
            with pytest.raises(VectorStoreUnavailable):
                await call(gw, ALICE, "memory__recall", query="printer", types=["long_term"])
            r = await call(gw, ALICE, "memory__store", text="scratch", type="short_term")
            assert not r.is_error  # the gateway still serves (volatile memory needs no store)
            q.failing = False
            r = await call(gw, ALICE, "memory__store", text="back again", type="long_term")
            assert not r.is_error and len(q.points) == 2
    assert audit_records(cfg, "memory.purge_failed")
    calls = [x for x in audit_records(cfg, "tool.call") if x.get("error_code") == "vector_store_unavailable"]
    assert len(calls) == 2


async def test_an_embedded_store_that_cannot_be_opened_does_not_name_the_data_dir_to_agents(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Session 43: ``VectorStoreUnavailable`` for an embedded store that cannot be opened (here
    another process holds its lock) named the gateway's data dir in the error result an agent
    reads. The path is logged, for the operator; the agent reads "<data dir>"."""
    cfg = _config(tmp_path)
    config = load_config(cfg, {})
    emb = embedder_factory(config)()
    data_dir = config.gateway.data_dir
    holder = EdgeStore(CollectionSpec(COLLECTION, emb.dimension, emb.id), data_dir / "vectors" / COLLECTION)
    try:
        async with gateway(cfg) as gw:
            with pytest.raises(VectorStoreUnavailable) as e:
                await call(gw, ALICE, "memory__store", text="the printer is on floor 3", type="long_term")
    finally:
        holder.close()
    r = error_result(e.value)  # what the MCP front hands the agent
    told = json.dumps([r.content[0].model_dump(), r.meta])
    assert str(data_dir) not in told and str(data_dir.resolve()) not in told
    assert str(data_dir) in caplog.text or str(data_dir.resolve()) in caplog.text


def test_a_data_dir_quoted_with_escapes_is_replaced_too() -> None:
    """A store library may name the path as a repr or as JSON: a data dir with a quote or a
    backslash in it then reads escaped, and was passed to agents as it came."""
    from gateway.memory.guard import unplaced

    data_dir = '/srv/sym\'bi\\data "x"'
    err = VectorStoreUnavailable(
        f"cannot open {data_dir!r}/vectors", reasons=[f"path {json.dumps(data_dir)} is locked"]
    )
    out = unplaced(err, [data_dir])
    assert isinstance(out, VectorStoreUnavailable)
    told = " ".join((out.message, *out.reasons))
    assert "sym" not in told and "<data dir>" in told
