"""Interop with LLM trace backends (Phoenix, Langfuse): the GenAI semconv content attributes,
the optional OpenInference attributes, and one trace for a run resumed after an approval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.errors import ConfigError
from bastion.tracing import TraceStore, TracingHandle, configure_tracing, spans
from bastion.tracing import semconv as sc
from bastion.types import Message, ModelRequest, ModelResponse, ModelSettings, RunContext, ToolResult, Usage

CTX = RunContext(tenant="acme", user="ana", session="s-1", run_id="run-1", agent="support")


def _workload(model: str = "openai:gpt-4o-mini") -> None:
    """One span of every kind, the way the layers open them."""
    request = ModelRequest(
        [Message.system("Be brief."), Message.user("Where is my order?")],
        settings=ModelSettings(temperature=0.2, max_tokens=50),
        context=CTX,
    )
    response = ModelResponse(
        Message.assistant("Shipped."), Usage(120, 12, cache_read_tokens=100), model=model, cost_usd=0.0004
    )
    with spans.agent("support", CTX, input="Where is my order?") as run:
        with spans.chat(model, request) as call:
            call.record_response(response)
        with spans.policy("lookup_order", "pending") as p:
            p.record_decision("allow")
        with spans.tool("lookup_order", "call_1", "read", arguments={"id": 7}) as t:
            t.record_result(ToolResult("call_1", "lookup_order", {"status": "shipped"}))
        with spans.retrieval("faq", "shipping times", top_k=3) as r:
            r.record_results(2)
        with spans.embeddings("openai:text-embedding-3-small", 1) as e:
            e.record_usage(Usage(5))
        with spans.checkpoint("thread-1", 1):
            pass
        with spans.span("graph node plan"):
            pass
        run.record_output({"answer": "Shipped."})


def _by_op(handle: TracingHandle, exporter: InMemorySpanExporter) -> dict[str, dict[str, Any]]:
    handle.force_flush()
    out: dict[str, dict[str, Any]] = {}
    for s in exporter.get_finished_spans():
        attrs = dict(s.attributes or {})
        out[str(attrs[sc.GEN_AI_OPERATION_NAME])] = attrs
    return out


# --- GenAI semconv (default format) ---------------------------------------------------------


def test_content_capture_sets_semconv_messages_on_chat_and_run_spans(
    traced_content: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    _workload()
    by = _by_op(traced_content, exporter)
    chat = by[sc.OP_CHAT]
    # OpenAI takes the system prompt inside the history: it stays in the input messages.
    assert json.loads(chat[sc.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Where is my order?"}]},
    ]
    assert sc.GEN_AI_SYSTEM_INSTRUCTIONS not in chat
    assert json.loads(chat[sc.GEN_AI_OUTPUT_MESSAGES]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "Shipped."}], "finish_reason": "stop"}
    ]
    root = by[sc.OP_INVOKE_AGENT]
    assert json.loads(root[sc.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Where is my order?"}]}
    ]
    out = json.loads(root[sc.GEN_AI_OUTPUT_MESSAGES])
    assert out[0]["role"] == "assistant" and out[0]["finish_reason"] == "stop"
    assert json.loads(out[0]["parts"][0]["content"]) == {"answer": "Shipped."}
    tool = by[sc.OP_EXECUTE_TOOL]
    assert json.loads(tool[sc.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"id": 7}
    assert json.loads(tool[sc.GEN_AI_TOOL_CALL_RESULT]) == {"status": "shipped"}
    # The default format adds nothing from OpenInference.
    assert not [k for a in by.values() for k in a if k.startswith(("openinference.", "input.", "output.", "llm."))]


def test_system_instructions_apart_for_providers_that_take_them_apart(
    traced_content: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    _workload("anthropic:claude-sonnet-4-5")
    chat = _by_op(traced_content, exporter)[sc.OP_CHAT]
    assert json.loads(chat[sc.GEN_AI_SYSTEM_INSTRUCTIONS]) == [{"type": "text", "content": "Be brief."}]
    assert [m["role"] for m in json.loads(chat[sc.GEN_AI_INPUT_MESSAGES])] == ["user"]


def test_without_capture_no_content_attribute_is_set(traced: TracingHandle, exporter: InMemorySpanExporter) -> None:
    _workload()
    content = {
        sc.GEN_AI_INPUT_MESSAGES,
        sc.GEN_AI_OUTPUT_MESSAGES,
        sc.GEN_AI_SYSTEM_INSTRUCTIONS,
        sc.GEN_AI_TOOL_CALL_ARGUMENTS,
        sc.GEN_AI_TOOL_CALL_RESULT,
        sc.BASTION_RUN_INPUT,
        sc.BASTION_RUN_OUTPUT,
    }
    for attrs in _by_op(traced, exporter).values():
        assert not content & set(attrs)


def test_captured_content_is_redacted_in_every_format(
    oi_content: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    secret = "sk-proj-" + "A1b2C3d4" * 6
    with spans.agent("support", CTX, input=f"my key is {secret}") as run:
        request = ModelRequest([Message.user(f"use {secret}")], context=CTX)
        with spans.chat("openai:gpt-4o-mini", request) as call:
            call.record_response(ModelResponse(Message.assistant(f"ok {secret}"), Usage(1, 1)))
        run.record_output(secret)
    oi_content.force_flush()
    dumped = json.dumps([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert secret not in dumped
    assert "input.value" in dumped and "llm.input_messages.0.message.content" in dumped


# --- OpenInference ----------------------------------------------------------------------------


def test_openinference_kinds_for_every_span(oi_no_content: TracingHandle, exporter: InMemorySpanExporter) -> None:
    _workload()
    kinds = {op: attrs[sc.OI_SPAN_KIND] for op, attrs in _by_op(oi_no_content, exporter).items()}
    assert kinds == {
        sc.OP_INVOKE_AGENT: "AGENT",
        sc.OP_CHAT: "LLM",
        sc.OP_POLICY: "GUARDRAIL",
        sc.OP_EXECUTE_TOOL: "TOOL",
        sc.OP_RETRIEVAL: "RETRIEVER",
        sc.OP_EMBEDDINGS: "EMBEDDING",
        sc.OP_CHECKPOINT: "CHAIN",
        "bastion": "CHAIN",
    }


def test_openinference_without_capture_has_counts_but_no_content(
    oi_no_content: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    _workload()
    by = _by_op(oi_no_content, exporter)
    chat = by[sc.OP_CHAT]
    assert chat[sc.OI_LLM_MODEL_NAME] == "gpt-4o-mini"
    assert chat[sc.OI_LLM_PROVIDER] == "openai"
    assert (chat[sc.OI_LLM_TOKEN_COUNT_PROMPT], chat[sc.OI_LLM_TOKEN_COUNT_COMPLETION]) == (120, 12)
    assert chat[sc.OI_LLM_TOKEN_COUNT_TOTAL] == 132
    assert chat[sc.OI_LLM_TOKEN_COUNT_CACHE_READ] == 100
    assert json.loads(chat[sc.OI_LLM_INVOCATION_PARAMETERS]) == {"temperature": 0.2, "max_tokens": 50}
    assert by[sc.OP_EXECUTE_TOOL][sc.OI_TOOL_NAME] == "lookup_order"
    assert by[sc.OP_EMBEDDINGS][sc.OI_EMBEDDING_MODEL_NAME] == "text-embedding-3-small"
    # A policy decision is not content: the guardrail's output is shown either way.
    assert by[sc.OP_POLICY][sc.OI_OUTPUT_VALUE] == "allow"
    assert (by[sc.OP_INVOKE_AGENT][sc.OI_SESSION_ID], by[sc.OP_INVOKE_AGENT][sc.OI_USER_ID]) == ("s-1", "ana")
    for op, attrs in by.items():
        if op != sc.OP_POLICY:
            assert sc.OI_INPUT_VALUE not in attrs and sc.OI_OUTPUT_VALUE not in attrs, op
        assert not [k for k in attrs if k.startswith(("llm.input_messages", "llm.output_messages"))]


def test_openinference_with_capture_has_input_and_output(
    oi_content: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    _workload()
    by = _by_op(oi_content, exporter)
    root = by[sc.OP_INVOKE_AGENT]
    assert (root[sc.OI_INPUT_VALUE], root[sc.OI_INPUT_MIME_TYPE]) == ("Where is my order?", "text/plain")
    assert json.loads(root[sc.OI_OUTPUT_VALUE]) == {"answer": "Shipped."}
    assert root[sc.OI_OUTPUT_MIME_TYPE] == "application/json"
    chat = by[sc.OP_CHAT]
    assert chat[sc.OI_INPUT_VALUE] == chat[sc.GEN_AI_INPUT_MESSAGES]
    assert chat[sc.OI_INPUT_MIME_TYPE] == "application/json"
    assert chat[sc.OI_OUTPUT_VALUE] == chat[sc.GEN_AI_OUTPUT_MESSAGES]
    assert chat["llm.input_messages.0.message.role"] == "system"
    assert chat["llm.input_messages.1.message.content"] == "Where is my order?"
    assert chat["llm.output_messages.0.message.content"] == "Shipped."
    tool = by[sc.OP_EXECUTE_TOOL]
    assert json.loads(tool[sc.OI_INPUT_VALUE]) == {"id": 7}
    assert json.loads(tool[sc.OI_OUTPUT_VALUE]) == {"status": "shipped"}
    assert by[sc.OP_RETRIEVAL][sc.OI_INPUT_VALUE] == "shipping times"


def test_store_only_path_carries_the_same_openinference_attributes(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    handle = configure_tracing(otlp_endpoint="", store=store, trace_format="openinference", capture_content="off")
    try:
        assert handle.lite  # the store-only path, not the SDK
        _workload()
        handle.force_flush()
        kinds = {
            s.attributes[sc.GEN_AI_OPERATION_NAME]: s.attributes[sc.OI_SPAN_KIND] for s in store.spans(run_id="run-1")
        }
        assert kinds[sc.OP_POLICY] == "GUARDRAIL" and kinds[sc.OP_CHECKPOINT] == "CHAIN"
        assert kinds[sc.OP_CHAT] == "LLM"
    finally:
        handle.shutdown()
        store.close()


def test_trace_format_setting_and_validation(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter, tmp_path: Path
) -> None:
    from bastion.config import get_settings

    monkeypatch.setenv("BASTION_TRACE_FORMAT", "openinference")
    get_settings.cache_clear()
    try:
        handle = configure_tracing(otlp_endpoint="", exporters=[exporter])
        try:
            with spans.checkpoint("t", 1):
                pass
            handle.force_flush()
        finally:
            handle.shutdown()
        assert dict(exporter.get_finished_spans()[0].attributes or {})[sc.OI_SPAN_KIND] == "CHAIN"
        with pytest.raises(ConfigError, match="trace_format"):
            configure_tracing(otlp_endpoint="", trace_format="phoenix")  # type: ignore[arg-type]
    finally:
        monkeypatch.delenv("BASTION_TRACE_FORMAT")
        get_settings.cache_clear()
    # After shutdown the helpers are back to the default format.
    again = InMemorySpanExporter()
    handle = configure_tracing(otlp_endpoint="", exporters=[again])
    try:
        with spans.checkpoint("t", 2):
            pass
        handle.force_flush()
        assert sc.OI_SPAN_KIND not in dict(again.get_finished_spans()[0].attributes or {})
    finally:
        handle.shutdown()


def test_openinference_names_match_the_official_package() -> None:
    conventions = pytest.importorskip("openinference.semconv.trace")
    a = conventions.SpanAttributes
    m = conventions.MessageAttributes
    kinds = {k.value for k in conventions.OpenInferenceSpanKindValues}
    pairs = [
        (sc.OI_SPAN_KIND, a.OPENINFERENCE_SPAN_KIND),
        (sc.OI_INPUT_VALUE, a.INPUT_VALUE),
        (sc.OI_INPUT_MIME_TYPE, a.INPUT_MIME_TYPE),
        (sc.OI_OUTPUT_VALUE, a.OUTPUT_VALUE),
        (sc.OI_OUTPUT_MIME_TYPE, a.OUTPUT_MIME_TYPE),
        (sc.OI_LLM_MODEL_NAME, a.LLM_MODEL_NAME),
        (sc.OI_LLM_PROVIDER, a.LLM_PROVIDER),
        (sc.OI_LLM_SYSTEM, a.LLM_SYSTEM),
        (sc.OI_LLM_INVOCATION_PARAMETERS, a.LLM_INVOCATION_PARAMETERS),
        (sc.OI_LLM_INPUT_MESSAGES, a.LLM_INPUT_MESSAGES),
        (sc.OI_LLM_OUTPUT_MESSAGES, a.LLM_OUTPUT_MESSAGES),
        (sc.OI_LLM_TOKEN_COUNT_PROMPT, a.LLM_TOKEN_COUNT_PROMPT),
        (sc.OI_LLM_TOKEN_COUNT_COMPLETION, a.LLM_TOKEN_COUNT_COMPLETION),
        (sc.OI_LLM_TOKEN_COUNT_TOTAL, a.LLM_TOKEN_COUNT_TOTAL),
        (sc.OI_LLM_TOKEN_COUNT_CACHE_READ, a.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_READ),
        (sc.OI_LLM_TOKEN_COUNT_CACHE_WRITE, a.LLM_TOKEN_COUNT_PROMPT_DETAILS_CACHE_WRITE),
        (sc.OI_LLM_TOKEN_COUNT_REASONING, a.LLM_TOKEN_COUNT_COMPLETION_DETAILS_REASONING),
        (sc.OI_TOOL_NAME, a.TOOL_NAME),
        (sc.OI_EMBEDDING_MODEL_NAME, a.EMBEDDING_MODEL_NAME),
        (sc.OI_SESSION_ID, a.SESSION_ID),
        (sc.OI_USER_ID, a.USER_ID),
        (sc.OI_MESSAGE_ROLE, m.MESSAGE_ROLE),
        (sc.OI_MESSAGE_CONTENT, m.MESSAGE_CONTENT),
    ]
    assert [ours for ours, theirs in pairs if ours != theirs] == []
    assert set(sc.OI_KIND_BY_OPERATION.values()) | {sc.OI_CHAIN} <= kinds
    mimes = {v.value for v in conventions.OpenInferenceMimeTypeValues}
    assert {sc.OI_MIME_JSON, sc.OI_MIME_TEXT} <= mimes
