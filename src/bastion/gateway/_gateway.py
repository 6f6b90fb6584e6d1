"""The Gateway: every model call goes through here.

One call: route the target to a plan (fallback chain of slots, each slot one model or several
load-balanced deployments) -> exact/semantic cache lookup -> budget reservation -> attempts with
retries (backoff + full jitter, `Retry-After`, per-attempt timeout, total deadline) behind a
circuit breaker per deployment (`_attempts.py`) -> price -> settle the budget -> cache the
answer, all inside one `chat` span.

Streams get the same routing, breakers, retries and fallbacks, but only until the first event
is yielded: after that the caller has seen output, so a failure propagates.

What it is not: a wire format (see `resolve_model`) or an HTTP proxy (see `bastion.server`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from bastion.errors import (
    ConfigError,
    ModelError,
    UnknownModelError,
)
from bastion.gateway._attempts import DEFAULT_FALLBACK_ON, AttemptRunner, GatewayStats, aclose_stream
from bastion.gateway._breaker import CircuitBreaker, CircuitBreakerConfig
from bastion.gateway._budget import Budget, Claim, DegradePolicy, Reservation
from bastion.gateway._cache import ResponseCache, SemanticCache, SemanticProbe, cache_key
from bastion.gateway._model import Model
from bastion.gateway._pricing import Pricing
from bastion.gateway._retry import RetryPolicy
from bastion.gateway._router import Deployment, Plan, RouteHook, Router, Strategy, Target
from bastion.types import (
    ImagePart,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    StreamEvent,
    TextPart,
    ToolCall,
)

if TYPE_CHECKING:
    from bastion.gateway._batch import BatchResult
    from bastion.gateway._batch_store import BatchStore

log = logging.getLogger("bastion.gateway")

# Span attributes of a call routed to a cheaper target because a budget ran low.
DEGRADED_FROM = "bastion.budget.degraded_from"
DEGRADED_TO = "bastion.budget.degraded_to"


@dataclass(slots=True)
class CallRecord:
    """What `on_call` observers receive after each call (the tracing hook point)."""

    target: str
    model: str | None
    request: ModelRequest
    response: ModelResponse | None
    error: BaseException | None
    started: float
    ended: float
    stream: bool = False


CallObserver = Callable[[CallRecord], None]


class Gateway:
    """Routes, retries, prices, budgets and caches model calls. See the module docstring.

    `cache`: None (default) = an in-memory exact cache when `cache_enabled` (no file is
    written; responses of `test:*` doubles are never cached by this default), False = off, or
    a `ResponseCache` (`ResponseCache(path=...)` for a SQLite file). `tiers=None` uses the
    settings' tiers (`BASTION_TIERS`).
    `models` registers ready Model instances by name (checked before `resolver`, which
    defaults to `bastion.gateway.resolve_model`).
    """

    def __init__(
        self,
        *,
        tiers: Mapping[str, Target | Sequence[Target]] | None = None,
        deployments: Mapping[str, Sequence[Target]] | None = None,
        models: Iterable[Model] | Mapping[str, Model] = (),
        default: Target | None = None,
        route: RouteHook | None = None,
        strategy: Strategy = "round_robin",
        retry: RetryPolicy | None = None,
        breaker: CircuitBreakerConfig | None = None,
        fallback_on: tuple[type[BaseException], ...] = DEFAULT_FALLBACK_ON,
        context_windows: Mapping[str, int] | None = None,
        pricing: Pricing | Mapping[str, float | Mapping[str, float]] | None = None,
        budgets: Budget | None = None,
        degrade: DegradePolicy | None = None,
        cache: ResponseCache | bool | None = None,
        semantic_cache: SemanticCache | None = None,
        resolver: Callable[[str], Model] | None = None,
        on_call: CallObserver | None = None,
        batch_store: BatchStore | None = None,
        batch_poll_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        registered: dict[str, Model] = {}
        if isinstance(models, Mapping):
            registered.update(cast("Mapping[str, Model]", models))
        else:
            registered.update((m.name, m) for m in models)
        self._owned: list[Model] = []
        self._resolver = resolver
        self._breaker_config = breaker or CircuitBreakerConfig()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._router = Router(
            tiers=tiers,
            deployments=deployments or {},
            models=registered,
            resolver=self._resolve,
            breaker_for=self._breaker_for,
            strategy=strategy,
            default=default,
            route=route,
        )
        self.pricing = pricing if isinstance(pricing, Pricing) else Pricing(pricing)
        self.budgets = budgets
        self.degrade = degrade
        self.semantic_cache = semantic_cache
        self._cache: ResponseCache | None = cache if isinstance(cache, ResponseCache) else None
        self._default_cache = cache is None or cache is True
        self._force_cache = cache is True  # True: on even when settings.cache_enabled is off
        self.on_call = on_call
        # None: the deployment's store (`default_batch_store`), opened by the first batch.
        self.batch_store = batch_store
        self.batch_poll_interval = batch_poll_interval  # seconds between polls of a batch's status
        self._clock = clock
        self._sleep = sleep
        self._owns_batch_store = False
        self.stats = GatewayStats()
        self._attempts = AttemptRunner(
            retry=retry or RetryPolicy(),
            fallback_on=fallback_on,
            context_windows=context_windows,
            pricing=self.pricing,
            stats=self.stats,
            clock=clock,
            sleep=sleep,
            rand=rand,
        )
        self._closed = False

    # --- public API ---------------------------------------------------------------------------

    async def request(self, request: ModelRequest, model: Target | None = None) -> ModelResponse:
        """Send `request` to `model` (a `provider:model`, tier, deployment alias or Model;
        None = the route hook's choice, else the default model) and return the response."""
        plan = self._router.plan_for(model, request)
        self.stats.calls += 1
        degraded = await self._degrade(plan, request) if self.degrade is not None else None
        if degraded is not None:
            plan = degraded[0]
        with _spans().chat(plan.primary, request) as span:
            if degraded is not None:
                span.set_attributes(degraded[1])
            if self.budgets is None and self.on_call is None and not self._may_cache(request):
                # Fast path: nothing to look up, reserve or report.
                response, deployment = await self._attempts.run(plan, request, span)
                self._price(response, deployment, request)
            else:
                response = await self._request_full(plan, request, span)
            span.record_response(response)
        return response

    async def stream(self, request: ModelRequest, model: Target | None = None) -> AsyncIterator[StreamEvent]:
        """Stream the response. Retries and fallbacks happen only before the first event."""
        plan = self._router.plan_for(model, request)
        self.stats.calls += 1
        degraded = await self._degrade(plan, request) if self.degrade is not None else None
        if degraded is not None:
            plan = degraded[0]
        started = self._clock()
        final: ModelResponse | None = None
        error: BaseException | None = None
        deployment: Deployment | None = None
        reservation: Reservation | None = None
        # Entered by hand: a consumer that stops early (GeneratorExit) is not an error.
        span = _spans().chat(plan.primary, request)
        span.__enter__()
        if degraded is not None:
            span.set_attributes(degraded[1])
        exc_info: tuple[Any, Any, Any] = (None, None, None)
        try:
            reservation, request = await self._reserve(plan, request)
            first, events, deployment = await self._attempts.open_stream(plan, request, span)
            try:
                event: StreamEvent | None = first
                while event is not None:
                    if isinstance(event, ResponseDone):
                        final = event.response
                        self._price(final, deployment, request)
                        span.record_response(final)
                    yield event
                    event = await anext(events, None)
            except (ModelError, TimeoutError) as e:
                deployment.breaker.record(e)
                raise
            finally:
                deployment.in_flight -= 1
                await aclose_stream(events)
        except GeneratorExit:
            raise
        except BaseException as e:
            error = e
            exc_info = (type(e), e, e.__traceback__)
            raise
        finally:
            try:
                if self.budgets is not None and reservation is not None:
                    if final is not None:
                        await self._settle(reservation, final)
                    elif deployment is None:
                        await self.budgets.settle(reservation, 0, 0.0)  # nothing was generated
                    else:  # cut mid-stream: real usage unknown, keep the estimate
                        await self.budgets.settle(reservation, reservation.tokens, reservation.usd)
                if self.on_call is not None:
                    self._observe(plan, request, final, error, started, deployment, stream=True)
            finally:
                span.__exit__(*exc_info)

    async def batch(
        self,
        requests: Sequence[ModelRequest] | Mapping[str, ModelRequest],
        model: Target | None = None,
        *,
        key: str | None = None,
        poll_interval: float | None = None,
        timeout: float | None = None,
    ) -> BatchResult:
        """Send `requests` (a list, or a dict custom_id -> request) as one provider batch at batch
        rates, wait for it, and return the results in order (see `bastion.gateway._batch`).
        Budgets reserve every request's worst case first. The batch is recorded under `key`
        (default: a hash of the tenant, model and requests) before it is submitted, so calling
        again after a restart resumes polling and never submits twice. `timeout` bounds this wait
        (the batch runs on at the provider); polls are `poll_interval` seconds apart (default
        `Gateway(batch_poll_interval=30)`)."""
        from bastion.gateway._batch import run_batch

        if self.batch_store is None:
            from bastion.gateway._batch_store import default_batch_store

            self.batch_store = default_batch_store()
            self._owns_batch_store = True
        return await run_batch(
            self,
            requests,
            model,
            key=key,
            store=self.batch_store,
            poll_interval=self.batch_poll_interval if poll_interval is None else poll_interval,
            timeout=timeout,
        )

    def batch_sync(
        self,
        requests: Sequence[ModelRequest] | Mapping[str, ModelRequest],
        model: Target | None = None,
        **options: Any,
    ) -> BatchResult:
        from bastion._sync import run_sync

        return run_sync(self.batch(requests, model, **options))

    def model(self, target: Target | None = None) -> GatewayModel:
        """A `Model` whose calls go through this gateway (what the agent loop holds)."""
        return GatewayModel(self, target)

    def breaker_states(self) -> dict[str, str]:
        """`provider:model` -> `closed` / `open` / `half_open`, for every deployment used so far."""
        return {name: b.state for name, b in self._breakers.items()}

    def plan(self, target: Target | None = None, request: ModelRequest | None = None) -> list[list[str]]:
        """The fallback chain for `target`: per slot, the deployment names (for debugging)."""
        plan = self._router.plan_for(target, request or ModelRequest(messages=[]))
        return [[d.name for d in slot.deployments] for slot in plan.slots]

    def request_sync(self, request: ModelRequest, model: Target | None = None) -> ModelResponse:
        from bastion._sync import run_sync

        return run_sync(self.request(request, model))

    async def aclose(self) -> None:
        """Close caches, budget store and the models this gateway resolved itself."""
        if self._closed:
            return
        self._closed = True
        if self._cache is not None:
            self._cache.close()
        if self.semantic_cache is not None:
            await self.semantic_cache.aclose()
        if self.budgets is not None:
            await self.budgets.aclose()
        if self._owns_batch_store:
            await cast(Any, self.batch_store).aclose()
        for model in self._owned:
            close: Any = getattr(model, "aclose", None)
            if close is not None:
                await close()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the full (budgets / cache / observer) path ---------------------------------------------

    async def _request_full(self, plan: Plan, request: ModelRequest, span: Any) -> ModelResponse:
        started = self._clock()
        key: str | None = None
        cache = self._cache_for(plan, request)
        # A cache is an optimisation: when it fails (disk full, embedder down) the call goes on.
        if cache is not None:
            key = cache_key(request, plan.label)
            try:
                hit = cache.get(key)
            except Exception:
                log.warning("response cache lookup failed; calling the model", exc_info=True)
                hit = None
            if hit is not None:
                return self._hit(hit[0], hit[1], plan, request, started)
        probe: SemanticProbe | None = None
        if self.semantic_cache is not None and SemanticCache.applies(request):
            try:
                found = await self.semantic_cache.lookup(request, plan.label)
            except Exception:
                log.warning("semantic cache lookup failed; calling the model", exc_info=True)
                found = None
            if isinstance(found, SemanticProbe):
                probe = found
            elif found is not None:
                self.stats.semantic_hits += 1
                return self._hit(found[0], found[1], plan, request, started)
        reservation, sent = await self._reserve(plan, request)
        response: ModelResponse | None = None
        deployment: Deployment | None = None
        error: BaseException | None = None
        try:
            response, deployment = await self._attempts.run(plan, sent, span)
            self._price(response, deployment, sent)
        except BaseException as e:
            error = e
            raise
        finally:
            if self.budgets is not None and reservation is not None:
                if response is not None:
                    await self._settle(reservation, response)
                else:
                    await self.budgets.settle(reservation, 0, 0.0)
            if self.on_call is not None:
                self._observe(plan, sent, response, error, started, deployment)
        assert response is not None  # _run returned (an exception would have propagated)
        # An answer cut short by a budget's clamp is not the answer to the request as asked.
        clamped = sent is not request and response.finish_reason == "length"
        if response.finish_reason != "error" and not clamped:
            try:
                if cache is not None and key is not None:
                    cache.put(key, request.context.tenant, response)
                if probe is not None and self.semantic_cache is not None:
                    await self.semantic_cache.put(probe, response)
            except Exception:
                log.warning("could not store the response in the cache", exc_info=True)
        return response

    def _hit(
        self, response: ModelResponse, saved: float | None, plan: Plan, request: ModelRequest, started: float
    ) -> ModelResponse:
        self.stats.cache_hits += 1
        self.stats.saved_usd += saved or 0.0
        if self.on_call is not None:
            self._observe(plan, request, response, None, started, None)
        return response

    def _may_cache(self, request: ModelRequest) -> bool:
        return ((self._cache is not None or self._default_cache) and ResponseCache.applies(request)) or (
            self.semantic_cache is not None and request.cacheable
        )

    def _cache_for(self, plan: Plan, request: ModelRequest) -> ResponseCache | None:
        if not ResponseCache.applies(request):
            return None
        if self._cache is not None:
            return self._cache
        if not self._default_cache:
            return None
        if all(d.name.startswith("test:") for slot in plan.slots for d in slot.deployments):
            return None  # test doubles are free and deterministic: caching them only leaks between tests
        from bastion.config import get_settings

        if not self._force_cache and not get_settings().cache_enabled:
            self._default_cache = False
            return None
        try:
            self._cache = ResponseCache()
        except Exception:  # e.g. a read-only home: run uncached rather than fail every call
            log.warning("could not open the default response cache; caching is off", exc_info=True)
            self._default_cache = False
            return None
        return self._cache

    async def _degrade(self, plan: Plan, request: ModelRequest) -> tuple[Plan, dict[str, Any]] | None:
        """The cheaper plan (and the span attributes saying why) when a budget of the call has
        used at least `degrade.at` of a limit; None to keep `plan`."""
        policy, budgets = self.degrade, self.budgets
        if policy is None or budgets is None:
            return None
        top = await budgets.most_used(request.context)
        if top is None or top[1] < policy.at:
            return None
        cheaper = self._router.plan_for(policy.to, request)
        if cheaper.label == plan.label:
            return None
        self.stats.degraded += 1
        log.info("budget %s is %.0f%% used: %s routed to %s", top[0], top[1] * 100, plan.label, cheaper.label)
        return cheaper, {
            DEGRADED_FROM: plan.label,
            DEGRADED_TO: cheaper.label,
            "bastion.budget.scope": top[0],
            "bastion.budget.used": round(top[1], 6),
        }

    async def _reserve(
        self, plan: Plan, request: ModelRequest, *, batch: bool = False
    ) -> tuple[Reservation | None, ModelRequest]:
        """Reserve the worst case of `request` under every budget that applies and return the
        request to send: its `max_tokens` clamped to what the budgets' remainders can pay for
        (priced at batch-API rates when `batch`)."""
        budgets = self.budgets
        if budgets is None:
            return None, request
        charges = budgets.charges(request.context)
        if not charges:
            return None, request
        try:
            settings = request.settings
            asked = _max_output(request)
            max_output = asked if asked is not None else budgets.default_output_tokens
            prompt = estimate_prompt_tokens(request)
            prompt_usd = per_output = 0.0
            usd_scope = next((key for key, limits in charges if limits.usd is not None), None)
            if usd_scope is not None:
                for slot in plan.slots:  # the dearest model the chain may fall back to
                    for d in slot.deployments:
                        bound = self.pricing.bound(d.name, prompt, max_output, settings, batch=batch)
                        if bound is None:
                            raise _unpriced(d.name, usd_scope)
                        prompt_usd, per_output = max(prompt_usd, bound[0]), max(per_output, bound[1])
            claim = Claim(prompt, prompt_usd, max_output, per_output, min(budgets.min_output_tokens, max_output))
            reservation = await budgets.reserve(charges, claim)
        except BaseException:
            self.stats.budget_refusals += 1
            raise
        extra = settings.extra
        if reservation.output == settings.max_tokens and not (extra and MAX_OUTPUT_KEYS.intersection(extra)):
            return reservation, request
        if extra:  # provider-specific caps in `extra` would override the clamp on the wire
            extra = {k: v for k, v in extra.items() if k not in MAX_OUTPUT_KEYS}
        return reservation, with_max_tokens(request, reservation.output, extra)

    async def _settle(self, reservation: Reservation, response: ModelResponse) -> None:
        assert self.budgets is not None
        usage = response.usage
        if usage.input_tokens == 0 and usage.output_tokens == 0:
            # No usage reported (some compatible servers omit it, notably in streams): what the
            # call cost is unknown, so the worst case it held is what it spent.
            log.warning(
                "%s reported no token usage; charging the budget its reservation (%d tokens, $%.6f)",
                response.model or "the model",
                reservation.tokens,
                reservation.usd,
            )
            await self.budgets.settle(reservation, reservation.tokens, reservation.usd)
        else:
            await self.budgets.settle(reservation, usage.total_tokens, response.cost_usd or 0.0)

    def _price(self, response: ModelResponse, deployment: Deployment, request: ModelRequest) -> None:
        if not response.model:
            response.model = deployment.name
        cost = self.pricing.cost(deployment.name, response.usage, request.settings)
        if cost is not None:
            response.cost_usd = cost
        if response.cost_usd:
            self.stats.cost_usd += response.cost_usd

    def _observe(
        self,
        plan: Plan,
        request: ModelRequest,
        response: ModelResponse | None,
        error: BaseException | None,
        started: float,
        deployment: Deployment | None,
        *,
        stream: bool = False,
    ) -> None:
        assert self.on_call is not None
        name = deployment.name if deployment is not None else (response.model if response is not None else None)
        record = CallRecord(plan.label, name, request, response, error, started, self._clock(), stream)
        try:
            self.on_call(record)
        except Exception:  # an observer must never break a model call
            log.exception("gateway on_call observer failed")

    # --- model resolution and breakers ---------------------------------------------------------

    def _resolve(self, name: str) -> Model:
        resolver = self._resolver
        if resolver is None:
            try:
                from bastion.gateway._resolve import resolve_model  # pyright: ignore
            except ImportError as e:
                raise UnknownModelError(
                    f"cannot resolve {name!r}: no model resolver is available; register the model with "
                    "Gateway(models=[...]) or pass resolver=..."
                ) from e
            resolver = resolve_model  # pyright: ignore
        model: Model = resolver(name)  # pyright: ignore
        self._owned.append(model)
        return model

    def _breaker_for(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, self._breaker_config, self._clock, _report_breaker)
            self._breakers[name] = breaker
        return breaker


class GatewayModel:
    """A `Model` bound to a gateway target: calls get routing, retries, budgets and caching."""

    def __init__(self, gateway: Gateway, target: Target | None) -> None:
        self.gateway = gateway
        self.target = target
        if target is None:
            self._name = "gateway:auto"
        else:
            self._name = target if isinstance(target, str) else target.name

    @property
    def name(self) -> str:
        return self._name

    async def request(self, request: ModelRequest) -> ModelResponse:
        return await self.gateway.request(request, self.target)

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        return self.gateway.stream(request, self.target)


_spans_module: Any = None


def spans_module() -> Any:
    """`bastion.tracing.spans`, imported on the first call (it is not needed to import us)."""
    return _spans()


def _spans() -> Any:
    """`bastion.tracing.spans`, imported on the first call (it is not needed to import us)."""
    global _spans_module
    if _spans_module is None:
        from bastion.tracing import spans

        _spans_module = spans
    return _spans_module


def _report_breaker(name: str, state: str) -> None:
    try:
        from bastion.gateway._pricing import split_name
        from bastion.tracing import record_circuit_state

        provider, model = split_name(name)
        record_circuit_state(provider, model, state)
    except Exception:  # metrics must never break a model call
        log.debug("could not report breaker state", exc_info=True)


# Chat templates wrap each message in role markers (3-4 tokens on OpenAI's format) and the whole
# prompt in a few more; these bounds are generous on purpose.
_MESSAGE_OVERHEAD = 8
_REQUEST_OVERHEAD = 16
# The dearest image an API bills by tokens: ~1,600 on Anthropic, ~1,100 on GPT-4o high detail.
_IMAGE_TOKENS = 2_000
MAX_OUTPUT_KEYS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})


