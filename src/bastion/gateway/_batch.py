"""Batch APIs: bulk and deferred model calls at the providers' batch rates (about half price).

`Gateway.batch(requests, model)` sends many requests as one provider batch and waits for it:
OpenAI's Batch API (a JSONL file uploaded with `POST /files`, `POST /batches`, poll
`GET /batches/{id}`, then the output and error files) or Anthropic's Message Batches
(`POST /messages/batches`, poll, then the JSONL results). Every request is reserved against the
budgets up front at its worst case, like a synchronous call, and settled with its own result;
each result is priced at batch rates and mapped back to its request by custom id.

Durable: the batch is recorded in a `BatchStore` under a client-side key before it is submitted
(by default a hash of the tenant, model and requests; `key=` names it explicitly), and the
provider's batch id is added when the provider answers. A process that restarts and asks for
the same batch again polls the recorded id instead of submitting it twice. A batch asked for
again after it ended returns the same results, except that requests that expired or failed on
the provider's side go out again as a new batch (under `<key>.retry`).

What it is not: a fallback chain. A batch goes to the first model of the target's plan; a
model without a batch API (Gemini, local, test doubles) is refused with a `UserError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bastion.errors import (
    InvalidResponseError,
    ModelError,
    ModelHTTPError,
    ModelTimeoutError,
    ProviderUnavailableError,
    RateLimitError,
    UserError,
)
from bastion.gateway._batch_store import BatchItem, BatchRecord, BatchStore
from bastion.gateway._budget import BudgetLimits, Reservation
from bastion.gateway.formats._base import JSON, HTTPModel, http_error, unavailable
from bastion.types import ModelRequest, ModelResponse

if TYPE_CHECKING:
    from bastion.gateway._gateway import Gateway
    from bastion.gateway._router import Target

log = logging.getLogger("bastion.gateway")

# The smaller of the two providers' limits (OpenAI 50,000, Anthropic 100,000 requests per batch).
MAX_REQUESTS = 50_000
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# How long a caller that finds a batch recorded (by another caller) but not yet submitted waits
# for that caller to submit it before taking over: seconds since the record was made.
SUBMIT_GRACE = 60.0
_OPENAI_DONE = {"completed", "expired", "failed", "cancelled"}


@dataclass(slots=True)
class BatchItemResult:
    """One request's outcome: a priced `response`, or the `error` that request ended with."""

    custom_id: str
    request: ModelRequest
    response: ModelResponse | None = None
    error: ModelError | None = None

    @property
    def ok(self) -> bool:
        return self.response is not None


@dataclass(slots=True)
class BatchResult:
    """A finished batch, its results in the order the requests were given."""

    key: str
    batch_id: str
    model: str
    status: str  # the provider's final status: completed, expired, ended, cancelled
    items: list[BatchItemResult]
    resumed: bool = False  # True when this call found the batch already submitted

    @property
    def responses(self) -> list[ModelResponse | None]:
        return [i.response for i in self.items]

    @property
    def failed(self) -> list[BatchItemResult]:
        return [i for i in self.items if i.response is None]

    @property
    def cost_usd(self) -> float:
        return sum(i.response.cost_usd or 0.0 for i in self.items if i.response is not None)

    def __getitem__(self, custom_id: str) -> BatchItemResult:
        for item in self.items:
            if item.custom_id == custom_id:
                return item
        raise KeyError(custom_id)


Requests = Sequence[ModelRequest] | Mapping[str, ModelRequest]


