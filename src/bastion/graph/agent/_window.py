"""The messages of an agent's model request: the thread assembled under the model's context
window by `bastion.memory.ContextAssembler` (stubbed old tool results, a running summary of
evicted turns), or the whole thread when the agent was built with `context=None`.

The running summary lives in the graph state (`summaries`, per agent), so it is checkpointed
with the thread and each turn only summarises what was evicted since; the summary calls run
inside `memo`, so a resumed run replays them instead of paying for them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.gateway import Model
from bastion.graph import memo
from bastion.graph.agent._codec import response_from_dict, response_to_dict
from bastion.memory import ContextAssembler, ContextPolicy, Summary, counter_for
from bastion.types import Message, ModelRequest, ModelResponse, RunContext, ToolSpec, Usage

if TYPE_CHECKING:
    from bastion.graph.agent._agent import Agent


@dataclass(slots=True)
class Window:
    """What `request_messages` adds to the model node's state update."""

    messages: list[Message]
    tokens: int | None = None  # the assembled size, None without an assembler
    summaries: dict[str, Any] | None = None  # the new `summaries` state value, if it changed
    usage: Usage = field(default_factory=Usage)  # spent on summaries this turn
    cost: float = 0.0


def model_window(model: Model) -> int | None:
    """The model's context window, if known: its own `context_window`, a local model's
    `n_ctx`, else the gateway's model metadata (the price table)."""
    own = getattr(model, "context_window", None)
    if isinstance(own, int) and own > 0:
        return own
    name: str = getattr(model, "name", "")
    if name.startswith("local:") or getattr(model, "wire_format", None) == "llamacpp":
        from bastion.gateway.formats.llamacpp import N_CTX

        return N_CTX
    pricing = getattr(getattr(model, "gateway", None), "pricing", None)
    if pricing is None:
        return None
    try:
        window = pricing.context_window(name)
    except Exception:  # a tier name or an address the table cannot parse: no metadata
        return None
    return window if isinstance(window, int) and window > 0 else None


class AgentWindow:
    """One agent's assembler, built at its first request (the model is resolved by then)."""

    def __init__(self, agent: Agent[Any], policy: ContextPolicy) -> None:
        self.agent = agent
        self.policy = policy
        self._assembler: ContextAssembler | None = None

    @property
    def assembler(self) -> ContextAssembler:
        if self._assembler is None:
            from bastion.graph.agent._resolve import resolve_model_like
            from bastion.memory import DEFAULT_WINDOW

            policy, agent = self.policy, self.agent
            model = agent.resolved_model()
            window = policy.window or model_window(model) or DEFAULT_WINDOW
            reserve = policy.reserve_output or agent.model_settings.max_tokens or min(1024, window // 8)
            summarizer = model if policy.summarizer is None else resolve_model_like(policy.summarizer, agent.gateway)
            self._assembler = ContextAssembler(
                window=window,
                summarizer=summarizer,
                counter=policy.counter or counter_for(model),
                reserve_output=reserve,
                compact_at=policy.compact_at,
                compact_to=policy.compact_to,
                keep_recent=policy.keep_recent,
                summary_max_tokens=policy.summary_max_tokens,
                chunk_tokens=policy.chunk_tokens,
            )
        return self._assembler

    async def messages(
        self, system: list[Message], history: list[Message], state: Any, context: RunContext, key: str
    ) -> Window:
        agent = self.agent
        assembler = self.assembler
        summaries: dict[str, Any] = dict(state.get("summaries") or {})
        stored = summaries.get(agent.name)
        summary = Summary.from_dict(stored) if stored else None
        tools: list[ToolSpec] = agent.tool_specs()
        if agent.output_spec is not None:
            out = agent.output_spec.schema
            tools = [*tools, ToolSpec(out.name, "", out.schema)]
        journaled = _Journaled(assembler.summarizer, key) if assembler.summarizer is not None else None
        assembled = await assembler.assemble(
            history, system=system, summary=summary, tools=tools, context=context, summarizer=journaled
        )
        window = Window(assembled.messages, assembled.tokens)
        if assembled.compacted:
            summaries[agent.name] = assembled.summary.to_dict()
            window.summaries = summaries
        if journaled is not None:
            window.usage, window.cost = journaled.usage, journaled.cost
        return window


class _Journaled:
    """The summarizer, with each call journaled under `key:n` (replayed on resume) and its
    usage and cost added up for the run."""

    def __init__(self, model: Model, key: str) -> None:
        self._model = model
        self._key = key
        self._n = 0
        self.usage = Usage()
        self.cost = 0.0

    @property
    def name(self) -> str:
        return self._model.name

    async def request(self, request: ModelRequest) -> ModelResponse:
        async def call() -> dict[str, Any]:
            return response_to_dict(await self._model.request(request))

        key = f"{self._key}:{self._n}"
        self._n += 1
        response = response_from_dict(await memo(key, call))
        self.usage = self.usage + response.usage
        self.cost += response.cost_usd or 0.0
        return response

    def stream(self, request: ModelRequest) -> Any:
        return self._model.stream(request)


async def request_messages(
    agent: Agent[Any], state: Any, history: list[Message], context: RunContext, key: str
) -> Window:
    """The messages for the agent's next model request (see the module docstring)."""
    system = agent.system_messages(context)
    if agent.core_memory is not None:
        system += await agent.core_memory.system_messages(agent.request_context(context))
    window = agent.context_builder
    if window is None:
        return Window([*system, *history])
    return await window.messages(system, history, state, context, key)
