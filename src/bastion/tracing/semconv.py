"""Every span, attribute, event and metric name Bastion emits, in one versioned module.

Baseline: OpenTelemetry GenAI semantic conventions v1.41 (`gen_ai.*`). Names the conventions
do not cover (cost, tenant, run, policy, checkpoints) live under `bastion.*`. Nothing else in
Bastion spells an attribute name as a string literal: a convention change is a change here,
and `SEMCONV_VERSION` / `SCHEMA_URL` tell backends which baseline the data follows.
"""

from __future__ import annotations

from typing import Final

SEMCONV_VERSION: Final = "1.41.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
BASTION_SCHEMA_VERSION: Final = 1  # bump when a bastion.* name changes meaning

# --- operation names (gen_ai.operation.name) and span name prefixes ---------------------------
OP_CHAT: Final = "chat"
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_EXECUTE_TOOL: Final = "execute_tool"
OP_EMBEDDINGS: Final = "embeddings"
OP_RETRIEVAL: Final = "retrieval"
OP_CHECKPOINT: Final = "bastion.checkpoint"
OP_POLICY: Final = "bastion.policy"
OP_EVAL: Final = "bastion.eval"  # one attempt of an eval case (evaluation events hang here)
OP_EVALUATION: Final = "bastion.evaluation"  # results written back to a stored trace

# --- gen_ai.* attributes ----------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_TOP_K: Final = "gen_ai.request.top_k"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"  # = Bastion session
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"  # content: opt-in only
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"  # content: opt-in only
GEN_AI_DATA_SOURCE_ID: Final = "gen_ai.data_source.id"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"  # content: opt-in only
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"  # content: opt-in only
GEN_AI_SYSTEM_INSTRUCTIONS: Final = "gen_ai.system_instructions"  # content: opt-in only
GEN_AI_EMBEDDINGS_DIMENSION_COUNT: Final = "gen_ai.embeddings.dimension.count"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"  # metric attribute: "input" | "output"
ERROR_TYPE: Final = "error.type"

# exception event (OTel general semconv)
EVENT_EXCEPTION: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"

# gen_ai.evaluation.result event
EVENT_EVALUATION_RESULT: Final = "gen_ai.evaluation.result"
GEN_AI_EVALUATION_NAME: Final = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE: Final = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL: Final = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION: Final = "gen_ai.evaluation.explanation"

# --- bastion.* attributes ---------------------------------------------------------------------
BASTION_RUN_ID: Final = "bastion.run.id"
BASTION_TENANT_ID: Final = "bastion.tenant.id"
BASTION_USER_ID: Final = "bastion.user.id"
BASTION_TEAM_ID: Final = "bastion.team.id"
BASTION_COST_USD: Final = "bastion.cost.usd"
BASTION_CACHED: Final = "bastion.response.cached"
BASTION_RUN_INPUT: Final = "bastion.run.input"  # content: opt-in only
BASTION_RUN_OUTPUT: Final = "bastion.run.output"  # content: opt-in only
BASTION_TOOL_SIDE_EFFECT: Final = "bastion.tool.side_effect"
BASTION_TOOL_IS_ERROR: Final = "bastion.tool.is_error"
BASTION_POLICY_TOOL: Final = "bastion.policy.tool"
BASTION_POLICY_DECISION: Final = "bastion.policy.decision"
BASTION_POLICY_REASON: Final = "bastion.policy.reason"
BASTION_CHECKPOINT_THREAD_ID: Final = "bastion.checkpoint.thread_id"
BASTION_CHECKPOINT_STEP: Final = "bastion.checkpoint.step"
BASTION_CHECKPOINT_DURATION_MS: Final = "bastion.checkpoint.duration_ms"
BASTION_RETRIEVAL_QUERY: Final = "bastion.retrieval.query"  # content: opt-in only
BASTION_RETRIEVAL_RESULTS: Final = "bastion.retrieval.results"
BASTION_EMBEDDINGS_INPUTS: Final = "bastion.embeddings.inputs"
BASTION_SCHEMA: Final = "bastion.schema_version"
BASTION_TAG_PREFIX: Final = "bastion.tag."  # + RunContext.tags key
BASTION_EVAL_CASE: Final = "bastion.eval.case"
BASTION_EVAL_ATTEMPT: Final = "bastion.eval.attempt"
EVENT_CHECKPOINT: Final = "checkpoint put"  # a graph step's checkpoint stored (on the run's span)
EVENT_CONTROL_FLOW: Final = "bastion.control_flow"  # an interrupt unwound this span (not an error)
BASTION_SIGNAL: Final = "bastion.signal"
# metric attributes
BASTION_BUDGET_SCOPE: Final = "bastion.budget.scope"
BASTION_STORE: Final = "bastion.store"
BASTION_ALERT_KIND: Final = "bastion.alert.kind"

# --- metrics ----------------------------------------------------------------------------------
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # histogram, {token}
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"  # histogram, s
METRIC_COST: Final = "bastion.cost.usd"  # counter, USD
METRIC_TOOL_ERRORS: Final = "bastion.tool.errors"  # counter
METRIC_TOOL_CALLS: Final = "bastion.tool.calls"  # counter
METRIC_CIRCUIT_STATE: Final = "bastion.circuit_breaker.state"  # gauge: 0 closed, 1 half-open, 2 open
METRIC_BUDGET_USED: Final = "bastion.budget.used"  # gauge: fraction of the limit consumed
METRIC_SPANS_DROPPED: Final = "bastion.tracing.spans.dropped"  # counter
METRIC_COST_ALERTS: Final = "bastion.cost.alerts"  # counter