async def run_batch(
    gateway: Gateway,
    requests: Requests,
    model: Target | None,
    *,
    key: str | None,
    store: BatchStore,
    poll_interval: float,
    timeout: float | None,
) -> BatchResult:
    named = _named(requests)
    tenant = _tenant(named)
    plan = gateway._router.plan_for(model, named[0][1])  # pyright: ignore[reportPrivateUsage]
    deployment = plan.slots[0].deployments[0]
    wire = _wire_for(deployment.model)
    hashes = [(cid, _hash(wire.payload(r))) for cid, r in named]
    key = key or "bk_" + hashlib.sha256(json.dumps([deployment.name, tenant, hashes]).encode()).hexdigest()[:40]
    record = await store.get(tenant, key)
    resumed = record is not None
    finished = record is not None and record.status == "ended"
    if record is None:
        record, resumed = await _record(gateway, store, tenant, key, deployment.name, named, hashes, plan)
    if [(i.custom_id, i.request_hash) for i in record.items] != hashes:
        raise UserError(
            f"batch key {key!r} was used for other requests (or another order); give each batch its own key=, "
            "or pass the same requests to resume it"
        )
    if record.model != deployment.name:
        raise UserError(f"batch key {key!r} was sent to {record.model}, not {deployment.name}; use another key=")
    if resumed and record.remote_id is None and time.time() < record.created + SUBMIT_GRACE:
        # Recorded moments ago by another caller, which is probably submitting it now.
        record = await _submitted_by_other(gateway, store, record, poll_interval)
    remote_id = record.remote_id
    if remote_id is None:
        # The provider sees a digest of (tenant, key): keys are the caller's names, unique per
        # tenant only, and a tenant's name is none of the provider's business.
        tag = hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[:40]
        # Recorded by an earlier call but perhaps never submitted (it died in between)?
        remote_id = await wire.find(tag) if resumed else None
        if remote_id is None:
            outputs = {i.custom_id: i.output for i in record.items}
            lines = [(cid, wire.payload(_clamped(r, outputs[cid]))) for cid, r in named]
            remote_id = await wire.submit(tag, lines)
        await store.update(tenant, key, status="submitted", remote_id=remote_id)
    status, info = await _wait(gateway, wire, remote_id, poll_interval, timeout, key)
    outcomes = await wire.results(remote_id, info)
    items = [_item(gateway, wire, deployment.name, cid, request, outcomes.get(cid), status) for cid, request in named]
    fresh = [got for held, got in zip(record.items, items, strict=True) if not held.settled]
    _trace(deployment.name, remote_id, key, fresh)
    await _settle(gateway, store, record, items)
    await store.update(tenant, key, status="ended")
    retry = {i.custom_id: i.request for i in items if finished and _retryable(i.error)}
    if retry:
        # Asked again after it ended: what expired or failed transiently goes out as a new batch
        # (itself durable under a derived key); what succeeded is never sent again.
        again = await run_batch(
            gateway, retry, model, key=f"{key}.retry", store=store, poll_interval=poll_interval, timeout=timeout
        )
        items = [again[i.custom_id] if i.custom_id in retry else i for i in items]
    return BatchResult(key, remote_id, deployment.name, status, items, resumed)


def _retryable(error: ModelError | None) -> bool:
    """Expired, never answered, or failed on the provider's side (5xx, 429): worth sending again."""
    return isinstance(error, ModelTimeoutError | ProviderUnavailableError | RateLimitError) or (
        isinstance(error, ModelHTTPError) and error.status >= 500
    )


def _named(requests: Requests) -> list[tuple[str, ModelRequest]]:
    named = list(requests.items()) if isinstance(requests, Mapping) else [(f"r{i}", r) for i, r in enumerate(requests)]
    if not named:
        raise UserError("Gateway.batch() got no requests; pass a list of ModelRequest (or a dict custom_id -> request)")
    if len(named) > MAX_REQUESTS:
        raise UserError(f"a batch holds at most {MAX_REQUESTS} requests, got {len(named)}; split it into several")
    for cid, _ in named:
        if not _CUSTOM_ID.fullmatch(cid):
            raise UserError(f"batch custom id {cid!r} must match ^[a-zA-Z0-9_-]{{1,64}}$ (the providers' rule)")
    return named


def _tenant(named: list[tuple[str, ModelRequest]]) -> str:
    tenants = {r.context.tenant for _, r in named}
    if len(tenants) > 1:
        raise UserError(
            f"one batch must belong to one tenant, got {sorted(tenants)}; send a batch per tenant (budgets and "
            "batch records are kept per tenant)"
        )
    return tenants.pop()


def _hash(payload: JSON) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _clamped(request: ModelRequest, output: int | None) -> ModelRequest:
    if output is None:
        return request
    from bastion.gateway._gateway import MAX_OUTPUT_KEYS, with_max_tokens

    extra = {k: v for k, v in (request.settings.extra or {}).items() if k not in MAX_OUTPUT_KEYS}
    return with_max_tokens(request, output, extra)


