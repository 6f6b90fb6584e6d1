"""`@tool`: a typed Python function becomes a tool with a JSON schema and safety metadata.

A `Tool` is only a description plus a callable. It is executed only through the tool gateway
(`bastion.tools.ToolExecutor` implementations), which validates arguments, applies policy,
asks for approvals and labels the result with its trust.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_origin, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from bastion.errors import ToolArgumentsError, UserError
from bastion.tools._context import ToolContext, current_tool_context
from bastion.tools._price import ToolPrice, as_price
from bastion.types import SideEffect, ToolSpec, Trust

GROUNDED_KEY = "x-bastion-grounded"


@dataclass(frozen=True, slots=True)
class Grounded:
    """Marks a tool argument (`Annotated[float, Grounded()]`) whose value must come from the
    conversation: an order id, an amount, an IBAN, an email. The schema gets
    `"x-bastion-grounded": true`; the local model's grammar then allows only values that appear
    in the user's messages or in tool results, so a small model cannot invent one."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        schema[GROUNDED_KEY] = True
        return schema


def canonical_json(value: Any) -> str:
    """Key-sorted compact JSON: the form hashed for schema versions and integrity pins."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_version(name: str, description: str, parameters: dict[str, Any]) -> str:
    """A short hash of a tool's canonical definition; it changes whenever the contract does."""
    blob = canonical_json({"name": name, "description": description, "parameters": parameters})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    side_effect: SideEffect = "none"
    idempotent: bool = False
    timeout: float | None = 30.0
    trust: Trust = "untrusted"  # trust of the results this tool returns
    network: list[str] = field(default_factory=list)  # hosts the tool may reach
    secrets: list[str] = field(default_factory=list)  # credential names injected at execution
    is_async: bool = False
    validator: type[BaseModel] | None = None
    version: str = ""
    price: ToolPrice | None = None  # what a call costs; the runner charges budgets with it
    context_param: str | None = None  # the `ToolContext` parameter the runner fills in, if any

    def __post_init__(self) -> None:
        if not self.version:
            self.version = schema_version(self.name, self.description, self.parameters)

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    @property
    def provider_name(self) -> str:
        """The name a provider sees when this tool is offered alone (`files.read` ->
        `files__read`). Policies, audit and traces use `name`; the wire formats map between the
        two, resolving collisions within a request (`bastion.gateway.ToolNames`)."""
        from bastion.gateway import provider_tool_name

        return provider_tool_name(self.name)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Validate and coerce arguments; raise `ToolArgumentsError` listing each problem."""
        if self.validator is None:
            return arguments
        try:
            model = self.validator.model_validate(arguments)
        except ValidationError as e:
            problems = [{"path": ".".join(str(p) for p in err["loc"]), "error": err["msg"]} for err in e.errors()]
            raise ToolArgumentsError(
                f"invalid arguments for tool {self.name!r}: "
                + "; ".join(f"{p['path'] or '<root>'}: {p['error']}" for p in problems),
                tool=self.name,
                details=problems,
            ) from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def invoke(self, arguments: dict[str, Any], **injected: Any) -> Any:
        """Call the function directly. Only the tool gateway should call this."""
        kwargs = {**arguments, **injected}
        if self.context_param is not None and self.context_param not in kwargs:
            kwargs[self.context_param] = _context_for(self.name)
        if self.is_async:
            return await self.fn(**kwargs)
        import asyncio

        return await asyncio.to_thread(self.fn, **kwargs)


def _context_for(tool_name: str) -> ToolContext[Any]:
    context = current_tool_context()
    if context is None:
        raise UserError(
            f"tool {tool_name!r} takes a ToolContext but none is set: run it through an agent or a "
            "ToolExecutor (they set it), or call it inside `with bastion.tools.use_tool_context(ctx):`"
        )
    return context


def _is_context(annotation: Any) -> bool:
    if isinstance(annotation, str):  # left unresolved: match the name as written
        return annotation.split("[", 1)[0].rsplit(".", 1)[-1] in ("ToolContext", "ToolCallContext")
    return annotation is ToolContext or get_origin(annotation) is ToolContext


def _doc_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """Split a docstring into its summary and `name: text` argument descriptions
    (Google style `Args:` section)."""
    doc = inspect.getdoc(fn) or ""
    summary_lines: list[str] = []
    args: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in {"args:", "arguments:", "parameters:"}:
            in_args = True
            continue
        if in_args:
            if stripped.endswith(":") and " " not in stripped:
                in_args = False
                continue
            if ":" in stripped:
                key, _, text = stripped.partition(":")
                key = key.split("(")[0].strip()
                args[key] = text.strip()
            continue
        summary_lines.append(line)
    return "\n".join(summary_lines).strip(), args


def _build_tool(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    side_effect: SideEffect,
    idempotent: bool | None,
    timeout: float | None,
    trust: Trust,
    network: list[str] | None,
    secrets: list[str] | None,
    price: ToolPrice | float | None = None,
) -> Tool:
    try:
        # Resolve string annotations (`from __future__ import annotations`) in the function's
        # own module; pydantic cannot see names such as `Literal` imported there.
        sig = inspect.signature(fn, eval_str=True)
    except NameError:  # a name only defined in a local scope: let pydantic try
        sig = inspect.signature(fn)
    summary, arg_docs = _doc_parts(fn)
    hidden = set(secrets or [])
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for pname, param in sig.parameters.items():
        if pname in hidden or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if _is_context(param.annotation):
            # The run's context is injected by the runner; the model never sees or fills it.
            context_param = pname
            continue
        if param.annotation is inspect.Parameter.empty:
            raise UserError(f"tool {fn.__name__!r}: parameter {pname!r} needs a type annotation")
        from pydantic import Field

        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (param.annotation, Field(default, description=arg_docs.get(pname)))
    validator = create_model(
        f"{fn.__name__}_args",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    parameters = validator.model_json_schema()
    parameters.pop("title", None)
    for prop in parameters.get("properties", {}).values():
        prop.pop("title", None)
    tool_name = name or fn.__name__
    desc = description or summary or tool_name
    return Tool(
        name=tool_name,
        description=desc,
        parameters=parameters,
        fn=fn,
        side_effect=side_effect,
        idempotent=idempotent if idempotent is not None else side_effect in ("none", "read"),
        timeout=timeout,
        trust=trust,
        network=list(network or []),
        secrets=list(secrets or []),
        is_async=inspect.iscoroutinefunction(fn),
        validator=validator,
        price=as_price(price),
        context_param=context_param,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "none",
    idempotent: bool | None = None,
    timeout: float | None = 30.0,
    trust: Trust = "untrusted",
    network: list[str] | None = None,
    secrets: list[str] | None = None,
    price: ToolPrice | float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "none",
    idempotent: bool | None = None,
    timeout: float | None = 30.0,
    trust: Trust = "untrusted",
    network: list[str] | None = None,
    secrets: list[str] | None = None,
    price: ToolPrice | float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function (sync or async) into a `Tool`.

    `side_effect` drives default policy (irreversible tools need approval); `idempotent`
    defaults to True for side-effect-free and read tools (those may be retried); `secrets`
    names keyword parameters the gateway injects from the secret provider at execution, which
    never appear in the schema the model sees. `price` is USD per call or a `ToolPrice` (per
    call and per unit): the cost lands on the tool's span and counts against budgets.
    A parameter annotated `ToolContext` (or `ToolContext[Deps]`) receives the run's context
    (tenant, user, thread, run id, calling agent, `deps`) and is left out of the schema.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return _build_tool(
            f,
            name=name,
            description=description,
            side_effect=side_effect,
            idempotent=idempotent,
            timeout=timeout,
            trust=trust,
            network=network,
            secrets=secrets,
            price=price,
        )

    return wrap(fn) if fn is not None else wrap


def output_schema_for(output_type: Any) -> dict[str, Any]:
    """The JSON schema of a structured output type (pydantic model, dataclass, TypedDict...)."""
    schema = TypeAdapter(output_type).json_schema()
    schema.pop("title", None)
    return schema


__all__ = ["GROUNDED_KEY", "Grounded", "Tool", "canonical_json", "output_schema_for", "schema_version", "tool"]
