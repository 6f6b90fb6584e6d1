"""Span helpers every layer calls: one context manager per GenAI operation.

```python
from bastion.tracing import spans

with spans.agent("support", ctx):                       # "invoke_agent support"
    with spans.chat("openai:gpt-4o-mini", request) as s:  # "chat gpt-4o-mini"
        s.record_response(response)                      # usage, cost, finish reason
    with spans.tool("search", call.id, "read") as s:       # "execute_tool search"
        s.record_result(result)
```

Usable from sync and async code alike (`with` or `async with`): nesting comes from the
OpenTelemetry context, so one run is one trace. When nothing is configured (no
`configure_tracing()`, no global OpenTelemetry provider) every helper is a cheap no-op: it
builds no attributes and never imports OpenTelemetry.

Message content (prompts, completions, tool arguments and results, queries) is recorded
only when capture is on (`configure_tracing(capture_content="span_attributes")` or
`BASTION_CAPTURE_CONTENT=1`) and always passes through secret redaction; exception messages
are redacted too.
"""

from __future__ import annotations

import contextvars
import json
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from bastion.tracing import semconv as sc
from bastion.tracing._redact import redact
from bastion.tracing._state import STATE, active_tracer, capture_mode
from bastion.types import (
    ImagePart,
    Message,
    ModelRequest,
    ModelResponse,
    RunContext,
    SideEffect,
    TextPart,
    ToolCall,
    ToolResult,
    Usage,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span as OtelSpan

AttrValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float] | Sequence[bool]

_current_run: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("bastion_tracing_run", default=None)
# The outermost recording `spans.agent()` block: the root a paused run's resumption continues.
_run_root: contextvars.ContextVar[AgentSpan | None] = contextvars.ContextVar("bastion_tracing_root", default=None)


def current_run() -> RunContext | None:
    """The `RunContext` of the innermost `spans.agent()` block, if any."""
    return _current_run.get()


def _json(value: Any) -> str:
    if isinstance(value, str):
        return redact(value)
    return redact(json.dumps(value, ensure_ascii=False, default=str))


def _part_json(part: Any) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "content": part.text}
    if isinstance(part, ToolCall):
        return {"type": "tool_call", "id": part.id, "name": part.name, "arguments": part.arguments}
    if isinstance(part, ToolResult):
        return {"type": "tool_call_response", "id": part.tool_call_id, "response": part.content}
    if isinstance(part, ImagePart):
        return {"type": "uri", "modality": "image", "uri": part.url}
    return {"type": "unknown"}


def messages_json(messages: Iterable[Message], finish_reason: str | None = None) -> str:
    """Messages in the GenAI semconv JSON shape (`role` + typed `parts`), redacted."""
    out: list[dict[str, Any]] = []
    for m in messages:
        entry: dict[str, Any] = {"role": m.role, "parts": [_part_json(p) for p in m.parts]}
        if m.name:
            entry["name"] = m.name
        if finish_reason is not None:
            entry["finish_reason"] = finish_reason
        out.append(entry)
    return _json(out)


def _run_messages(value: Any, role: str, finish_reason: str | None = None) -> str:
    """A run's input or output as GenAI semconv messages: messages as they are, anything
    else as one text part (JSON for non-text values)."""
    if isinstance(value, Message):
        return messages_json([value], finish_reason)
    if isinstance(value, list) and value and all(isinstance(m, Message) for m in value):  # pyright: ignore[reportUnknownVariableType]
        return messages_json(value, finish_reason)  # pyright: ignore[reportUnknownArgumentType]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    entry: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        entry["finish_reason"] = finish_reason
    return _json([entry])


def _flat_messages(attrs: dict[str, AttrValue], prefix: str, messages: Iterable[Message]) -> None:
    """OpenInference's flattened `llm.input_messages.{i}.message.role/content` (what Phoenix's
    message view reads). Content is redacted."""
    for i, m in enumerate(messages):
        attrs[f"{prefix}.{i}.{sc.OI_MESSAGE_ROLE}"] = m.role
        text = m.text
        if text:
            attrs[f"{prefix}.{i}.{sc.OI_MESSAGE_CONTENT}"] = redact(text)


def _mime(value: Any) -> str:
    return sc.OI_MIME_TEXT if isinstance(value, str) else sc.OI_MIME_JSON


