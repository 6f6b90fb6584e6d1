"""Core data shared by every layer: messages and their parts, usage, model requests/responses,
stream events and the run context.

Plain dataclasses (fast, no validation): data from outside (HTTP bodies, LLM output, config) is
validated with pydantic at the edge before it becomes one of these. Every type round-trips
through `to_dict()` / `from_dict()` so checkpoints, caches and the proxy share one JSON shape.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

Role = Literal["system", "user", "assistant", "tool"]
SideEffect = Literal["none", "read", "write", "irreversible"]
Trust = Literal["trusted", "untrusted"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]
ParsedT = TypeVar("ParsedT")


_TENANT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-")


def check_tenant(tenant: str) -> str:
    """Return `tenant` if it is a valid tenant name, else raise `UserError`.

    Tenant names become parts of storage keys (budgets, caches, thread keys); a separator such
    as `/` or `:` in one could make two tenants' keys meet, so only a safe alphabet is allowed.
    """
    if not tenant or len(tenant) > 128 or not _TENANT_CHARS.issuperset(tenant):
        from bastion.errors import UserError

        raise UserError(
            f"invalid tenant name {tenant!r}: use 1-128 letters, digits, '_', '.', '@' or '-' (e.g. 'acme')"
        )
    return tenant


def new_id(prefix: str = "") -> str:
    """A short random id, optionally prefixed (`call_ab12...`)."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def new_sortable_id(prefix: str = "") -> str:
    """A random id that sorts by creation time (to the millisecond), as long as `new_id`'s: 11 hex
    digits of Unix milliseconds, then 13 random. For keys of tables that grow with every run (runs,
    threads, checkpoints): new rows land at the end of their index instead of at random pages, so a
    write dirties fewer pages. Made for uniqueness, not secrecy (52 random bits)."""
    return f"{prefix}{time.time_ns() // 1_000_000:011x}{uuid.uuid4().hex[:13]}"


# --- message parts ---------------------------------------------------------------------------


@dataclass(slots=True)
class TextPart:
    text: str
    kind: Literal["text"] = "text"


@dataclass(slots=True)
class ImagePart:
    """A reference to an image (URL or data: URI); bytes are never inlined in state."""

    url: str
    media_type: str | None = None
    kind: Literal["image"] = "image"


@dataclass(slots=True)
class ToolCall:
    """A model's request to call a tool. `arguments` is the parsed JSON object."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: new_id("call_"))
    kind: Literal["tool_call"] = "tool_call"


@dataclass(slots=True)
class ToolResult:
    """The outcome of a tool call, labelled with its trust (results of untrusted tools are
    untrusted: they may carry prompt injections)."""

    tool_call_id: str
    name: str
    content: Any
    is_error: bool = False
    trust: Trust = "untrusted"
    kind: Literal["tool_result"] = "tool_result"

    def content_text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        import json

        return json.dumps(self.content, ensure_ascii=False, default=str)


Part: TypeAlias = TextPart | ImagePart | ToolCall | ToolResult

_PART_TYPES: dict[str, type[Part]] = {
    "text": TextPart,
    "image": ImagePart,
    "tool_call": ToolCall,
    "tool_result": ToolResult,
}


def part_from_dict(data: Mapping[str, Any]) -> Part:
    kind = data.get("kind")
    cls = _PART_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown message part kind {kind!r}; expected one of {sorted(_PART_TYPES)}")
    return cls(**{k: v for k, v in data.items()})


def part_to_dict(part: Part) -> dict[str, Any]:
    return {name: getattr(part, name) for name in part.__dataclass_fields__}


@dataclass(slots=True)
class Message:
    role: Role
    parts: list[Part]
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: new_id("msg_"))

    @classmethod
    def system(cls, text: str) -> Message:
        return cls("system", [TextPart(text)])

    @classmethod
    def user(cls, text: str, *, name: str | None = None) -> Message:
        return cls("user", [TextPart(text)], name=name)

    @classmethod
    def assistant(cls, text: str = "", tool_calls: Sequence[ToolCall] = ()) -> Message:
        parts: list[Part] = [TextPart(text)] if text else []
        parts.extend(tool_calls)
        return cls("assistant", parts)

    @classmethod
    def tool(cls, result: ToolResult) -> Message:
        return cls("tool", [result])

    @property
    def text(self) -> str:
        """All text parts joined (tool results included for tool messages)."""
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, TextPart):
                out.append(p.text)
            elif isinstance(p, ToolResult):
                out.append(p.content_text())
        return "".join(out)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.parts if isinstance(p, ToolCall)]

    @property
    def tool_results(self) -> list[ToolResult]:
        return [p for p in self.parts if isinstance(p, ToolResult)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "role": self.role, "parts": [part_to_dict(p) for p in self.parts]}
        if self.name is not None:
            d["name"] = self.name
        if self.metadata:
            d["metadata"] = self.metadata
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        return cls(
            role=data["role"],
            parts=[part_from_dict(p) for p in data.get("parts", [])],
            name=data.get("name"),
            metadata=dict(data.get("metadata") or {}),
            id=data.get("id") or new_id("msg_"),
        )


# --- usage -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """Token counts normalised across providers. `input_tokens` includes cached input."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.requests + other.requests,
        )

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})


