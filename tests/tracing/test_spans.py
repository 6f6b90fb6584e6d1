from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.errors import GraphInterrupt, ToolError
from bastion.tracing import TraceStore, TracingHandle, spans
from bastion.tracing import semconv as sc
from bastion.types import (
    Message,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    RunContext,
    ToolCall,
    ToolResult,
    Usage,
)

CTX = RunContext(tenant="acme", user="u1", session="sess-1", run_id="run-1", agent="support", team="core")


def _request() -> ModelRequest:
    return ModelRequest(
        [Message.system("be nice"), Message.user("weather in Paris?")],
        settings=ModelSettings(temperature=0.2, max_tokens=256),
        context=CTX,
    )


def _response() -> ModelResponse:
    return ModelResponse(
        Message.assistant(tool_calls=[ToolCall("get_weather", {"city": "Paris"}, id="call_1")]),
        Usage(input_tokens=120, output_tokens=15, cache_read_tokens=100, reasoning_tokens=7, requests=1),
        model="openai:gpt-4o-mini-2024-07-18",
        finish_reason="tool_calls",
        cost_usd=0.0123,
        response_id="resp_1",
    )


def _run() -> str:
    with spans.agent("support", CTX, agent_id="agent-7") as a:
        with spans.chat("openai:gpt-4o-mini", _request()) as c:
            c.record_response(_response())
        with spans.tool("get_weather", "call_1", "read") as t:
            t.record_result(ToolResult("call_1", "get_weather", {"temp": 21}))
    assert a.trace_id is not None
    return a.trace_id


def test_helpers_are_noops_when_tracing_is_not_configured() -> None:
    with spans.agent("a", CTX) as a:
        with spans.chat("openai:gpt-4o", _request()) as c:
            c.record_response(_response())
        with spans.tool("t", "c", "write") as t:
            t.record_result(ToolResult("c", "t", "x"))
            t.add_evaluation("x", score=1.0)
    assert not a.recording and a.trace_id is None and not c.recording and not t.recording
    with pytest.raises(ValueError, match="boom"), spans.tool("t"):
        raise ValueError("boom")