def run_traceparent() -> str | None:
    """The W3C `traceparent` of the current run's root span (the outermost recording
    `spans.agent()` block), or None. The graph engine stores it with each checkpoint so that a
    run resumed later (after an approval) continues the same trace: pass it back as
    `spans.agent(..., parent=...)`: every later part of the run is a child of its first root."""
    root = _run_root.get()
    if root is None:
        return None
    # A resumed run hands on the first root, so every later part hangs directly under it.
    return root.resumes or root.traceparent


def _remote_parent(traceparent: str) -> Any:
    """An OpenTelemetry context whose current span is the (finished, remote) span `traceparent`
    names; None if the value is malformed."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ctx = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def context_attributes(ctx: RunContext | None) -> dict[str, AttrValue]:
    """The attribution attributes (run, session, tenant, user, team, agent, tags) of a run."""
    if ctx is None:
        return {}
    attrs: dict[str, AttrValue] = {sc.BASTION_TENANT_ID: ctx.tenant}
    if ctx.run_id:
        attrs[sc.BASTION_RUN_ID] = ctx.run_id
    if ctx.session:
        attrs[sc.GEN_AI_CONVERSATION_ID] = ctx.session
    if ctx.user:
        attrs[sc.BASTION_USER_ID] = ctx.user
    if ctx.team:
        attrs[sc.BASTION_TEAM_ID] = ctx.team
    if ctx.agent:
        attrs[sc.GEN_AI_AGENT_NAME] = ctx.agent
    for k, v in ctx.tags.items():
        attrs[sc.BASTION_TAG_PREFIX + k] = v
    return attrs


class _Otel:
    """OpenTelemetry entry points, imported once on the first recorded span (not at import)."""

    __slots__ = ("attach", "client", "detach", "internal", "set_span_in_context")

    def __init__(self) -> None:
        from opentelemetry import context, trace

        self.attach = context.attach
        self.detach = context.detach
        self.set_span_in_context = trace.set_span_in_context
        self.client = trace.SpanKind.CLIENT
        self.internal = trace.SpanKind.INTERNAL


_OTEL: list[_Otel] = []


def _otel() -> _Otel:
    if not _OTEL:
        _OTEL.append(_Otel())
    return _OTEL[0]


class Span:
    """A started span (or a no-op stand-in when tracing is off). Use the helpers below rather
    than constructing it."""

    __slots__ = ("_attrs", "_ctx_token", "_name", "_run_token", "_span", "_start", "_token")

    _op = "bastion"

    def __init__(self, name: str) -> None:
        self._name = name
        self._span: OtelSpan | None = None
        self._token: object = None
        self._run_token: contextvars.Token[RunContext | None] | None = None
        self._start = 0.0

    # --- what subclasses provide ---
    def _attributes(self) -> dict[str, AttrValue]:
        return {}

    def _run_context(self) -> RunContext | None:
        return _current_run.get()

    # --- lifecycle ---
    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        tracer = active_tracer()
        if tracer is None:
            return self
        otel = _otel()
        attrs = context_attributes(self._run_context())
        attrs[sc.GEN_AI_OPERATION_NAME] = self._op
        attrs.update(self._attributes())
        if STATE.openinference:
            self._openinference(attrs)
        kind = otel.client if self._op in (sc.OP_CHAT, sc.OP_EMBEDDINGS) else otel.internal
        self._span = tracer.start_span(self._name, kind=kind, attributes=attrs)  # type: ignore[arg-type]
        self._token = otel.attach(otel.set_span_in_context(self._span))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._on_error(exc)
        self._finish(exc)
        span = self._span
        if span is None:
            return
        try:
            _otel().detach(self._token)  # type: ignore[arg-type]
        finally:
            span.end()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _finish(self, exc: BaseException | None) -> None:
        """Hook run at exit (metrics), with tracing on or off."""

    def _openinference(self, attrs: dict[str, AttrValue]) -> None:
        """Add the OpenInference attributes (only with `trace_format="openinference"`)."""
        attrs[sc.OI_SPAN_KIND] = sc.OI_KIND_BY_OPERATION.get(str(attrs[sc.GEN_AI_OPERATION_NAME]), sc.OI_CHAIN)

    # --- recording ---
    @property
    def recording(self) -> bool:
        return self._span is not None

    @property
    def otel_span(self) -> OtelSpan | None:
        """The underlying OpenTelemetry span (None when tracing is off)."""
        return self._span

    @property
    def trace_id(self) -> str | None:
        """The trace id as 32 hex digits (None when tracing is off)."""
        if self._span is None:
            return None
        return format(self._span.get_span_context().trace_id, "032x")

    @property
    def span_id(self) -> str | None:
        if self._span is None:
            return None
        return format(self._span.get_span_context().span_id, "016x")

    def set(self, key: str, value: AttrValue) -> None:
        """Set one attribute. Strings are not redacted here: use `set_content` for free text."""
        if self._span is not None:
            self._span.set_attribute(key, value)

    def set_attributes(self, attributes: Mapping[str, AttrValue]) -> None:
        if self._span is not None:
            self._span.set_attributes(attributes)  # type: ignore[arg-type]

    def set_content(self, key: str, value: Any) -> None:
        """Record free-text content, only when capture is on, always redacted."""
        if self._span is not None and capture_mode() == "span_attributes":
            self._span.set_attribute(key, _json(value))

    def add_event(self, name: str, attributes: Mapping[str, AttrValue] | None = None) -> None:
        if self._span is not None:
            self._span.add_event(name, attributes=attributes)  # type: ignore[arg-type]

    def add_evaluation(
        self,
        name: str,
        *,
        score: float | None = None,
        label: str | None = None,
        explanation: str | None = None,
        response_id: str | None = None,
    ) -> None:
        """Attach a `gen_ai.evaluation.result` event to this span."""
        if self._span is None:
            return
        attrs: dict[str, AttrValue] = {sc.GEN_AI_EVALUATION_NAME: name}
        if score is not None:
            attrs[sc.GEN_AI_EVALUATION_SCORE_VALUE] = float(score)
        if label is not None:
            attrs[sc.GEN_AI_EVALUATION_SCORE_LABEL] = label
        if explanation:
            attrs[sc.GEN_AI_EVALUATION_EXPLANATION] = redact(explanation)
        if response_id:
            attrs[sc.GEN_AI_RESPONSE_ID] = response_id
        self._span.add_event(sc.EVENT_EVALUATION_RESULT, attributes=attrs)

    def record_error(self, exc: BaseException | str, error_type: str | None = None) -> None:
        """Mark the span failed; the message and stack trace are redacted."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        if isinstance(exc, BaseException):
            etype = error_type or type(exc).__qualname__
            message = redact(str(exc))
            self._span.add_event(
                sc.EVENT_EXCEPTION,
                {
                    sc.EXCEPTION_TYPE: type(exc).__qualname__,
                    sc.EXCEPTION_MESSAGE: message,
                    sc.EXCEPTION_STACKTRACE: redact("".join(traceback.format_exception(exc))),
                },
            )
        else:
            etype = error_type or "error"
            message = redact(exc)
        self._span.set_attribute(sc.ERROR_TYPE, etype)
        self._span.set_status(Status(StatusCode.ERROR, message[:1000]))

    def _on_error(self, exc: BaseException) -> None:
        from bastion.errors import ControlFlowSignal

        if isinstance(exc, ControlFlowSignal):
            # An interrupt pauses the run; it is not a failure of this span.
            self.add_event(sc.EVENT_CONTROL_FLOW, {sc.BASTION_SIGNAL: type(exc).__name__})
            return
        self.record_error(exc)


