"""`POST /v1/embeddings`: the OpenAI Embeddings API, served through the gateway's accounting.

A model name resolves to an embedder: one the deployment named explicitly
(`create_proxy_app(embedders={"text-embedding-3-small": MiniLMEmbedder()})`, any object with
`async embed(texts) -> vectors`), else the gateway's own route for that name when it ends at
an OpenAI-compatible provider (its `/embeddings` endpoint, with the provider's credentials).
Usage and cost are priced by the gateway's `Pricing` and charged to the same budgets as chat
calls (key, session, user, team, tenant), reserved before the call and settled after it.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.errors import ConfigError, InvalidResponseError, ModelError, UnknownModelError
from bastion.gateway.proxy._codec import BadRequest
from bastion.types import ModelRequest, RunContext, Usage

MAX_INPUTS = 2048


class EmbeddingsBody(BaseModel):
    """`POST /v1/embeddings`. Token-array inputs are refused: the proxy cannot know which
    tokenizer produced them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def parse_embeddings_body(raw: bytes) -> tuple[EmbeddingsBody, list[str]]:
    from bastion.gateway.proxy._codec import _bad_request_from  # pyright: ignore[reportPrivateUsage]

    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON embeddings request", code="invalid_json")
    try:
        body = EmbeddingsBody.model_validate_json(raw)
    except ValidationError as e:
        raise _bad_request_from(e) from None
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise BadRequest("'input' is empty; send a string or a list of strings", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise BadRequest(
            "token-array inputs are not supported by Bastion's proxy; send the text as a string or a list of strings",
            param="input",
            code="unsupported_value",
        )
    strings = cast("list[str]", texts)
    if len(strings) > MAX_INPUTS:
        raise BadRequest(f"'input' has {len(strings)} items; send at most {MAX_INPUTS} per request", param="input")
    for i, text in enumerate(strings):
        if not text:
            raise BadRequest(f"input[{i}] is an empty string; every input must have text", param=f"input[{i}]")
    return body, strings


@dataclass(slots=True)
class Embedded:
    vectors: list[list[float]]
    input_tokens: int
    model: str  # the concrete model, priced by the gateway's `Pricing`


class ProxyEmbedder(Protocol):
    name: str

    async def embed(self, texts: list[str], *, dimensions: int | None, context: RunContext) -> Embedded: ...


def estimate_tokens(texts: Sequence[str]) -> int:
    """Roughly 4 bytes a token, as the gateway estimates prompts; at least one per input."""
    return sum(max(1, len(t.encode()) // 4) for t in texts)


class LocalEmbedder:
    """Wraps an in-process embedder (`bastion.memory` `MiniLMEmbedder`, `HashingEmbedder` ...).
    Its token counts are estimates; `dimensions` must equal its size (it cannot shorten)."""

    def __init__(self, name: str, embedder: Any) -> None:
        self.name = name
        self.embedder = embedder

    async def embed(self, texts: list[str], *, dimensions: int | None, context: RunContext) -> Embedded:
        dim = getattr(self.embedder, "dim", None)
        if dimensions is not None and isinstance(dim, int) and dimensions != dim:
            raise BadRequest(
                f"model {self.name!r} makes {dim}-dimensional vectors; omit 'dimensions' or set it to {dim}",
                param="dimensions",
            )
        vectors = [list(map(float, v)) for v in await self.embedder.embed(texts)]
        model = str(getattr(self.embedder, "name", self.name))
        return Embedded(vectors, estimate_tokens(texts), model)


class UpstreamEmbedder:
    """An OpenAI-compatible provider's `/embeddings`, reached with the provider's session and
    credentials (the gateway's model object for that deployment)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.name = str(model.name)

    async def embed(self, texts: list[str], *, dimensions: int | None, context: RunContext) -> Embedded:
        payload: dict[str, Any] = {"model": self.model.model_name, "input": texts, "encoding_format": "float"}
        if dimensions is not None:
            payload["dimensions"] = dimensions
        url = self.model.provider.base_url + "/embeddings"
        answer = await self.model.post_json(url, payload, ModelRequest(messages=[], context=context))
        try:
            data = sorted(answer["data"], key=lambda d: d["index"])
            vectors = [[float(x) for x in d["embedding"]] for d in data]
            usage = answer.get("usage") or {}
            tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidResponseError(f"malformed embeddings response from {self.name}: {e!r}", model=self.name) from e
        if len(vectors) != len(texts):
            raise InvalidResponseError(
                f"{self.name} returned {len(vectors)} embeddings for {len(texts)} inputs", model=self.name
            )
        return Embedded(vectors, tokens or estimate_tokens(texts), self.name)


def resolve_embedders(name: str, gateway: Any, embedders: Mapping[str, Any]) -> list[ProxyEmbedder]:
    """The embedders to try for `name`, in order (fallbacks of the gateway's route)."""
    if name in embedders:
        chosen = embedders[name]
        return [chosen if isinstance(chosen, LocalEmbedder | UpstreamEmbedder) else LocalEmbedder(name, chosen)]
    # Until the gateway publishes embeddings itself: follow its route for `name` to the models.
    router = getattr(gateway, "_router", None)
    if router is None:
        raise UnknownModelError(f"model {name!r} is not an embeddings model of this proxy")
    plan = router.plan_for(name, ModelRequest(messages=[]))  # UnknownModelError for unknown names
    found: list[ProxyEmbedder] = []
    for slot in plan.slots:
        for deployment in slot.deployments:
            model = deployment.model
            provider = getattr(model, "provider", None)
            if getattr(provider, "wire_format", None) == "openai_chat" and hasattr(model, "post_json"):
                found.append(UpstreamEmbedder(model))
    if not found:
        served = ", ".join(sorted(embedders)) or "none configured"
        raise UnknownModelError(
            f"model {name!r} has no embeddings endpoint: it is not served by an OpenAI-compatible provider. "
            f"Embeddings models here: {served}; a deployment adds one with create_proxy_app(embedders={{...}})"
        )
    return found


def _unpriced(model: str, scope: str) -> ConfigError:
    return ConfigError(
        f"embeddings model {model!r} has no known price, so the USD budget {scope!r} cannot be enforced on it: "
        f"the call was refused. Configure its price, e.g. Gateway(pricing={{{model!r}: {{'input': <usd/Mtok>}}}})"
    )


async def embed_charged(
    gateway: Any, candidates: Sequence[ProxyEmbedder], texts: list[str], dimensions: int | None, context: RunContext
) -> tuple[Embedded, float | None]:
    """Embed under the gateway's budgets: reserve the estimated prompt (priced at the dearest
    candidate), call, then settle what the provider reports. Returns the vectors and the cost."""
    from bastion.gateway._budget import Budget, Claim

    budgets = getattr(gateway, "budgets", None)
    pricing = getattr(gateway, "pricing", None)
    reservation = None
    if isinstance(budgets, Budget):
        charges = budgets.charges(context)
        if charges:
            prompt = estimate_tokens(texts)
            prompt_usd = 0.0
            usd_scope = next((key for key, limits in charges if limits.usd is not None), None)
            if usd_scope is not None:
                for candidate in candidates:
                    bound = pricing.bound(candidate.name, prompt, 0) if pricing is not None else None
                    if bound is None:
                        raise _unpriced(candidate.name, usd_scope)
                    prompt_usd = max(prompt_usd, bound[0])
            reservation = await budgets.reserve(charges, Claim(prompt, prompt_usd, 0, 0.0, 0))
    from bastion.tracing import spans

    result: Embedded | None = None
    with spans.embeddings(candidates[0].name, len(texts)) as span:
        try:
            error: Exception | None = None
            for candidate in candidates:
                try:
                    result = await candidate.embed(texts, dimensions=dimensions, context=context)
                    break
                except ModelError as e:  # the next deployment of the route, as chat calls fall back
                    error = e
            if result is None:
                assert error is not None
                raise error
        except BaseException:
            if isinstance(budgets, Budget) and reservation is not None:
                await budgets.settle(reservation, 0, 0.0)
            raise
        usage = Usage(input_tokens=result.input_tokens, requests=1)
        cost = pricing.cost(result.model, usage) if pricing is not None else None
        if isinstance(budgets, Budget) and reservation is not None:
            await budgets.settle(reservation, result.input_tokens, cost or 0.0)
        dims = len(result.vectors[0]) if result.vectors else None
        span.record_usage(usage, dimensions=dims, cost_usd=cost)
    return result, cost


def _fit(vector: list[float], dimensions: int | None) -> list[float]:
    # An upstream that ignored `dimensions` (most compatible servers) is shortened here the way
    # OpenAI's text-embedding-3 models do it: truncate, then re-normalise.
    if dimensions is None or len(vector) <= dimensions:
        return vector
    cut = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in cut)) or 1.0
    return [x / norm for x in cut]


def embeddings_json(body: EmbeddingsBody, result: Embedded) -> dict[str, Any]:
    data: list[dict[str, Any]] = []
    for i, vector in enumerate(result.vectors):
        vector = _fit(vector, body.dimensions)
        embedding: Any = vector
        if body.encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": result.input_tokens, "total_tokens": result.input_tokens},
    }


__all__ = [
    "Embedded",
    "EmbeddingsBody",
    "LocalEmbedder",
    "ProxyEmbedder",
    "UpstreamEmbedder",
    "embed_charged",
    "embeddings_json",
    "estimate_tokens",
    "parse_embeddings_body",
    "resolve_embedders",
]