async def _record(
    gateway: Gateway,
    store: BatchStore,
    tenant: str,
    key: str,
    model: str,
    named: list[tuple[str, ModelRequest]],
    hashes: list[tuple[str, str]],
    plan: Any,
) -> tuple[BatchRecord, bool]:
    """Reserve every request's worst case (at batch rates) and record the batch; the stored
    record wins when another process recorded the same key first."""
    from bastion.gateway._router import Plan, Slot

    single = Plan(plan.label, (Slot(model, [plan.slots[0].deployments[0]], "round_robin"),))
    items: list[BatchItem] = []
    try:
        for (cid, request), (_, digest) in zip(named, hashes, strict=True):
            reservation, sent = await gateway._reserve(single, request, batch=True)  # pyright: ignore[reportPrivateUsage]
            item = BatchItem(cid, digest, None if sent is request else sent.settings.max_tokens)
            if reservation is not None:
                item.reservation, item.tokens, item.usd = reservation.id, reservation.tokens, reservation.usd
                item.charges = tuple(k for k, _ in reservation.charges)
            items.append(item)
        stored = await store.create(BatchRecord(tenant, key, model, items=items))
    except BaseException:
        await _release(gateway, items)
        raise
    if stored.items is not items:
        await _release(gateway, items)  # another process recorded this batch: its holds stand
        return stored, True
    return stored, False


async def _submitted_by_other(
    gateway: Gateway, store: BatchStore, record: BatchRecord, poll_interval: float
) -> BatchRecord:
    """Wait (bounded) for the caller that just recorded this batch to record its provider id;
    if it never does (it died), the batch is found or submitted here."""
    sleep = gateway._sleep  # pyright: ignore[reportPrivateUsage]
    while time.time() < record.created + SUBMIT_GRACE:
        await sleep(min(max(poll_interval, 0.05), 1.0))
        latest = await store.get(record.tenant, record.key)
        if latest is not None and latest.remote_id is not None:
            return latest
    return record


async def _release(gateway: Gateway, items: list[BatchItem]) -> None:
    if gateway.budgets is None:
        return
    for item in items:
        if item.reservation is not None:
            await gateway.budgets.settle(_reservation(item), 0, 0.0)


def _reservation(item: BatchItem) -> Reservation:
    assert item.reservation is not None
    charges = tuple((k, BudgetLimits()) for k in item.charges)
    return Reservation(item.reservation, item.tokens, item.usd, charges, item.output or 0)


async def _wait(
    gateway: Gateway, wire: _Wire, remote_id: str, poll_interval: float, timeout: float | None, key: str
) -> tuple[str, JSON]:
    clock, sleep = gateway._clock, gateway._sleep  # pyright: ignore[reportPrivateUsage]
    deadline = None if timeout is None else clock() + timeout
    status = "unknown"
    while True:
        try:
            ended, status, info = await wire.poll(remote_id)
            if ended:
                return status, info
        except (ProviderUnavailableError, RateLimitError, ModelTimeoutError) as e:
            # The batch runs on at the provider whatever happens to one poll.
            log.warning("polling batch %s failed (%s); polling again", remote_id, e)
        if deadline is not None and clock() >= deadline:
            raise ModelTimeoutError(
                f"batch {remote_id} is still {status} after {timeout:g}s; it keeps running at the provider and is "
                f"recorded under key {key!r}: call Gateway.batch() again with the same requests (or key=) to resume "
                "polling without resubmitting",
                model=wire.name,
            )
        await sleep(poll_interval)


def _item(
    gateway: Gateway, wire: _Wire, model: str, cid: str, request: ModelRequest, outcome: Any, status: str
) -> BatchItemResult:
    item = BatchItemResult(cid, request)
    if isinstance(outcome, ModelError):
        item.error = outcome
        return item
    if outcome is None:
        item.error = ModelTimeoutError(
            f"{model}: batch request {cid!r} has no result (batch {status}); send it again", model=model
        )
        return item
    try:
        response = wire.parse(outcome, request)
    except ModelError as e:
        item.error = e
        return item
    cost = gateway.pricing.cost(model, response.usage, request.settings, batch=True)
    if cost is not None:
        response.cost_usd = cost
    gateway.stats.cost_usd += response.cost_usd or 0.0
    item.response = response
    return item