class AgentSpan(Span):
    __slots__ = ("_agent_id", "_agent_name", "_context", "_input", "_parent", "_root_token", "_traceparent")
    _op = sc.OP_INVOKE_AGENT

    def __init__(
        self, name: str, context: RunContext, agent_id: str | None, input: Any, parent: str | None = None
    ) -> None:
        super().__init__(f"{sc.OP_INVOKE_AGENT} {name}")
        self._agent_name = name
        self._context = context
        self._agent_id = agent_id
        self._input = input
        self._parent = parent
        self._ctx_token = None
        self._root_token: contextvars.Token[AgentSpan | None] | None = None
        self._traceparent: str | None = None

    @property
    def resumes(self) -> str | None:
        """The `traceparent` of the root of the run this one resumes (None for a fresh run)."""
        return self._parent

    @property
    def traceparent(self) -> str | None:
        """This span as a W3C `traceparent` (None when tracing is off)."""
        if self._traceparent is None and self._span is not None:
            ctx = self._span.get_span_context()
            self._traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 1:02x}"
        return self._traceparent

    def _run_context(self) -> RunContext | None:
        return self._context

    def _attributes(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {sc.GEN_AI_AGENT_NAME: self._agent_name}
        if self._agent_id:
            attrs[sc.GEN_AI_AGENT_ID] = self._agent_id
        if self._input is not None and capture_mode() == "span_attributes":
            attrs[sc.BASTION_RUN_INPUT] = _json(self._input)
            attrs[sc.GEN_AI_INPUT_MESSAGES] = _run_messages(self._input, "user")
        if self._parent is not None:
            attrs[sc.BASTION_RUN_RESUMED] = True
        return attrs

    def _openinference(self, attrs: dict[str, AttrValue]) -> None:
        super()._openinference(attrs)
        ctx = self._context
        if ctx.session:
            attrs[sc.OI_SESSION_ID] = ctx.session
        if ctx.user:
            attrs[sc.OI_USER_ID] = ctx.user
        text = attrs.get(sc.BASTION_RUN_INPUT)
        if text is not None:
            attrs[sc.OI_INPUT_VALUE] = text
            attrs[sc.OI_INPUT_MIME_TYPE] = _mime(self._input)

    def __enter__(self) -> Self:
        self._run_token = _current_run.set(self._context)
        if self._parent is not None and active_tracer() is not None:
            # A resumed run: its root continues the trace of the run it resumes.
            parent = _remote_parent(self._parent)
            if parent is not None:
                self._ctx_token = _otel().attach(parent)
            else:
                self._parent = None
        super().__enter__()
        if self._span is not None and _run_root.get() is None:
            self._root_token = _run_root.set(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            super().__exit__(exc_type, exc, tb)
        finally:
            if self._root_token is not None:
                _run_root.reset(self._root_token)
                self._root_token = None
            if self._ctx_token is not None:
                _otel().detach(self._ctx_token)  # type: ignore[arg-type]
                self._ctx_token = None
            if self._run_token is not None:
                _current_run.reset(self._run_token)

    def record_output(self, output: Any) -> None:
        """The run's final output (content: recorded only when capture is on)."""
        span = self._span
        if span is None or capture_mode() != "span_attributes":
            return
        text = _json(output)
        attrs: dict[str, AttrValue] = {
            sc.BASTION_RUN_OUTPUT: text,
            sc.GEN_AI_OUTPUT_MESSAGES: _run_messages(output, "assistant", "stop"),
        }
        if STATE.openinference:
            attrs[sc.OI_OUTPUT_VALUE] = text
            attrs[sc.OI_OUTPUT_MIME_TYPE] = _mime(output)
        span.set_attributes(attrs)


class ChatSpan(Span):
    __slots__ = ("_model", "_model_name", "_provider", "_request", "_response")
    _op = sc.OP_CHAT

    def __init__(self, model: str, request: ModelRequest | None) -> None:
        self._model_name = sc.model_of(model)
        self._provider = sc.provider_of(model)
        super().__init__(f"{sc.OP_CHAT} {self._model_name}")
        self._model = model
        self._request = request
        self._response: ModelResponse | None = None

    def _run_context(self) -> RunContext | None:
        if self._request is not None:
            return self._request.context
        return _current_run.get()

    def _attributes(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {
            sc.GEN_AI_PROVIDER_NAME: self._provider,
            sc.GEN_AI_REQUEST_MODEL: self._model_name,
        }
        req = self._request
        if req is None:
            return attrs
        s = req.settings
        if s.temperature is not None:
            attrs[sc.GEN_AI_REQUEST_TEMPERATURE] = s.temperature
        if s.max_tokens is not None:
            attrs[sc.GEN_AI_REQUEST_MAX_TOKENS] = s.max_tokens
        if s.top_p is not None:
            attrs[sc.GEN_AI_REQUEST_TOP_P] = s.top_p
        if s.seed is not None:
            attrs[sc.GEN_AI_REQUEST_SEED] = s.seed
        if capture_mode() == "span_attributes":
            messages = req.messages
            if self._provider in sc.SEPARATE_SYSTEM_PROVIDERS and any(m.role == "system" for m in messages):
                # This provider's API takes them apart from the history (semconv v1.37+).
                system = [_part_json(p) for m in messages if m.role == "system" for p in m.parts]
                attrs[sc.GEN_AI_SYSTEM_INSTRUCTIONS] = _json(system)
                messages = [m for m in messages if m.role != "system"]
            attrs[sc.GEN_AI_INPUT_MESSAGES] = messages_json(messages)
        return attrs

    def _openinference(self, attrs: dict[str, AttrValue]) -> None:
        super()._openinference(attrs)
        attrs[sc.OI_LLM_MODEL_NAME] = self._model_name
        attrs[sc.OI_LLM_PROVIDER] = self._provider
        attrs[sc.OI_LLM_SYSTEM] = self._provider
        req = self._request
        if req is None:
            return
        s = req.settings
        params = {
            k: v
            for k, v in (
                ("temperature", s.temperature),
                ("max_tokens", s.max_tokens),
                ("top_p", s.top_p),
                ("seed", s.seed),
            )
            if v is not None
        }
        if params:
            attrs[sc.OI_LLM_INVOCATION_PARAMETERS] = json.dumps(params)
        messages = attrs.get(sc.GEN_AI_INPUT_MESSAGES)
        if messages is not None:  # content capture is on
            attrs[sc.OI_INPUT_VALUE] = messages
            attrs[sc.OI_INPUT_MIME_TYPE] = sc.OI_MIME_JSON
            _flat_messages(attrs, sc.OI_LLM_INPUT_MESSAGES, req.messages)

    def record_response(self, response: ModelResponse) -> None:
        """Usage, cost, finish reason, response model (and output content when capture is on)."""
        self._response = response
        span = self._span
        if span is None:
            return
        u = response.usage
        attrs: dict[str, AttrValue] = {
            sc.GEN_AI_RESPONSE_FINISH_REASONS: [response.finish_reason],
            sc.GEN_AI_USAGE_INPUT_TOKENS: u.input_tokens,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: u.output_tokens,
        }
        if response.model:
            attrs[sc.GEN_AI_RESPONSE_MODEL] = sc.model_of(response.model)
        if response.response_id:
            attrs[sc.GEN_AI_RESPONSE_ID] = response.response_id
        if u.cache_read_tokens:
            attrs[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = u.cache_read_tokens
        if u.cache_write_tokens:
            attrs[sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = u.cache_write_tokens
        if u.reasoning_tokens:
            attrs[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = u.reasoning_tokens
        if response.cost_usd is not None:
            attrs[sc.BASTION_COST_USD] = float(response.cost_usd)
        if response.cached:
            attrs[sc.BASTION_CACHED] = True
        if capture_mode() == "span_attributes":
            attrs[sc.GEN_AI_OUTPUT_MESSAGES] = messages_json([response.message], response.finish_reason)
        if STATE.openinference:
            _oi_response(attrs, response)
        span.set_attributes(attrs)
        if response.finish_reason == "error":
            self.record_error("the model finished with an error", error_type="finish_reason_error")

    def _finish(self, exc: BaseException | None) -> None:
        inst = STATE.instruments
        if inst is None:
            return
        # Label sets as ready-made key tuples: the metrics aggregate them without building or
        # sorting dicts (this runs for every model call).
        labels: tuple[tuple[str, str], ...] = (
            (sc.GEN_AI_OPERATION_NAME, sc.OP_CHAT),
            (sc.GEN_AI_PROVIDER_NAME, self._provider),
            (sc.GEN_AI_REQUEST_MODEL, self._model_name),
        )
        resp = self._response
        if resp is not None and resp.model:
            labels += ((sc.GEN_AI_RESPONSE_MODEL, sc.model_of(resp.model)),)
        if exc is not None:
            labels += ((sc.ERROR_TYPE, type(exc).__qualname__),)
        inst.duration.record_key(time.perf_counter() - self._start, labels)
        if resp is None:
            return
        inst.token_usage.record_key(resp.usage.input_tokens, (*labels, _TOKEN_INPUT))
        inst.token_usage.record_key(resp.usage.output_tokens, (*labels, _TOKEN_OUTPUT))
        if resp.cost_usd:
            ctx = self._run_context()
            cost_key: tuple[tuple[str, str], ...] = ((sc.GEN_AI_REQUEST_MODEL, self._model_name),)
            if ctx is not None:
                cost_key += ((sc.BASTION_TENANT_ID, ctx.tenant),)
            inst.cost.add_key(float(resp.cost_usd), cost_key)


def _oi_response(attrs: dict[str, AttrValue], response: ModelResponse) -> None:
    u = response.usage
    attrs[sc.OI_LLM_TOKEN_COUNT_PROMPT] = u.input_tokens
    attrs[sc.OI_LLM_TOKEN_COUNT_COMPLETION] = u.output_tokens
    attrs[sc.OI_LLM_TOKEN_COUNT_TOTAL] = u.input_tokens + u.output_tokens
    if u.cache_read_tokens:
        attrs[sc.OI_LLM_TOKEN_COUNT_CACHE_READ] = u.cache_read_tokens
    if u.cache_write_tokens:
        attrs[sc.OI_LLM_TOKEN_COUNT_CACHE_WRITE] = u.cache_write_tokens
    if u.reasoning_tokens:
        attrs[sc.OI_LLM_TOKEN_COUNT_REASONING] = u.reasoning_tokens
    output = attrs.get(sc.GEN_AI_OUTPUT_MESSAGES)
    if output is not None:  # content capture is on
        attrs[sc.OI_OUTPUT_VALUE] = output
        attrs[sc.OI_OUTPUT_MIME_TYPE] = sc.OI_MIME_JSON
        _flat_messages(attrs, sc.OI_LLM_OUTPUT_MESSAGES, [response.message])


_TOKEN_INPUT = (sc.GEN_AI_TOKEN_TYPE, "input")
_TOKEN_OUTPUT = (sc.GEN_AI_TOKEN_TYPE, "output")


class ToolSpan(Span):
    __slots__ = ("_arguments", "_call_id", "_context", "_error", "_side_effect", "_tool")
    _op = sc.OP_EXECUTE_TOOL

    def __init__(
        self,
        name: str,
        call_id: str | None,
        side_effect: SideEffect | str,
        arguments: Mapping[str, Any] | None,
        context: RunContext | None,
    ) -> None:
        super().__init__(f"{sc.OP_EXECUTE_TOOL} {name}")
        self._tool = name
        self._call_id = call_id
        self._side_effect = side_effect
        self._arguments = arguments
        self._context = context
        self._error = False

    def _run_context(self) -> RunContext | None:
        return self._context if self._context is not None else _current_run.get()

    def _attributes(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {
            sc.GEN_AI_TOOL_NAME: self._tool,
            sc.GEN_AI_TOOL_TYPE: "function",
            sc.BASTION_TOOL_SIDE_EFFECT: str(self._side_effect),
        }
        if self._call_id:
            attrs[sc.GEN_AI_TOOL_CALL_ID] = self._call_id
        if self._arguments is not None and capture_mode() == "span_attributes":
            attrs[sc.GEN_AI_TOOL_CALL_ARGUMENTS] = _json(dict(self._arguments))
        return attrs

    def _openinference(self, attrs: dict[str, AttrValue]) -> None:
        super()._openinference(attrs)
        attrs[sc.OI_TOOL_NAME] = self._tool
        arguments = attrs.get(sc.GEN_AI_TOOL_CALL_ARGUMENTS)
        if arguments is not None:
            attrs[sc.OI_INPUT_VALUE] = arguments
            attrs[sc.OI_INPUT_MIME_TYPE] = sc.OI_MIME_JSON

    def record_result(self, result: ToolResult | Any, *, cost_usd: float | None = None) -> None:
        """The tool's result: an error result marks the span failed; content only when capture
        is on. `cost_usd` attributes money the tool spent (a paid API) to it."""
        is_error = isinstance(result, ToolResult) and result.is_error
        self._error = self._error or is_error
        if self._span is None:
            return
        self._span.set_attribute(sc.BASTION_TOOL_IS_ERROR, is_error)
        if cost_usd is not None:
            self._span.set_attribute(sc.BASTION_COST_USD, float(cost_usd))
        content = result.content if isinstance(result, ToolResult) else result
        if capture_mode() == "span_attributes":
            text = _json(content)
            self._span.set_attribute(sc.GEN_AI_TOOL_CALL_RESULT, text)
            if STATE.openinference:
                self._span.set_attribute(sc.OI_OUTPUT_VALUE, text)
                self._span.set_attribute(sc.OI_OUTPUT_MIME_TYPE, _mime(content))
        if is_error:
            text = result.content_text() if isinstance(result, ToolResult) else str(result)
            self.record_error(text, error_type="tool_error")

    def _finish(self, exc: BaseException | None) -> None:
        inst = STATE.instruments
        if inst is None:
            return
        label = (sc.GEN_AI_TOOL_NAME, self._tool)
        inst.tool_calls.add_key(1, (label,))
        if exc is not None or self._error:
            err = type(exc).__qualname__ if exc is not None else "tool_error"
            inst.tool_errors.add_key(1, (label, (sc.ERROR_TYPE, err)))


class RetrievalSpan(Span):
    __slots__ = ("_query", "_source", "_top_k")
    _op = sc.OP_RETRIEVAL

    def __init__(self, source: str, query: str | None, top_k: int | None) -> None:
        super().__init__(f"{sc.OP_RETRIEVAL} {source}")
        self._source = source
        self._query = query
        self._top_k = top_k

    def _attributes(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {sc.GEN_AI_DATA_SOURCE_ID: self._source}
        if self._top_k is not None:
            attrs[sc.GEN_AI_REQUEST_TOP_K] = self._top_k
        if self._query is not None and capture_mode() == "span_attributes":
            attrs[sc.BASTION_RETRIEVAL_QUERY] = redact(self._query)
        return attrs

    def _openinference(self, attrs: dict[str, AttrValue]) -> None:
        super()._openinference(attrs)
        query = attrs.get(sc.BASTION_RETRIEVAL_QUERY)
        if query is not None:
            attrs[sc.OI_INPUT_VALUE] = query
            attrs[sc.OI_INPUT_MIME_TYPE] = sc.OI_MIME_TEXT

    def record_results(self, count: int) -> None:
        self.set(sc.BASTION_RETRIEVAL_RESULTS, count)


class EmbeddingsSpan(Span):
    __slots__ = ("_model", "_n")
    _op = sc.OP_EMBEDDINGS

    def __init__(self, model: str, n: int) -> None:
        super().__init__(f"{sc.OP_EMBEDDINGS} {sc.model_of(model)}")
        self._model = model
        self._n = n

    def _attributes(self) -> dict[str, AttrValue]:
        return {
            sc.GEN_AI_PROVIDER_NAME: sc.provider_of(self._model),
            sc.GEN_AI_REQUEST_MODEL: sc.model_of(self._model),
            sc.BASTION_EMBEDDINGS_INPUTS: self._n,
        }

    def _openinference(self, attrs: dict[str, AttrValue]) -> None:
        super()._openinference(attrs)
        attrs[sc.OI_EMBEDDING_MODEL_NAME] = sc.model_of(self._model)

    def record_usage(
        self, usage: Usage | None = None, *, dimensions: int | None = None, cost_usd: float | None = None
    ) -> None:
        if self._span is None:
            return
        if usage is not None:
            self._span.set_attribute(sc.GEN_AI_USAGE_INPUT_TOKENS, usage.input_tokens)
        if dimensions is not None:
            self._span.set_attribute(sc.GEN_AI_EMBEDDINGS_DIMENSION_COUNT, dimensions)
        if cost_usd is not None:
            self._span.set_attribute(sc.BASTION_COST_USD, float(cost_usd))


class CheckpointSpan(Span):
    __slots__ = ("_step", "_thread_id")
    _op = sc.OP_CHECKPOINT

    def __init__(self, thread_id: str, step: int, operation: str) -> None:
        super().__init__(f"checkpoint {operation}")
        self._thread_id = thread_id
        self._step = step

    def _attributes(self) -> dict[str, AttrValue]:
        return {sc.BASTION_CHECKPOINT_THREAD_ID: self._thread_id, sc.BASTION_CHECKPOINT_STEP: self._step}


class PolicySpan(Span):
    __slots__ = ("_decision", "_reason", "_tool")
    _op = sc.OP_POLICY

    def __init__(self, tool: str, decision: str, reason: str | None) -> None:
        super().__init__(f"policy {tool}")
        self._tool = tool
        self._decision = decision
        self._reason = reason

    def _attributes(self) -> dict[str, AttrValue]:
        attrs: dict[str, AttrValue] = {
            sc.BASTION_POLICY_TOOL: self._tool,
            sc.GEN_AI_TOOL_NAME: self._tool,
            sc.BASTION_POLICY_DECISION: self._decision,
        }
        if self._reason:
            attrs[sc.BASTION_POLICY_REASON] = redact(self._reason)
        return attrs

    def _openinference(self, attrs: dict[str, AttrValue]) -> None:
        super()._openinference(attrs)
        # The decision is the guardrail's output (not content: allow / deny / approval_required).
        attrs[sc.OI_OUTPUT_VALUE] = self._decision
        attrs[sc.OI_OUTPUT_MIME_TYPE] = sc.OI_MIME_TEXT

    def record_decision(self, decision: str, reason: str | None = None) -> None:
        """Update the decision when it is only known inside the block."""
        self.set(sc.BASTION_POLICY_DECISION, decision)
        if STATE.openinference:
            self.set(sc.OI_OUTPUT_VALUE, decision)
        if reason:
            self.set(sc.BASTION_POLICY_REASON, redact(reason))


class GenericSpan(Span):
    __slots__ = ("_extra", "_op_name")

    def __init__(self, name: str, attributes: Mapping[str, AttrValue] | None, operation: str) -> None:
        super().__init__(name)
        self._extra = dict(attributes or {})
        self._op_name = operation

    def _attributes(self) -> dict[str, AttrValue]:
        attrs = dict(self._extra)
        attrs[sc.GEN_AI_OPERATION_NAME] = self._op_name
        return attrs


# --- the helpers ------------------------------------------------------------------------------


def agent(
    name: str, context: RunContext, *, agent_id: str | None = None, input: Any = None, parent: str | None = None
) -> AgentSpan:
    """`invoke_agent {name}`: the root of a run. Spans opened inside inherit `context`'s
    attribution (run, session, tenant, user, team). `parent`: the W3C `traceparent` of the
    root of the run this one resumes (`run_traceparent()` saved with its checkpoint), so that a
    run paused for an approval and resumed later is one trace."""
    return AgentSpan(name, context, agent_id, input, parent)


def chat(model: str, request: ModelRequest | None = None) -> ChatSpan:
    """`chat {model}`: one model call. Call `record_response()` with the answer."""
    return ChatSpan(model, request)


def tool(
    name: str,
    call_id: str | None = None,
    side_effect: SideEffect | str = "none",
    *,
    arguments: Mapping[str, Any] | None = None,
    context: RunContext | None = None,
) -> ToolSpan:
    """`execute_tool {name}`: one tool call. Call `record_result()` with the `ToolResult`."""
    return ToolSpan(name, call_id, side_effect, arguments, context)


def retrieval(source: str, query: str | None = None, *, top_k: int | None = None) -> RetrievalSpan:
    """`retrieval {source}`: a memory / knowledge lookup (`gen_ai.data_source.id` = source)."""
    return RetrievalSpan(source, query, top_k)


def embeddings(model: str, n: int) -> EmbeddingsSpan:
    """`embeddings {model}`: embedding `n` inputs."""
    return EmbeddingsSpan(model, n)


def checkpoint(thread_id: str, step: int, operation: str = "put") -> CheckpointSpan:
    """`checkpoint {operation}`: persisting or loading a checkpoint."""
    return CheckpointSpan(thread_id, step, operation)


def checkpoint_stored(thread_id: str, step: int, started_ns: int, duration_s: float) -> None:
    """Record a stored checkpoint as a `checkpoint put` event on the current span (the run's). An
    event, not a span: a span row per step was a quarter of a small durable run's server CPU."""
    if active_tracer() is None:
        return
    from opentelemetry import trace

    trace.get_current_span().add_event(
        sc.EVENT_CHECKPOINT,
        {
            sc.BASTION_CHECKPOINT_THREAD_ID: thread_id,
            sc.BASTION_CHECKPOINT_STEP: step,
            sc.BASTION_CHECKPOINT_DURATION_MS: round(duration_s * 1000, 3),
        },
        timestamp=started_ns,
    )


def policy(tool: str, decision: str, reason: str | None = None) -> PolicySpan:
    """`policy {tool}`: an authorization decision (allow / deny / approval_required)."""
    return PolicySpan(tool, decision, reason)


def span(name: str, attributes: Mapping[str, AttrValue] | None = None, *, operation: str = "bastion") -> Span:
    """Any other unit of work (a graph node, a queue wait), nested like the rest."""
    return GenericSpan(name, attributes, operation)


__all__ = [
    "AgentSpan",
    "ChatSpan",
    "CheckpointSpan",
    "EmbeddingsSpan",
    "PolicySpan",
    "RetrievalSpan",
    "Span",
    "ToolSpan",
    "agent",
    "chat",
    "checkpoint",
    "context_attributes",
    "current_run",
    "embeddings",
    "messages_json",
    "policy",
    "retrieval",
    "run_traceparent",
    "span",
    "tool",
]