def estimate_prompt_tokens(request: ModelRequest) -> int:
    """An upper bound of the prompt's tokens, for budgets: one token per UTF-8 byte of text,
    tool call, tool result, tool schema and output schema (byte-level BPE never emits a token
    shorter than a byte; real prompts use 3-4x fewer), `_IMAGE_TOKENS` per image, plus
    per-message and per-request overhead. The surplus is returned when the call settles."""
    n = _REQUEST_OVERHEAD
    for m in request.messages:
        n += _MESSAGE_OVERHEAD + (_nbytes(m.name) if m.name else 0)
        for part in m.parts:
            if isinstance(part, TextPart):
                n += _nbytes(part.text)
            elif isinstance(part, ImagePart):
                n += _IMAGE_TOKENS
            elif isinstance(part, ToolCall):
                n += _nbytes(part.name) + _nbytes(_dumps(part.arguments)) + _MESSAGE_OVERHEAD
            else:
                n += _nbytes(part.name) + _nbytes(part.content_text())
    for t in request.tools:
        n += _MESSAGE_OVERHEAD + _nbytes(t.name) + _nbytes(t.description) + _nbytes(_dumps(t.parameters))
    if request.output is not None:
        n += _MESSAGE_OVERHEAD + _nbytes(request.output.name) + _nbytes(_dumps(request.output.schema))
    return n


