"""The ``[context]`` section: agent memory and knowledge (``gateway/memory``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.sections import Section
from gateway.config.sizes import parse_size

LOCAL_MODEL_DIMENSION = 384  # all-MiniLM-L6-v2 (gateway/memory/embed.py OnnxMiniLM)


class ContextSection(Section):
    """Agent memory and knowledge (``gateway/memory``): the memory__* / knowledge__* built-ins."""

    enabled: bool = True  # the memory__* and knowledge__* built-in tools
    vector_db_url: str | None = None  # a Qdrant server; unset: the embedded store in the data dir
    embedded_store: Literal["edge", "local"] = "edge"  # Qdrant Edge (HNSW) | qdrant-client local mode
    embedding_dimension: int = Field(default=384, ge=1)
    embedder: Literal["auto", "local", "openai", "hashing"] = "auto"  # auto: openai when a key is set
    embedding_model: str = "text-embedding-3-small"  # the OpenAI-compatible endpoint's model
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = Field(default=None, repr=False)  # from OPENAI_API_KEY
    context_cache_size: int = Field(default=64 * 10**6, ge=0)  # bytes of short-term memory ("1GB" accepted)
    short_term_ttl_s: float = Field(default=3600.0, gt=0)
    knowledge_retention_days: int = Field(default=365, ge=0)  # long-term memory kept this long; 0 = forever
    purge_interval_s: float = Field(default=3600.0, gt=0)  # how often the retention job runs
    # per principal, past which a new memory is refused (nothing held is dropped): the working
    # memory its agents hold in this process (bytes, "16MB" accepted), and the long-term and
    # shared memories it keeps in the store (each at most 32,000 characters)
    working_memory_per_principal: int = Field(default=16 * 1024 * 1024, ge=1)
    max_memories_per_principal: int = Field(default=10_000, ge=1)
    # a principal's share of context_cache_size (default a quarter): past it its own oldest
    # short-term memories go first, so one storing without end cannot evict the others'
    short_term_per_principal: int | None = Field(default=None, ge=1)

    @field_validator("context_cache_size", "working_memory_per_principal", mode="before")
    @classmethod
    def _size(cls, v: object) -> int:
        return parse_size(v)

    @field_validator("short_term_per_principal", mode="before")
    @classmethod
    def _share(cls, v: object) -> int | None:
        return None if v is None else parse_size(v)

    @model_validator(mode="after")
    def _embedder_fits_dimension(self) -> ContextSection:
        # checked at start, not at the first memory call: a gateway that would fail every
        # memory call (or an embedder asked for a key it lacks) does not start
        if not self.enabled:
            return self
        kind = self.embedder_kind
        if kind == "local" and self.embedding_dimension != LOCAL_MODEL_DIMENSION:
            raise ValueError(
                f"context.embedding_dimension = {self.embedding_dimension}, but the local model "
                f"(all-MiniLM-L6-v2, used when no OPENAI_API_KEY is set) makes {LOCAL_MODEL_DIMENSION}-d "
                "vectors: set OPENAI_API_KEY for an OpenAI-compatible endpoint, or embedding_dimension = 384"
            )
        if kind == "openai" and not self.openai_api_key:
            raise ValueError('context.embedder = "openai" needs OPENAI_API_KEY (or context.openai_api_key)')
        return self

    @property
    def embedder_kind(self) -> Literal["local", "openai", "hashing"]:
        """The embedder in use: ``auto`` is openai when a key is set, else the local model."""
        return embedder_in_use(self.embedder, self.openai_api_key)

    def idle_keys(self) -> list[str]:
        """Keys given (``model_fields_set``) that nothing reads in this configuration: the
        embedded store's with a Qdrant server, the OpenAI endpoint's with another embedder.
        With ``enabled = false`` every key but ``enabled`` (the section serves nothing)."""
        given = self.model_fields_set
        if not self.enabled:
            return [f"context.{k} (context.enabled = false)" for k in sorted(given - {"enabled"})]
        idle: list[str] = []
        if self.vector_db_url is not None and "embedded_store" in given:
            idle.append("context.embedded_store (vector_db_url, or QDRANT_URL, names a Qdrant server)")
        if self.embedder_kind != "openai":
            why = f"the {self.embedder_kind} embedder is used"
            if self.embedder == "auto":
                why += ": no OPENAI_API_KEY"
            openai = ("openai_api_key", "openai_base_url", "embedding_model")
            idle += [f"context.{k} (an OpenAI-compatible endpoint's; {why})" for k in openai if k in given]
        return idle

    @field_validator("vector_db_url", "openai_base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


def embedder_in_use(
    embedder: Literal["auto", "local", "openai", "hashing"], openai_api_key: object
) -> Literal["local", "openai", "hashing"]:
    """``embedder`` as configured, ``auto`` resolved: openai when a key is set, else local (the
    loader asks it of the raw file too, before the environment's OpenAI variables apply)."""
    if embedder == "auto":
        return "openai" if openai_api_key else "local"
    return embedder
