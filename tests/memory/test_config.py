"""The seed's [context] keys in the seed's forms, and what each one changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.load import build_config
from gateway.errors import ConfigError
from gateway.events import LoggingSink
from gateway.memory.build import build_manager
from gateway.memory.embed import HashingEmbedder, OpenAIEmbedder


def test_seed_forms_are_accepted() -> None:
    cfg = build_config(
        {
            "context": {
                "vector_db_url": "http://localhost:6333",
                "embedding_dimension": 1536,
                "context_cache_size": "1GB",
                "knowledge_retention_days": 365,
            }
        },
        environ={"OPENAI_API_KEY": "sk-test"},  # the seed's 1536-d vectors come from the OpenAI endpoint
    )
    assert cfg.context.context_cache_size == 10**9 and cfg.context.embedding_dimension == 1536
    assert (
        build_config({"context": {"context_cache_size": "512MiB"}}).context.context_cache_size == 512 * 2**20
    )
    assert build_config({"context": {"context_cache_size": 4096}}).context.context_cache_size == 4096


@pytest.mark.parametrize(
    "bad",
    [
        {"context_cache_size": "1 parsec"},
        {"context_cache_size": True},
        {"vector_db_url": "localhost:6333"},
        {"embedder": "word2vec"},
        {"knowledge_retention_days": -1},
    ],
)
def test_bad_values_name_the_key(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"context": bad})
    assert any(next(iter(bad)) in r for r in e.value.reasons)


@pytest.mark.parametrize(
    "context",
    [
        {"embedding_dimension": 1536},  # auto without OPENAI_API_KEY: the 384-d local model
        {"embedder": "local", "embedding_dimension": 768},
        {"embedder": "openai"},  # no key
    ],
)
def test_an_embedder_that_cannot_work_stops_the_start(context: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"context": context})
    assert any("context.embed" in r for r in e.value.reasons)
    with pytest.raises(ConfigError) as off:  # with memory off the keys have no effect: refused too
        build_config({"context": {**context, "enabled": False}})
    assert any(f"context.{next(iter(context))}" in r for r in off.value.reasons)
    assert build_config({"context": {"enabled": False}}).context.enabled is False


def test_environment_sets_the_server_and_the_openai_key() -> None:
    cfg = build_config(
        {},
        environ={
            "QDRANT_URL": "http://127.0.0.1:6333",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        },
    )
    assert cfg.context.vector_db_url == "http://127.0.0.1:6333"
    assert cfg.context.openai_api_key == "sk-test" and "sk-test" not in repr(cfg.context)
    m = build_manager(cfg, LoggingSink())
    assert isinstance(m.embedder, OpenAIEmbedder)  # auto + a key: the OpenAI-compatible endpoint


def test_every_key_takes_effect(tmp_path: Path) -> None:
    cfg = build_config(
        {
            "gateway": {"data_dir": str(tmp_path)},
            "context": {
                "embedder": "hashing",
                "embedding_dimension": 128,
                "context_cache_size": "2kB",
                "short_term_ttl_s": 5,
                "knowledge_retention_days": 7,
                "embedded_store": "local",
            },
        }
    )
    m = build_manager(cfg, LoggingSink())
    assert isinstance(m.embedder, HashingEmbedder) and m.embedder.dimension == 128
    assert (
        m.settings.cache_bytes == 2000 and m.settings.short_term_ttl_s == 5 and m.settings.retention_days == 7
    )
    assert m.store.backend == "qdrant-local" and (tmp_path / "vectors-local").is_dir()
    m.close()
