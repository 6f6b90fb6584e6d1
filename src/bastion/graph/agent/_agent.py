"""`Agent`: a model, tools and instructions, run as a durable graph until a final answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, cast, overload

from bastion._sync import run_sync
from bastion.errors import UserError
from bastion.gateway import Model, ToolNames
from bastion.graph.agent._handoff import Handoff, handoff
from bastion.graph.agent._output import OutputSpec
from bastion.graph.agent._resolve import ModelSource, resolve_model_like
from bastion.graph.agent._result import AgentEvent, AgentResult, OutputT
from bastion.graph.agent._run import CONTINUE, Runner
from bastion.graph.agent._window import AgentWindow
from bastion.memory import ContextPolicy
from bastion.tools import Tool, ToolExecutor, tool
from bastion.types import Message, ModelSettings, RunContext, ToolCall, ToolSpec

if TYPE_CHECKING:
    from bastion.checkpoint import Checkpointer
    from bastion.memory import CoreMemory, FactMemory

AgentInput = str | Message | Sequence[Message]
Instructions = str | Callable[[RunContext], str]


class Agent(Generic[OutputT]):
    """An LLM agent: the model answers, its tool calls run in parallel through the tool gateway,
    the results go back to the model, until it gives a final answer.

    - `model`: a `Model`, a `"provider:model"` string, or a gateway tier name (`"strong"`),
      resolved at first use.
    - `output_type`: a pydantic model (or any type pydantic can validate) for structured
      output; an invalid answer is fed back to the model up to `output_retries` times.
    - `tool_executor`: the tool gateway. Default: a `bastion.policy.ToolGateway` whose policy
      grants this agent exactly its own `tools` (irreversible ones still pause for a human
      approval unless every key value is grounded in the user's request or trusted data);
      pass your own `ToolGateway(Policy(...))` for rules, audit files or other grants.
    - `deps`: the application's dependencies handed to tools that take a `ToolContext[Deps]`
      (a `run(..., deps=)` overrides them for one run); never persisted.
    - `checkpointer`: a `bastion.checkpoint.Checkpointer` (SQLite, PostgreSQL, memory); makes
      runs durable and resumable per `thread_id`.
    - `handoffs`: agents (or `handoff(...)` configs) this agent may pass the conversation to.
    - `gateway`: resolves model strings (a `bastion.Gateway`, or any `ModelSource`); default:
      one shared `Gateway`.
    - `max_turns`: model calls per run before `MaxTurnsExceededError` ends a runaway loop.
    - `context`: how each request is fitted into the model's context window (a
      `bastion.memory.ContextPolicy`; on by default: old tool results stubbed, then old turns
      summarised); `context=None` sends the whole thread every time.
    - `core_memory`: a `bastion.memory.CoreMemory`: named blocks shown in the system prompt of
      every model call, which the agent edits through the governed `core_memory_append` /
      `core_memory_replace` tools (added to `tools`, so the default gateway grants them).
    - `facts`: a `bastion.memory.FactMemory`: after a run ends with an answer, durable facts
      are extracted from the thread into long-term memory (provenance, validity, trust label).
    """

    def __init__(
        self,
        model: Model | str,
        *,
        tools: Sequence[Tool | Callable[..., Any]] = (),
        instructions: Instructions = "",
        output_type: type[OutputT] | None = None,
        name: str = "agent",
        description: str = "",
        max_turns: int = 10,
        output_retries: int = 2,
        model_settings: ModelSettings | None = None,
        tool_executor: ToolExecutor | None = None,
        checkpointer: Checkpointer | None = None,
        handoffs: Sequence[Agent[Any] | Handoff] = (),
        gateway: ModelSource | None = None,
        context: ContextPolicy | None = ContextPolicy(),  # noqa: B008  (frozen, safe to share)
        deps: Any = None,
        core_memory: CoreMemory | None = None,
        facts: FactMemory | None = None,
    ) -> None:
        if max_turns < 1:
            raise UserError(f"max_turns must be at least 1, got {max_turns}")
        if output_retries < 0:
            raise UserError(f"output_retries must be 0 or more, got {output_retries}")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"agent name {name!r} must be letters, digits, '_' or '-' (it becomes a tool name)")
        self.name = name
        self.description = description
        self.instructions = instructions
        self.output_type = output_type
        self.max_turns = max_turns
        self.output_retries = output_retries
        self.model_settings = model_settings or ModelSettings()
        self.checkpointer = checkpointer
        self.context_policy = context
        self.deps = deps
        self._model = model
        self._gateway = gateway
        self._executor = tool_executor
        self.core_memory = core_memory
        self.facts = facts
        self.tools: list[Tool] = [t if isinstance(t, Tool) else tool(t) for t in tools]
        if core_memory is not None:
            self.tools.extend(core_memory.tools())
        self.handoffs: list[Handoff] = [h if isinstance(h, Handoff) else handoff(h) for h in handoffs]
        self.tools_by_name: dict[str, Tool] = {t.name: t for t in self.tools}
        self.handoffs_by_tool: dict[str, Handoff] = {h.tool_name: h for h in self.handoffs}
        self._check_tool_names()
        self.output_spec: OutputSpec | None = OutputSpec.for_type(output_type) if output_type else None
        self._resolved: Model | None = None

    def add_handoffs(self, *targets: Agent[Any] | Handoff) -> Agent[OutputT]:
        """Add handoff targets after construction, e.g. for two agents that hand back and forth.
        Only before the agent's first run (its graph is built then)."""
        if "_runner" in self.__dict__:
            raise UserError(f"agent {self.name!r} has already run; add its handoffs before the first run")
        added = [t if isinstance(t, Handoff) else handoff(t) for t in targets]
        self.handoffs.extend(added)
        self.handoffs_by_tool.update((h.tool_name, h) for h in added)
        self._check_tool_names()
        return self

    def _check_tool_names(self) -> None:
        names = [t.name for t in self.tools] + [h.tool_name for h in self.handoffs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"agent {self.name!r} has several tools named {duplicates}; tool names must be unique")

    def __repr__(self) -> str:
        return f"Agent(name={self.name!r}, model={self.model_name!r}, tools={list(self.tools_by_name)})"

    # --- pieces the loop reads ---------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model if isinstance(self._model, str) else getattr(self._model, "name", repr(self._model))

    @property
    def gateway(self) -> ModelSource | None:
        """The gateway given as `gateway=` (None: model strings use the shared one)."""
        return self._gateway

    @cached_property
    def context_builder(self) -> AgentWindow | None:
        """What fits each request into the model's window; None when `context=None`."""
        return None if self.context_policy is None else AgentWindow(self, self.context_policy)

    def resolved_model(self) -> Model:
        if self._resolved is None:
            self._resolved = resolve_model_like(self._model, self._gateway)
        return self._resolved

    def executor(self) -> ToolExecutor:
        if self._executor is None:
            budget = getattr(self._gateway, "budgets", None)
            self._executor = _default_executor(self.name, [t.name for t in self.tools], budget)
        return self._executor

    def system_messages(self, context: RunContext) -> list[Message]:
        text = self.instructions(context) if callable(self.instructions) else self.instructions
        return [Message.system(text)] if text else []

    def tool_specs(self) -> list[ToolSpec]:
        return [t.spec for t in self.tools] + [h.spec for h in self.handoffs]

    def canonical_tool_calls(self, message: Message) -> None:
        """Rename calls that use a tool's provider-legal name (`files__read`) to its canonical
        name (`files.read`), so policy, audit and traces see one name. The wire formats already
        map names back; a model outside them (a custom client, a scripted test) may not."""
        names: ToolNames | None = None
        for part in message.parts:
            if isinstance(part, ToolCall) and part.name not in self.tools_by_name:
                if part.name in self.handoffs_by_tool:
                    continue
                if names is None:
                    extra = [self.output_spec.schema.name] if self.output_spec else []
                    names = ToolNames([t.name for t in self.tool_specs()] + extra)
                part.name = names.canonical(part.name)

    def request_context(self, context: RunContext) -> RunContext:
        from dataclasses import replace

        return replace(context, agent=self.name)

    @cached_property
    def _runner(self) -> Runner:
        return Runner(self)

    # --- running -----------------------------------------------------------------------------

    async def run(
        self,
        input: AgentInput,
        *,
        thread_id: str | None = None,
        context: RunContext | None = None,
        deps: Any = None,
        deferred: bool = False,
    ) -> AgentResult[OutputT]:
        """Run until a final answer (or an interrupt). With a checkpointer, a later `run` on the
        same `thread_id` continues the conversation. `deps` replaces `Agent(deps=)` for this run.

        `deferred=True` is for work that can wait: every model call of the run goes through the
        provider's batch API at batch rates (`Gateway.batch`, one batch per turn) and the run
        waits for it. The batch is recorded before it is submitted, so after a crash `resume()`
        on the thread (with a checkpointer) polls the same batch instead of sending it again."""
        run = self._runner.run(input, thread_id=thread_id, context=context, deps=deps, deferred=deferred)
        return await self._remember(cast(AgentResult[OutputT], await run), context)

    async def resume(
        self, value: Any = CONTINUE, *, thread_id: str, context: RunContext | None = None, deps: Any = None
    ) -> AgentResult[OutputT]:
        """Continue a stopped run. `value` answers the pending interrupt (for example an
        approval; a dict `{interrupt_id: value}` when several are pending). Without a value,
        continue a thread that stopped on an error or a crash, at the step that failed."""
        done = await self._runner.resume(value, thread_id=thread_id, context=context, deps=deps)
        return await self._remember(cast(AgentResult[OutputT], done), context)

    async def _remember(self, result: AgentResult[OutputT], context: RunContext | None) -> AgentResult[OutputT]:
        """Extract durable facts from a run that finished with an answer (`facts=`)."""
        if self.facts is not None and not result.interrupted:
            ctx = self.request_context(context or RunContext())
            await self.facts.after_run(self.resolved_model(), ctx, result.messages)
        return result

    def run_sync(
        self,
        input: AgentInput,
        *,
        thread_id: str | None = None,
        context: RunContext | None = None,
        deps: Any = None,
        deferred: bool = False,
    ) -> AgentResult[OutputT]:
        return run_sync(self.run(input, thread_id=thread_id, context=context, deps=deps, deferred=deferred))

    def resume_sync(
        self, value: Any = CONTINUE, *, thread_id: str, context: RunContext | None = None, deps: Any = None
    ) -> AgentResult[OutputT]:
        return run_sync(self.resume(value, thread_id=thread_id, context=context, deps=deps))

    @overload
    def stream(
        self, input: AgentInput, *, thread_id: str | None = None, context: RunContext | None = None, deps: Any = None
    ) -> AsyncIterator[AgentEvent]: ...
    @overload
    def stream(
        self,
        input: None,
        *,
        resume: Any = CONTINUE,
        thread_id: str,
        context: RunContext | None = None,
        deps: Any = None,
    ) -> AsyncIterator[AgentEvent]: ...
    def stream(
        self,
        input: AgentInput | None,
        *,
        resume: Any = CONTINUE,
        thread_id: str | None = None,
        context: RunContext | None = None,
        deps: Any = None,
    ) -> AsyncIterator[AgentEvent]:
        """Run and yield events as they happen: model tokens, tool calls and results, complete
        messages, handoffs; the last event is `RunDone` carrying the `AgentResult`. Pass
        `input=None, resume=value` to continue an interrupted run (as `resume()` does)."""
        return self._runner.stream(input, resume=resume, thread_id=thread_id, context=context, deps=deps)

    async def delete_thread(self, thread_id: str) -> None:
        """Delete everything stored for a thread (its checkpoints and journal)."""
        await self._runner.delete_thread(thread_id)

    async def stopped_on_error(self, thread_id: str) -> bool:
        """Whether the thread's last run stopped part-way on an error (continue it with
        `resume(thread_id=...)`)."""
        return await self._runner.stopped_on_error(thread_id)

    def as_tool(self, name: str | None = None, description: str | None = None) -> Tool:
        """This agent as a tool another agent can call with a task; the tool returns the final
        answer (text, or the structured output as JSON)."""
        from bastion.graph.agent._as_tool import agent_tool

        return agent_tool(self, name=name, description=description)


def _default_executor(agent: str, tools: Sequence[str], budget: Any = None) -> ToolExecutor:
    """The policy gateway granting `agent` exactly its own tools: listing a tool is the
    developer's grant. Irreversible tools still need a human approval through the default
    Cedar policy unless every key value is grounded (the policy's provenance rules). Priced
    tools are charged to `budget` (the agent's model gateway's), so tools and models share
    one set of limits."""
    try:
        from bastion.policy import Policy, ToolGateway
        from bastion.tools import ToolRunner
    except ImportError:
        raise UserError(
            f"agent {agent!r} has no tool_executor and bastion.policy.ToolGateway is not available; "
            "pass tool_executor=... (in tests: bastion.testing.DirectToolExecutor())"
        ) from None
    runner = ToolRunner(budget=budget) if budget is not None else None
    return cast(ToolExecutor, ToolGateway(Policy({agent: list(tools)}), runner=runner))