# --- run context -----------------------------------------------------------------------------


@dataclass(slots=True)
class RunContext:
    """Who a call is made for: used for budgets, cost attribution, caching keys, isolation
    and tracing. Passed down from the run to every model and tool call."""

    tenant: str = "default"
    user: str | None = None
    session: str | None = None
    run_id: str | None = None
    agent: str | None = None
    team: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


# --- model requests and responses ------------------------------------------------------------


@dataclass(slots=True)
class ToolSpec:
    """What a model sees of a tool: a name, a description and a JSON schema for its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = False


@dataclass(slots=True)
class OutputSchema:
    """Ask the model for a JSON object matching `schema` (structured output)."""

    name: str
    schema: dict[str, Any]
    strict: bool = True


@dataclass(slots=True)
class ModelSettings:
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    timeout: float | None = None  # seconds for one attempt
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to the wire format
    # Provider prompt caching (Anthropic breakpoints, OpenAI prompt_cache_key, Gemini cached
    # content), applied only where the prefix is long enough to pay; False sends none of it.
    prompt_cache: bool = True


@dataclass(slots=True)
class ModelRequest:
    messages: list[Message]
    tools: list[ToolSpec] = field(default_factory=list)
    tool_choice: Literal["auto", "required", "none"] | str = "auto"
    output: OutputSchema | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    context: RunContext = field(default_factory=RunContext)
    cacheable: bool = False  # opt-in for the semantic cache


@dataclass(slots=True)
class ModelResponse:
    message: Message
    usage: Usage = field(default_factory=Usage)
    model: str = ""  # "provider:model" that actually answered
    finish_reason: FinishReason = "stop"
    cost_usd: float | None = None
    cached: bool = False
    response_id: str | None = None

    @property
    def text(self) -> str:
        return self.message.text

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.message.tool_calls

    def parse(self, output_type: type[ParsedT]) -> ParsedT:
        """The answer's JSON text validated as `output_type` (a pydantic model, dataclass,
        TypedDict...): the other half of `ModelRequest(output=OutputSchema(...))`. A ```json
        fence around the object is accepted. Raises `OutputValidationError` naming what did not
        validate (an `Agent(output_type=...)` instead feeds that back to the model and retries)."""
        from pydantic import TypeAdapter, ValidationError

        from bastion.errors import OutputValidationError

        text = self.text.strip()
        if text.startswith("```") and text.endswith("```"):
            text = text[3:-3].removeprefix("json").strip()
        try:
            return TypeAdapter(output_type).validate_json(text)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
            name = getattr(output_type, "__name__", str(output_type))
            raise OutputValidationError(
                f"the answer of {self.model or 'the model'} is not a valid {name}: {problems}. Ask with "
                f"output=OutputSchema({name!r}, bastion.tools.output_schema_for({name})) so the provider enforces "
                "the schema, or use Agent(output_type=...), which feeds the problems back to the model and retries",
                model=self.model or None,
            ) from None


# --- stream events ---------------------------------------------------------------------------


@dataclass(slots=True)
class TextDelta:
    text: str
    kind: Literal["text_delta"] = "text_delta"


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a streamed tool call; `index` groups fragments of one call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments_delta: str = ""
    kind: Literal["tool_call_delta"] = "tool_call_delta"


@dataclass(slots=True)
class ResponseDone:
    """Always the last event of a stream: the assembled response."""

    response: ModelResponse
    kind: Literal["done"] = "done"


StreamEvent: TypeAlias = TextDelta | ToolCallDelta | ResponseDone


__all__ = [
    "FinishReason",
    "ImagePart",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "ModelSettings",
    "OutputSchema",
    "Part",
    "ResponseDone",
    "Role",
    "RunContext",
    "SideEffect",
    "StreamEvent",
    "TextDelta",
    "TextPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolResult",
    "ToolSpec",
    "Trust",
    "Usage",
    "new_id",
    "part_from_dict",
    "part_to_dict",
]
