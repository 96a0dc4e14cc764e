"""A vector store whose failures are the gateway's: ``VectorStoreUnavailable``, with a reason.

Once a collection is open, qdrant-client raises its own exceptions (``UnexpectedResponse`` for
a server answering 5xx, ``ResponseHandlingException`` for one that is gone) and Qdrant Edge its
own (a full disk, a damaged segment). Passed on as they came, a memory call failed as an
unexplained internal error, and the retention job, which expects a ``ContextError`` from a
store that is down, raised out of its task and took the gateway (every session) down with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gateway.errors import ContextError, VectorStoreUnavailable
from gateway.memory.store import Filter, Hit, Point, VectorStore

T = TypeVar("T")


class GuardedStore:
    """``VectorStore`` over ``inner``; every other attribute (``indexed``...) is ``inner``'s."""

    def __init__(self, inner: VectorStore, where: str) -> None:
        self.inner = inner
        self.where = where
        self.backend = inner.backend

    def _do(self, op: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ContextError:
            raise
        except Exception as e:  # whatever the client library raises: refused, with why
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise VectorStoreUnavailable(
                f"vector store {self.where}: {op} failed: {first}",
                reasons=[f"the vector store ({self.backend}) cannot be used: {type(e).__name__}"],
            ) from e

    def upsert(self, points: Sequence[Point]) -> None:
        self._do("upsert", lambda: self.inner.upsert(points))

    def search(
        self,
        vector: Sequence[float],
        *,
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        return self._do(
            "search",
            lambda: self.inner.search(
                vector, limit=limit, filter=filter, score_threshold=score_threshold, exact=exact
            ),
        )

    def delete(self, *, ids: Sequence[str] | None = None, filter: Filter | None = None) -> None:
        self._do("delete", lambda: self.inner.delete(ids=ids, filter=filter))

    def count(self, filter: Filter | None = None) -> int:
        return self._do("count", lambda: self.inner.count(filter))

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        return self._do("retrieve", lambda: self.inner.retrieve(ids, with_vectors=with_vectors))

    def scroll(
        self,
        filter: Filter | None = None,
        *,
        limit: int = 10_000,
        newest_by: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Point]:
        return self._do(
            "scroll", lambda: self.inner.scroll(filter, limit=limit, newest_by=newest_by, fields=fields)
        )

    def optimize(self) -> None:
        self._do("optimize", self.inner.optimize)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
