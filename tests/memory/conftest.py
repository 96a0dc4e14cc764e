"""Shared fixtures: the default local embedding model (loaded once), the test corpus."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.memory.embed import HashingEmbedder, OnnxMiniLM
from gateway.memory.manager import ContextManager
from gateway.memory.store import CollectionSpec, EdgeStore

CORPUS = Path(__file__).parent / "corpus"


@functools.cache
def _loaded_minilm() -> OnnxMiniLM:
    return OnnxMiniLM()


@pytest.fixture(scope="session")
def minilm() -> OnnxMiniLM:
    # loaded once per process, not per session: mutation testing runs a pytest session per
    # mutant in processes forked from one that already loaded it (single-threaded onnxruntime
    # sessions keep working in a forked child)
    return _loaded_minilm()


@pytest.fixture(scope="session")
def hashing() -> HashingEmbedder:
    return HashingEmbedder(384)


@pytest.fixture(scope="session")
def questions() -> list[tuple[str, str, str]]:
    """(paraphrase question, file, heading of the passage that answers it)."""
    return [tuple(q) for q in json.loads((CORPUS / "questions.json").read_text())]


class Clock:
    """An injected clock: tests move time instead of waiting."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ContextManager]:
    """A context manager on an embedded store in ``tmp_path`` with the hashing embedder."""
    emb = HashingEmbedder(64)
    spec = CollectionSpec("kb", emb.dimension, emb.id)
    m = ContextManager(lambda: EdgeStore(spec, tmp_path / "v"), lambda: emb, clock=Clock())
    yield m
    m.close()