def _trace(model: str, remote_id: str, key: str, items: list[BatchItemResult]) -> None:
    """One `chat` span per request whose result arrived now (not again when a finished batch
    is asked for a second time), so traces and cost rollups count batch calls like others."""
    from bastion.gateway._gateway import spans_module

    spans = spans_module()
    for item in items:
        with spans.chat(model, item.request) as span:
            span.set_attributes({"bastion.batch.id": remote_id, "bastion.batch.key": key})
            if item.response is not None:
                span.record_response(item.response)
            else:
                span.set_attributes({"error.type": type(item.error).__name__})


async def _settle(gateway: Gateway, store: BatchStore, record: BatchRecord, items: list[BatchItemResult]) -> None:
    """Replace each request's hold by what its result cost (nothing for a failed request)."""
    budgets = gateway.budgets
    todo = [(held, got) for held, got in zip(record.items, items, strict=True) if not held.settled]
    if budgets is not None:
        for held, got in todo:
            if held.reservation is None:
                continue
            if got.response is not None:
                await gateway._settle(_reservation(held), got.response)  # pyright: ignore[reportPrivateUsage]
            else:
                await budgets.settle(_reservation(held), 0, 0.0)
    if todo:
        await store.settled(record.tenant, record.key, [h.custom_id for h, _ in todo])


# --- the providers' batch APIs ------------------------------------------------------------------


class _Wire(Protocol):
    name: str

    def payload(self, request: ModelRequest) -> JSON: ...
    def parse(self, body: Any, request: ModelRequest) -> ModelResponse: ...
    async def find(self, key: str) -> str | None: ...
    async def submit(self, key: str, lines: list[tuple[str, JSON]]) -> str: ...
    async def poll(self, remote_id: str) -> tuple[bool, str, JSON]: ...
    async def results(self, remote_id: str, info: JSON) -> dict[str, JSON | ModelError]: ...


def _wire_for(model: Any) -> _Wire:
    wire_format = getattr(model, "wire_format", None)
    if isinstance(model, HTTPModel) and wire_format == "openai_chat":
        return _OpenAIBatches(model)
    if isinstance(model, HTTPModel) and wire_format == "anthropic":
        return _AnthropicBatches(model)
    name = getattr(model, "name", repr(model))
    raise UserError(
        f"model {name!r} has no batch API here (batches go through OpenAI-compatible Batch APIs and Anthropic "
        "Message Batches); call Gateway.request() for it, or batch an 'openai:' or 'anthropic:' model"
    )


class _HTTP:
    """GET/POST on the provider's pooled session, errors mapped like the wire formats'."""

    def __init__(self, model: HTTPModel) -> None:
        self.model = model
        self.name = model.name
        self.base = model.provider.base_url

    async def call(self, method: str, url: str, *, body: Any = None, form: Any = None) -> bytes:
        import aiohttp

        from bastion.gateway._http import get_session

        headers = dict(self.model.headers())
        if form is not None:
            headers.pop("Content-Type", None)  # aiohttp sets the multipart boundary
        data = form if form is not None else (None if body is None else json.dumps(body).encode())
        url = url if url.startswith("http") else self.base + url
        timeout = aiohttp.ClientTimeout(total=self.model.provider.default_timeout)
        try:
            async with get_session(self.model.provider).request(
                method, url, data=data, headers=headers, timeout=timeout
            ) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise http_error(resp.status, raw, resp.headers, self.name)
                return raw
        except TimeoutError:
            raise ModelTimeoutError(f"{self.name}: {method} {url} timed out; retry", model=self.name) from None
        except aiohttp.ClientError as e:
            raise unavailable(
                f"{self.name}: {method} {url} failed: {type(e).__name__}: {e}; check the base URL and that the "
                "server is running",
                model=self.name,
            ) from e

    async def json(self, method: str, url: str, *, body: Any = None, form: Any = None) -> Any:
        raw = await self.call(method, url, body=body, form=form)
        try:
            return json.loads(raw)
        except ValueError:
            raise InvalidResponseError(f"{self.name} answered with a body that is not JSON: {raw[:200]!r}") from None

    async def jsonl(self, url: str) -> list[JSON]:
        raw = await self.call("GET", url)
        try:
            return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        except ValueError:
            raise InvalidResponseError(f"{self.name}: batch results are not JSONL: {raw[:200]!r}") from None