# Run continuation: a resumed run's root span continues the trace of the run it resumes.
BASTION_RUN_RESUMED: Final = "bastion.run.resumed"  # true on the root span of a resumed run
CHECKPOINT_TRACEPARENT: Final = "traceparent"  # checkpoint metadata key: W3C traceparent of the run root

# Providers whose APIs take system instructions apart from the chat history: for them the
# system messages are recorded as `gen_ai.system_instructions`, for the others they stay in
# `gen_ai.input.messages` (semconv: instructions that are part of the history go there).
SEPARATE_SYSTEM_PROVIDERS: Final = frozenset({"anthropic", "gcp.gemini", "gcp.vertex_ai", "aws.bedrock"})

# --- OpenInference (Arize Phoenix; Langfuse reads it too) --------------------------------------
# Emitted in addition to the gen_ai.* names when `configure_tracing(trace_format="openinference")`
# or BASTION_TRACE_FORMAT=openinference. Names from the OpenInference semantic conventions
# (https://arize-ai.github.io/openinference/spec/semantic_conventions.html); a test checks them
# against the `openinference-semantic-conventions` package when it is installed.
OI_SPAN_KIND: Final = "openinference.span.kind"
OI_INPUT_VALUE: Final = "input.value"  # content: opt-in only
OI_INPUT_MIME_TYPE: Final = "input.mime_type"
OI_OUTPUT_VALUE: Final = "output.value"  # content: opt-in only (except a policy decision)
OI_OUTPUT_MIME_TYPE: Final = "output.mime_type"
OI_LLM_MODEL_NAME: Final = "llm.model_name"
OI_LLM_PROVIDER: Final = "llm.provider"
OI_LLM_SYSTEM: Final = "llm.system"
OI_LLM_INVOCATION_PARAMETERS: Final = "llm.invocation_parameters"
OI_LLM_INPUT_MESSAGES: Final = "llm.input_messages"  # + .{i}.message.role / .content: opt-in only
OI_LLM_OUTPUT_MESSAGES: Final = "llm.output_messages"  # idem
OI_MESSAGE_ROLE: Final = "message.role"
OI_MESSAGE_CONTENT: Final = "message.content"
OI_LLM_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"
OI_LLM_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"
OI_LLM_TOKEN_COUNT_TOTAL: Final = "llm.token_count.total"
OI_LLM_TOKEN_COUNT_CACHE_READ: Final = "llm.token_count.prompt_details.cache_read"
OI_LLM_TOKEN_COUNT_CACHE_WRITE: Final = "llm.token_count.prompt_details.cache_write"
OI_LLM_TOKEN_COUNT_REASONING: Final = "llm.token_count.completion_details.reasoning"
OI_TOOL_NAME: Final = "tool.name"
OI_EMBEDDING_MODEL_NAME: Final = "embedding.model_name"
OI_SESSION_ID: Final = "session.id"
OI_USER_ID: Final = "user.id"
OI_MIME_JSON: Final = "application/json"
OI_MIME_TEXT: Final = "text/plain"
# openinference.span.kind values
OI_LLM: Final = "LLM"
OI_EMBEDDING: Final = "EMBEDDING"
OI_CHAIN: Final = "CHAIN"
OI_RETRIEVER: Final = "RETRIEVER"
OI_TOOL: Final = "TOOL"
OI_AGENT: Final = "AGENT"
OI_GUARDRAIL: Final = "GUARDRAIL"
# Bastion operation -> span kind; checkpoints, graph nodes and anything else are CHAIN.
OI_KIND_BY_OPERATION: Final = {
    OP_CHAT: OI_LLM,
    OP_EMBEDDINGS: OI_EMBEDDING,
    OP_INVOKE_AGENT: OI_AGENT,
    OP_EXECUTE_TOOL: OI_TOOL,
    OP_RETRIEVAL: OI_RETRIEVER,
    OP_POLICY: OI_GUARDRAIL,
}

# OTel semconv bucket boundaries for the two GenAI client histograms
TOKEN_USAGE_BUCKETS: Final = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
DURATION_BUCKETS: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96)

# "provider:model" prefix -> gen_ai.provider.name well-known value
PROVIDER_NAMES: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "azure": "azure.ai.openai",
    "mistral": "mistral_ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "x_ai",
}


def provider_of(model: str) -> str:
    """`gen_ai.provider.name` for a `"provider:model"` address (the prefix when not well known)."""
    prefix, sep, _ = model.partition(":")
    if not sep:
        return "unknown"
    return PROVIDER_NAMES.get(prefix, prefix)


def model_of(model: str) -> str:
    """The model part of a `"provider:model"` address (`#name` of an `openai-compat:` URL)."""
    prefix, sep, rest = model.partition(":")
    if not sep:
        return prefix
    if "#" in rest and "://" in rest:
        return rest.rsplit("#", 1)[1]
    return rest
