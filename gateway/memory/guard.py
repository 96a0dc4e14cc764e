"""A vector store whose failures are the gateway's: ``VectorStoreUnavailable``, with a reason.

Once a collection is open, qdrant-client raises its own exceptions (``UnexpectedResponse`` for
a server answering 5xx, ``ResponseHandlingException`` for one that is gone) and Qdrant Edge its
own (a full disk, a damaged segment). Passed on as they came, a memory call failed as an
unexplained internal error, and the retention job, which expects a ``ContextError`` from a
store that is down, raised out of its task and took the gateway (every session) down with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from gateway.errors import ContextError, VectorStoreUnavailable
from gateway.memory.store import Filter, Hit, Point, VectorStore

T = TypeVar("T")
_logger = logging.getLogger("symbi.memory")


def unplaced(err: ContextError, hide: Sequence[str]) -> ContextError:
    """``err`` with the paths in ``hide`` (the gateway's data dir) replaced: its message and
    reasons reach agents in a tool's error result. The log keeps them whole, for the operator."""
    texts = (err.message, *err.reasons)
    # a library may quote the path as a repr or as JSON (quotes, backslashes escaped)
    forms = {f for p in hide if p for f in (p, repr(p)[1:-1], json.dumps(p)[1:-1])}
    if not any(p in t for p in forms for t in texts):
        return err
    _logger.error("vector store: %s", err.message)

    def scrub(text: str) -> str:
        for p in sorted(forms, key=len, reverse=True):
            text = text.replace(p, "<data dir>")
        return text

    return type(err)(scrub(err.message), reasons=[scrub(r) for r in err.reasons])


class GuardedStore:
    """``VectorStore`` over ``inner``; every other attribute (``indexed``...) is ``inner``'s."""

    def __init__(self, inner: VectorStore, where: str, hide: Sequence[str] = ()) -> None:
        self.inner = inner
        self.where = where
        self.hide = hide
        self.backend = inner.backend

    def _do(self, op: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ContextError as e:
            raise unplaced(e, self.hide) from e
        except Exception as e:  # whatever the client library raises: refused, with why
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise unplaced(
                VectorStoreUnavailable(
                    f"vector store {self.where}: {op} failed: {first}",
                    reasons=[f"the vector store ({self.backend}) cannot be used: {type(e).__name__}"],
                ),
                self.hide,
            ) from e

    def set_payload(self, filter: Filter, payload: Mapping[str, Any]) -> None:
        self._do("set_payload", lambda: self.inner.set_payload(filter, payload))

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