class _OpenAIBatches(_HTTP):
    def __init__(self, model: HTTPModel) -> None:
        super().__init__(model)
        self._model: Any = model

    def payload(self, request: ModelRequest) -> JSON:
        return self._model.payload(request)

    def parse(self, body: Any, request: ModelRequest) -> ModelResponse:
        return self._model.parse_response(body, request)

    async def find(self, key: str) -> str | None:
        page = await self.json("GET", "/batches?limit=100")
        for batch in page.get("data") or ():
            if (batch.get("metadata") or {}).get("bastion_batch_key") == key:
                return str(batch["id"])
        return None

    async def submit(self, key: str, lines: list[tuple[str, JSON]]) -> str:
        import aiohttp

        jsonl = "".join(
            json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"
            for cid, body in lines
        )
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", jsonl.encode(), filename=f"{key}.jsonl", content_type="application/jsonl")
        uploaded = await self.json("POST", "/files", form=form)
        created = await self.json(
            "POST",
            "/batches",
            body={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"bastion_batch_key": key},
            },
        )
        return str(created["id"])

    async def poll(self, remote_id: str) -> tuple[bool, str, JSON]:
        info = await self.json("GET", f"/batches/{remote_id}")
        status = str(info.get("status"))
        if status == "failed":
            errors = (info.get("errors") or {}).get("data") or []
            raise ModelHTTPError(400, json.dumps(errors)[:2000], model=self.name)
        return status in _OPENAI_DONE, status, info

    async def results(self, remote_id: str, info: JSON) -> dict[str, JSON | ModelError]:
        out: dict[str, JSON | ModelError] = {}
        for field in ("output_file_id", "error_file_id"):
            file_id = info.get(field)
            if not file_id:
                continue
            for line in await self.jsonl(f"/files/{file_id}/content"):
                cid = str(line.get("custom_id"))
                response = line.get("response") or {}
                error = line.get("error")
                status = int(response.get("status_code") or 0)
                if error is None and 200 <= status < 300:
                    out[cid] = response.get("body") or {}
                elif isinstance(error, dict) and error.get("code") == "batch_expired":
                    out[cid] = ModelTimeoutError(
                        f"{self.name}: batch request {cid!r} expired before the provider ran it "
                        f"({error.get('message', '')}); send it again",
                        model=self.name,
                    )
                else:
                    detail = error if error is not None else response.get("body")
                    out[cid] = ModelHTTPError(status or 500, json.dumps(detail)[:2000], model=self.name)
        return out


class _AnthropicBatches(_HTTP):
    def __init__(self, model: HTTPModel) -> None:
        super().__init__(model)
        self._model: Any = model

    def payload(self, request: ModelRequest) -> JSON:
        from bastion.gateway.formats.anthropic import build_payload

        return build_payload(request, self.model.model_name)

    def parse(self, body: Any, request: ModelRequest) -> ModelResponse:
        return self._model.parse_response(body, request)

    async def find(self, key: str) -> str | None:
        return None  # Message Batches carry no metadata to find one by

    async def submit(self, key: str, lines: list[tuple[str, JSON]]) -> str:
        body = {"requests": [{"custom_id": cid, "params": params} for cid, params in lines]}
        created = await self.json("POST", "/messages/batches", body=body)
        return str(created["id"])

    async def poll(self, remote_id: str) -> tuple[bool, str, JSON]:
        info = await self.json("GET", f"/messages/batches/{remote_id}")
        status = str(info.get("processing_status"))
        return status == "ended", status, info

    async def results(self, remote_id: str, info: JSON) -> dict[str, JSON | ModelError]:
        url = info.get("results_url") or f"/messages/batches/{remote_id}/results"
        out: dict[str, JSON | ModelError] = {}
        for line in await self.jsonl(str(url)):
            cid = str(line.get("custom_id"))
            result = line.get("result") or {}
            kind = result.get("type")
            if kind == "succeeded":
                out[cid] = result.get("message") or {}
            elif kind == "expired":
                out[cid] = ModelTimeoutError(
                    f"{self.name}: batch request {cid!r} expired before the provider ran it; send it again",
                    model=self.name,
                )
            else:
                error = (result.get("error") or {}).get("error") or result
                status = 500 if error.get("type") in ("api_error", "overloaded_error") else 400
                out[cid] = ModelHTTPError(status, json.dumps(error)[:2000], model=self.name)
        return out


__all__ = ["MAX_REQUESTS", "BatchItemResult", "BatchResult", "run_batch"]