def test_nested_agent_chat_tool_tree_has_expected_attributes(traced: TracingHandle, store: TraceStore) -> None:
    trace_id = _run()
    assert traced.force_flush()
    tree = store.get_trace(trace_id)
    assert tree is not None
    assert [(d, s.name) for d, s in tree.walk()] == [
        (0, "invoke_agent support"),
        (1, "chat gpt-4o-mini"),
        (1, "execute_tool get_weather"),
    ]
    root, chat, tool = (s for _, s in tree.walk())
    assert chat.parent_id == root.span_id and tool.parent_id == root.span_id
    # attribution on every span, inherited by the tool span from the agent block
    for s in (root, chat, tool):
        assert s.attributes[sc.BASTION_TENANT_ID] == "acme"
        assert s.attributes[sc.BASTION_RUN_ID] == "run-1"
        assert s.attributes[sc.GEN_AI_CONVERSATION_ID] == "sess-1"
        assert s.attributes[sc.BASTION_USER_ID] == "u1"
        assert s.attributes[sc.BASTION_TEAM_ID] == "core"
    assert root.attributes[sc.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert root.attributes[sc.GEN_AI_AGENT_NAME] == "support"
    assert root.attributes[sc.GEN_AI_AGENT_ID] == "agent-7"
    assert chat.kind == "CLIENT"
    assert chat.attributes == chat.attributes | {
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_PROVIDER_NAME: "openai",
        sc.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        sc.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
        sc.GEN_AI_RESPONSE_ID: "resp_1",
        sc.GEN_AI_REQUEST_TEMPERATURE: 0.2,
        sc.GEN_AI_REQUEST_MAX_TOKENS: 256,
        sc.GEN_AI_RESPONSE_FINISH_REASONS: ["tool_calls"],
        sc.GEN_AI_USAGE_INPUT_TOKENS: 120,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 15,
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 100,
        sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: 7,
        sc.BASTION_COST_USD: 0.0123,
    }
    assert tool.attributes == tool.attributes | {
        sc.GEN_AI_OPERATION_NAME: "execute_tool",
        sc.GEN_AI_TOOL_NAME: "get_weather",
        sc.GEN_AI_TOOL_CALL_ID: "call_1",
        sc.GEN_AI_TOOL_TYPE: "function",
        sc.BASTION_TOOL_SIDE_EFFECT: "read",
        sc.BASTION_TOOL_IS_ERROR: False,
    }
    assert tool.status != "ERROR"
    # content capture is off: no prompts, completions, arguments or results
    for s in (root, chat, tool):
        assert not {
            sc.GEN_AI_INPUT_MESSAGES,
            sc.GEN_AI_OUTPUT_MESSAGES,
            sc.GEN_AI_TOOL_CALL_RESULT,
            sc.BASTION_RUN_INPUT,
        } & set(s.attributes)


def test_content_capture_records_messages_in_semconv_shape(traced_content: TracingHandle, store: TraceStore) -> None:
    import json

    with spans.agent("support", CTX, input="weather in Paris?") as a:
        with spans.chat("openai:gpt-4o-mini", _request()) as c:
            c.record_response(_response())
        with spans.tool("get_weather", "call_1", arguments={"city": "Paris"}) as t:
            t.record_result(ToolResult("call_1", "get_weather", {"temp": 21}))
        a.record_output("21 degrees")
    traced_content.force_flush()
    tree = store.get_trace(a.trace_id or "")
    assert tree is not None
    root, chat, tool = (s for _, s in tree.walk())
    inputs = json.loads(chat.attributes[sc.GEN_AI_INPUT_MESSAGES])
    assert inputs == [
        {"role": "system", "parts": [{"type": "text", "content": "be nice"}]},
        {"role": "user", "parts": [{"type": "text", "content": "weather in Paris?"}]},
    ]
    outputs = json.loads(chat.attributes[sc.GEN_AI_OUTPUT_MESSAGES])
    assert outputs[0]["parts"][0] == {
        "type": "tool_call",
        "id": "call_1",
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }
    assert outputs[0]["finish_reason"] == "tool_calls"
    assert json.loads(tool.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"city": "Paris"}
    assert json.loads(tool.attributes[sc.GEN_AI_TOOL_CALL_RESULT]) == {"temp": 21}
    assert root.attributes[sc.BASTION_RUN_INPUT] == "weather in Paris?"
    assert root.attributes[sc.BASTION_RUN_OUTPUT] == "21 degrees"


def test_errors_mark_spans_failed_and_interrupts_do_not(traced: TracingHandle, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ToolError), spans.tool("flaky", "c1", "write"):
        raise ToolError("upstream said no", tool="flaky")
    with pytest.raises(GraphInterrupt), spans.agent("a", CTX):
        raise GraphInterrupt(["approve?"])
    with spans.tool("t", "c2") as t:
        t.record_result(ToolResult("c2", "t", "not found", is_error=True))
    traced.force_flush()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    flaky = by_name["execute_tool flaky"]
    assert flaky.status.status_code.name == "ERROR"
    assert flaky.attributes is not None and flaky.attributes[sc.ERROR_TYPE] == "ToolError"
    assert [e.name for e in flaky.events] == ["exception"]
    interrupted = by_name["invoke_agent a"]
    assert interrupted.status.status_code.name == "UNSET"
    assert [e.name for e in interrupted.events] == ["bastion.control_flow"]
    errored = by_name["execute_tool t"]
    assert errored.status.status_code.name == "ERROR"
    assert errored.attributes is not None and errored.attributes[sc.ERROR_TYPE] == "tool_error"


async def test_concurrent_async_runs_get_separate_traces(traced: TracingHandle, store: TraceStore) -> None:
    async def run(i: int) -> str:
        ctx = RunContext(tenant="t", run_id=f"run-{i}")
        async with spans.agent(f"agent{i}", ctx) as a:
            for step in range(3):
                with spans.chat("anthropic:claude-sonnet-4-5", ModelRequest([Message.user("x")], context=ctx)):
                    await asyncio.sleep(0)  # yield so the runs interleave
                async with spans.tool(f"tool{step}", f"c{step}"):
                    await asyncio.sleep(0)
        assert a.trace_id is not None
        return a.trace_id

    ids = await asyncio.wait_for(asyncio.gather(*(run(i) for i in range(4))), timeout=10)
    assert len(set(ids)) == 4
    assert traced.force_flush()
    for i, trace_id in enumerate(ids):
        tree = store.get_trace(trace_id)
        assert tree is not None and len(tree.spans) == 7
        [root] = tree.roots
        assert root.name == f"invoke_agent agent{i}"
        assert all(s.attributes[sc.BASTION_RUN_ID] == f"run-{i}" for s in tree.spans)
        assert len(tree.children(root)) == 6


def test_other_operations_and_evaluation_events(traced: TracingHandle, store: TraceStore) -> None:
    with spans.agent("rag", CTX) as a:
        with spans.retrieval("kb-docs", "refund policy", top_k=5) as r:
            r.record_results(3)
        with spans.embeddings("openai:text-embedding-3-small", 4) as e:
            e.record_usage(Usage(input_tokens=40), dimensions=1536, cost_usd=0.0001)
        with spans.checkpoint("thread-9", 4):
            pass
        with spans.policy("send_email", "deny", "recipient outside allow-list"):
            pass
        with spans.span("graph node plan", {"bastion.graph.node": "plan"}):
            pass
        a.add_evaluation("helpfulness", score=0.75, label="pass", explanation="answered the question")
    traced.force_flush()
    tree = store.get_trace(a.trace_id or "")
    assert tree is not None
    ops = {s.name: s for s in tree.spans}
    assert ops["retrieval kb-docs"].attributes[sc.GEN_AI_DATA_SOURCE_ID] == "kb-docs"
    assert ops["retrieval kb-docs"].attributes[sc.BASTION_RETRIEVAL_RESULTS] == 3
    assert sc.BASTION_RETRIEVAL_QUERY not in ops["retrieval kb-docs"].attributes  # content off
    emb = ops["embeddings text-embedding-3-small"]
    assert emb.attributes[sc.GEN_AI_OPERATION_NAME] == "embeddings"
    assert emb.attributes[sc.GEN_AI_EMBEDDINGS_DIMENSION_COUNT] == 1536
    assert emb.attributes[sc.BASTION_COST_USD] == 0.0001
    assert ops["checkpoint put"].attributes[sc.BASTION_CHECKPOINT_THREAD_ID] == "thread-9"
    pol = ops["policy send_email"]
    assert pol.attributes[sc.BASTION_POLICY_DECISION] == "deny"
    assert pol.attributes[sc.BASTION_POLICY_REASON] == "recipient outside allow-list"
    assert ops["graph node plan"].attributes["bastion.graph.node"] == "plan"
    [root] = tree.roots
    [event] = root.events
    assert event["name"] == sc.EVENT_EVALUATION_RESULT
    assert event["attributes"] == {
        sc.GEN_AI_EVALUATION_NAME: "helpfulness",
        sc.GEN_AI_EVALUATION_SCORE_VALUE: 0.75,
        sc.GEN_AI_EVALUATION_SCORE_LABEL: "pass",
        sc.GEN_AI_EVALUATION_EXPLANATION: "answered the question",
    }


def test_spans_nest_under_an_application_span_from_the_otel_context(
    traced: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    outer = traced.provider.get_tracer("app")
    with outer.start_as_current_span("HTTP POST /runs") as http:
        with spans.agent("a", CTX) as a:
            pass
    traced.force_flush()
    assert a.trace_id == format(http.get_span_context().trace_id, "032x")
    agent_span = next(s for s in exporter.get_finished_spans() if s.name == "invoke_agent a")
    assert agent_span.parent is not None and agent_span.parent.span_id == http.get_span_context().span_id


def test_model_addresses_map_to_semconv_provider_and_model() -> None:
    assert (sc.provider_of("openai:gpt-4o"), sc.model_of("openai:gpt-4o")) == ("openai", "gpt-4o")
    assert sc.provider_of("gemini:gemini-2.5-flash") == "gcp.gemini"
    assert sc.provider_of("local:gemma-3-270m") == "local"
    assert sc.model_of("openai-compat:http://127.0.0.1:8000/v1#qwen") == "qwen"
    assert sc.model_of("openai-compat:http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert (sc.provider_of("gpt-4o"), sc.model_of("gpt-4o")) == ("unknown", "gpt-4o")