def _nbytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _max_output(request: ModelRequest) -> int | None:
    """The smallest output cap the request sets, in `settings.max_tokens` or a provider's key in `extra`."""
    if not request.settings.extra:
        return request.settings.max_tokens
    caps = [request.settings.max_tokens] + [request.settings.extra.get(k) for k in MAX_OUTPUT_KEYS]
    ints = [c for c in caps if isinstance(c, int) and not isinstance(c, bool) and c > 0]
    return min(ints) if ints else None


def with_max_tokens(request: ModelRequest, max_tokens: int, extra: dict[str, Any]) -> ModelRequest:
    """A copy of `request` with another `max_tokens` and `extra`. Spelled out rather than
    `dataclasses.replace` (twice): ~1 µs instead of ~2.6 on every budgeted call; a test pins
    the field lists so a new field cannot be dropped silently."""
    s = request.settings
    settings = ModelSettings(
        temperature=s.temperature,
        max_tokens=max_tokens,
        top_p=s.top_p,
        stop=s.stop,
        seed=s.seed,
        timeout=s.timeout,
        extra=extra,
        prompt_cache=s.prompt_cache,
    )
    return ModelRequest(
        messages=request.messages,
        tools=request.tools,
        tool_choice=request.tool_choice,
        output=request.output,
        settings=settings,
        context=request.context,
        cacheable=request.cacheable,
    )


def _unpriced(model: str, scope: str) -> ConfigError:
    return ConfigError(
        f"model {model!r} has no known price, so the USD budget {scope!r} cannot be enforced on it: the call "
        f"was refused. Configure its price, e.g. Gateway(pricing={{{model!r}: {{'input': <usd/Mtok>, "
        "'output': <usd/Mtok>}}}) (0 for a free model), or use a priced model"
    )


__all__ = [
    "DEFAULT_FALLBACK_ON",
    "CallObserver",
    "CallRecord",
    "Gateway",
    "GatewayModel",
    "GatewayStats",
    "estimate_prompt_tokens",
]
