"""Context benchmark (issue 16): token-count error per content type against real tokenizers,
request size over a 500-turn thread with and without the assembler, and needle recall after
compaction.

    .venv/bin/python bench/context.py              # ~1-2 min on 2 cores (Gemma summariser included)
    .venv/bin/python bench/context.py --quick      # fewer samples and turns
    .venv/bin/python bench/context.py --no-local   # skip the runs that need the local model

Writes bench/results/context.json and prints three tables.

1. Token counts. Real tokenizers available offline: Gemma 3 (the bundled GGUF's, through
   llama.cpp, vocab only) and BERT WordPiece (the MiniLM embedder's `tokenizer.json`);
   `tiktoken` o200k too if it is installed (it is not a dependency). Estimators: the old
   prose rule (`EstimateCounter(3.8)`, what `"local:..."` models got before) and the new
   `CalibratedCounter`. Ratio = estimate / true count: below 1.0 overruns the window.
2. A 500-turn thread through a real `Agent` (a scripted model at the edge answers; every 10th
   turn calls a tool returning 40 JSON rows): the size of each model request, counted by the
   Gemma tokenizer, with the default assembler (window 8,192) and with `context=None`.
3. Needle recall: 8 facts, each given only in an early tool result, then filler until at
   least 3 compactions; recall = facts still present in the final context. Summarisers: a
   reference extractive one (keeps every line naming a fact: measures what reaches the
   summariser), the same fed only the stubs the old code passed, and the bundled Gemma 3
   270M (a base model: its recall is a floor, not what a real model achieves).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import re
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import RESULTS, ROOT, fmt, machine_note, table

from bastion.memory import ContextAssembler, ContextPolicy, Summary
from bastion.memory._tokens import (
    CalibratedCounter,
    EstimateCounter,
    TokenCounter,
    messages_tokens,
)
from bastion.types import Message, ModelRequest, RunContext, ToolCall, ToolResult

# --- real tokenizers ---------------------------------------------------------------------------


class GemmaTokenizer:
    """The bundled Gemma GGUF's tokenizer (vocab only: no weights loaded)."""

    name = "gemma-3 (llama.cpp)"

    def __init__(self) -> None:
        import llama_cpp

        from bastion.gateway.formats.llamacpp import bundled_model_path

        self._llm = llama_cpp.Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)
        self._cache: dict[str, int] = {}

    def count(self, text: str) -> int:
        if not text:
            return 0
        n = self._cache.get(text)
        if n is None:
            n = self._cache[text] = len(self._llm.tokenize(text.encode(), add_bos=False, special=True))
        return n


class WordPiece:
    name = "bert wordpiece (MiniLM)"

    def __init__(self) -> None:
        from bastion.memory._embedders import _find_minilm_files  # pyright: ignore[reportPrivateUsage]
        from bastion.memory._tokens import TokenizerCounter

        self._counter = TokenizerCounter(_find_minilm_files()[1])

    def count(self, text: str) -> int:
        return self._counter.count(text)


class Tiktoken:
    name = "openai o200k (tiktoken)"

    def __init__(self) -> None:
        import tiktoken  # pyright: ignore[reportMissingImports]

        self._enc = tiktoken.get_encoding("o200k_base")

    def count(self, text: str) -> int:
        return len(self._enc.encode(text, disallowed_special=()))


def tokenizers(local: bool) -> list[Any]:
    out: list[Any] = []
    for make in ([GemmaTokenizer] if local else []) + [WordPiece, Tiktoken]:
        try:
            out.append(make())
        except Exception as e:  # not installed: reported as missing, never faked
            print(f"  ({make.__name__} unavailable: {type(e).__name__})", file=sys.stderr)
    return out


# --- content types -----------------------------------------------------------------------------


def samples(rng: random.Random, n: int) -> dict[str, list[str]]:
    docs = sorted((ROOT / "docs").glob("*.md"))
    code = sorted((ROOT / "src" / "bastion").rglob("_*.py"))
    words = ["shipped", "pending", "refund", "Ada Lovelace", "Grace Hopper", "express courier", "warehouse B"]
    multilingual = (
        "Die Rücksendung ist innerhalb von 30 Tagen möglich. 返品は30日以内に可能です。"
        "Le remboursement est effectué sous cinq jours ouvrés. Возврат возможен в течение 30 дней. "
    )
    return {
        "prose (docs)": [d.read_text()[:12000] for d in rng.sample(docs, min(n, len(docs)))],
        "source code": [c.read_text()[:12000] for c in rng.sample(code, n)],
        "JSON, numbers": [
            json.dumps(
                [
                    {
                        "order_id": rng.randint(10**4, 10**7),
                        "amount": round(rng.uniform(1, 999), 2),
                        "qty": rng.randint(1, 9),
                        "lat": rng.uniform(-90, 90),
                        "ts": rng.randint(1.6e9, 1.8e9),
                    }
                    for _ in range(rng.randint(20, 80))
                ]
            )
            for _ in range(n)
        ],
        "JSON, text": [
            json.dumps(
                [
                    {"name": rng.choice(words), "note": " ".join(rng.choices(words, k=6)), "status": rng.choice(words)}
                    for _ in range(rng.randint(20, 60))
                ],
                indent=2,
            )
            for _ in range(n)
        ],
        "hex ids": [
            " ".join(f"{rng.getrandbits(160):040x}"[: rng.choice([12, 24, 40])] for _ in range(150)) for _ in range(n)
        ],
        "UUIDs in JSON": [
            json.dumps([{"id": str(uuid.UUID(int=rng.getrandbits(128)))} for _ in range(80)]) for _ in range(n)
        ],
        "base64": [base64.b64encode(rng.randbytes(rng.randint(500, 3000))).decode() for _ in range(n)],
        "multilingual": [multilingual * rng.randint(5, 20) for _ in range(n)],
    }


def token_errors(tokenizers_: Sequence[Any], quick: bool) -> dict[str, Any]:
    rng = random.Random(16)
    data = samples(rng, 3 if quick else 8)
    estimators: dict[str, TokenCounter] = {
        "old: prose rule (3.8 chars/token +10%)": EstimateCounter(3.8),
        "new: CalibratedCounter": CalibratedCounter(),
    }
    out: dict[str, Any] = {}
    for tok in tokenizers_:
        rows: dict[str, Any] = {}
        for kind, texts in data.items():
            true = [tok.count(t) for t in texts]
            row: dict[str, Any] = {"chars_per_token": round(sum(map(len, texts)) / sum(true), 2)}
            for label, est in estimators.items():
                ratios = [est.count(t) / n for t, n in zip(texts, true, strict=True)]
                row[label] = {
                    "mean": round(statistics.fmean(ratios), 3),
                    "min": round(min(ratios), 3),
                    "max": round(max(ratios), 3),
                }
            rows[kind] = row
        out[tok.name] = rows
    return out


# --- a 500-turn thread -------------------------------------------------------------------------


def thread_model() -> Any:
    from bastion.testing import FunctionModel

    rows = [
        {"order_id": 100000 + i, "amount": 12.5 * i, "sku": f"{i * 7919:012x}", "status": "shipped"} for i in range(40)
    ]

    def reply(request: ModelRequest) -> str | ToolCall:
        if request.messages[0].text.startswith("You maintain the running summary"):
            return "The user asked about orders and shipping; order data was listed. " * 3
        last = request.messages[-1]
        if last.role == "user" and "list" in last.text:
            return ToolCall("list_orders", {"page": 1})
        return "Here is what I found about that: " + "the order ships from warehouse B within two days. " * 5

    from bastion.tools import tool

    @tool(side_effect="read")
    def list_orders(page: int) -> list[dict[str, Any]]:
        """List orders."""
        return rows

    return FunctionModel(reply, keep_requests=None), list_orders


async def thread_sizes(turns: int, gemma: TokenCounter, *, assembler: bool) -> dict[str, Any]:
    from bastion.graph.agent import Agent
    from bastion.testing import DirectToolExecutor

    model, list_orders = thread_model()
    policy = ContextPolicy(window=8192, counter=gemma) if assembler else None
    agent = Agent(
        model,
        tools=[list_orders],
        instructions="You help with orders.",
        context=policy,
        tool_executor=DirectToolExecutor(),
    )
    started = time.perf_counter()
    for i in range(turns):
        text = f"please list my orders ({i})" if i % 10 == 0 else f"tell me about delivery {i}"
        await agent.run(text, thread_id="t")
    elapsed = time.perf_counter() - started
    asked = [r for r in model.requests if not r.messages[0].text.startswith("You maintain")]
    summaries = len(model.requests) - len(asked)
    tokens = [messages_tokens(gemma, r.messages) for r in asked[-20:]]
    return {
        "turns": turns,
        "model_requests": len(asked),
        "summary_calls": summaries,
        "last_request_messages": len(asked[-1].messages),
        "last_request_chars": sum(len(m.text) for m in asked[-1].messages),
        "last_request_tokens_gemma": tokens[-1],
        "max_tokens_last_20_requests": max(tokens),
        "ms_per_turn": round(elapsed / turns * 1000, 2),
    }


# --- needle recall -----------------------------------------------------------------------------

FACTS = 8


def needle_history(rng: random.Random, filler_turns: int) -> tuple[list[Message], list[str]]:
    history: list[Message] = []
    needles: list[str] = []
    for i in range(FACTS):
        code = f"{rng.choice('BCDFGHJKLMNPQRSTVWXZ')}{rng.randint(1000, 9999)}"
        needles.append(code)
        call = ToolCall("get_badge", {"employee": 100 + i})
        record = {
            "employee": 100 + i,
            "badge_code": code,
            "floor": rng.randint(1, 9),
            "history": [{"ts": 1_700_000_000 + 97 * k, "door": rng.randint(1, 40)} for k in range(20)],
        }
        history += [
            Message.user(f"What is the badge code of employee {100 + i}?"),
            Message.assistant(tool_calls=[call]),
            Message.tool(ToolResult(call.id, "get_badge", record)),
            Message.assistant("I have retrieved the badge record."),  # the code is in the tool result only
        ]
    for i in range(filler_turns):
        history += [
            Message.user(f"Unrelated question {i}: how long does shipping take to region {i % 7}?"),
            Message.assistant("Shipping to that region usually takes three to five working days. " * 4),
        ]
    return history, needles


class StubsOnly(ContextAssembler):
    """The old behaviour: the summariser was handed the stubbed messages."""

    async def _summarise(self, previous: Summary, evicted: list[Message], context: Any, summarizer: Any) -> Summary:
        stubbed, _ = self._clear_tool_results(evicted, 0)
        return await super()._summarise(previous, stubbed, context, summarizer)


def extractive() -> Any:
    from bastion.testing import FunctionModel

    def summarise(request: ModelRequest) -> str:
        prompt = request.messages[-1].text
        previous = prompt.split("Previous summary:\n", 1)[1].split("\n\nNew turns to fold in:\n", 1)[0]
        kept = [] if previous == "(none)" else previous.splitlines()
        new = prompt.split("New turns to fold in:\n", 1)[1]
        kept += re.findall(r'"employee": \d+, "badge_code": "\w+"', new)
        return "\n".join(kept) or "nothing notable"

    return FunctionModel(summarise)


async def needle_recall(
    name: str, make: Callable[..., ContextAssembler], summarizer: Any, counter: TokenCounter, window: int
) -> dict[str, Any]:
    rng = random.Random(7)
    history, needles = needle_history(rng, filler_turns=60)
    asm = make(
        window=window,
        reserve_output=256,
        summarizer=summarizer,
        counter=counter,
        keep_recent=4,
        chunk_tokens=1024,
        summary_max_tokens=256,
    )
    summary: Summary | None = None
    compactions = 0
    calls = 0
    started = time.perf_counter()
    # The thread grows turn by turn, as in a conversation; the summary is carried over.
    step = 2
    for end in range(FACTS * 4 + step, len(history) + 1, step):
        view = [*history[:end], Message.user("What were the badge codes?")]
        out = await asm.assemble(
            view, system="You answer questions about employees.", summary=summary, context=RunContext()
        )
        compactions += out.compacted
        summary = out.summary
        calls = summary.calls
    assert summary is not None
    context = "\n".join(m.text for m in out.messages)
    found = [n for n in needles if n in context]
    return {
        "summariser": name,
        "compactions": compactions,
        "summary_calls": calls,
        "recall": round(len(found) / len(needles), 3),
        "seconds": round(time.perf_counter() - started, 1),
        "summary_trust": summary.trust,
        "max_summary_prompt_tokens": max_prompt.get(name, 0),
    }


max_prompt: dict[str, int] = {}


class Measured:
    """Wraps a summariser to record the largest prompt it was sent (Gemma tokens)."""

    def __init__(self, name: str, model: Any, counter: TokenCounter) -> None:
        self._name, self._model, self._counter = name, model, counter

    @property
    def name(self) -> str:
        return self._model.name

    async def request(self, request: ModelRequest) -> Any:
        size = messages_tokens(self._counter, request.messages)
        max_prompt[self._name] = max(max_prompt.get(self._name, 0), size)
        return await self._model.request(request)


# --- main --------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-local", action="store_true", help="skip everything that needs the local model")
    parser.add_argument("--out", type=Path, default=RESULTS / "context.json")
    args = parser.parse_args()
    local = not args.no_local
    report: dict[str, Any] = {"machine": machine_note(), "quick": args.quick}

    toks = tokenizers(local)
    report["token_error"] = token_errors(toks, args.quick)
    print("\n## Token-count error: estimate / true count (below 1.0 overruns the window)\n")
    rows: list[list[str]] = []
    for tok_name, per_kind in report["token_error"].items():
        for kind, row in per_kind.items():
            old, new = row["old: prose rule (3.8 chars/token +10%)"], row["new: CalibratedCounter"]
            rows.append(
                [
                    tok_name,
                    kind,
                    fmt(row["chars_per_token"]),
                    f"{old['mean']:.2f}",
                    f"{new['mean']:.2f} ({new['min']:.2f}-{new['max']:.2f})",
                ]
            )
    print(table(["tokenizer", "content", "chars/token", "old estimate", "calibrated (min-max)"], rows))

    gemma: TokenCounter = next((t for t in toks if isinstance(t, GemmaTokenizer)), CalibratedCounter())
    counted_by = "gemma tokenizer" if isinstance(gemma, GemmaTokenizer) else "calibrated estimate"
    turns = 100 if args.quick else 500
    report["thread"] = {
        "counted_by": counted_by,
        "with_assembler": await thread_sizes(turns, gemma, assembler=True),
        "without_assembler": await thread_sizes(turns, gemma, assembler=False),
    }
    print(f"\n## A {turns}-turn thread: the last model request ({counted_by})\n")
    rows = []
    for label in ("with_assembler", "without_assembler"):
        r = report["thread"][label]
        rows.append(
            [
                label.replace("_", " "),
                str(r["last_request_messages"]),
                f"{r['last_request_chars']:,}",
                f"{r['last_request_tokens_gemma']:,}",
                str(r["summary_calls"]),
                fmt(r["ms_per_turn"]),
            ]
        )
    print(table(["", "messages", "characters", "tokens", "summary calls", "ms/turn"], rows))

    needle_counter: TokenCounter = gemma
    runs: list[tuple[str, Callable[..., ContextAssembler], Any]] = [
        ("reference extractive, full content (new)", ContextAssembler, extractive()),
        ("reference extractive, stubs only (old)", StubsOnly, extractive()),
    ]
    if local and not args.quick:
        try:
            from bastion.gateway import Gateway

            runs.append(("gemma-3-270m (local), full content", ContextAssembler, Gateway().model("local:gemma-3-270m")))
        except Exception as e:
            print(f"  (local model unavailable: {type(e).__name__})", file=sys.stderr)
    report["needle"] = []
    for name, make, model in runs:
        measured = Measured(name, model, needle_counter)
        report["needle"].append(await needle_recall(name, make, measured, needle_counter, window=3072))
    print(f"\n## Needle recall: {FACTS} facts given only in early tool results, after compaction\n")
    print(
        table(
            ["summariser", "compactions", "summary calls", "largest summary prompt", "recall", "s"],
            [
                [
                    r["summariser"],
                    str(r["compactions"]),
                    str(r["summary_calls"]),
                    str(r["max_summary_prompt_tokens"]),
                    f"{r['recall']:.2f}",
                    fmt(r["seconds"], 1),
                ]
                for r in report["needle"]
            ],
        )
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
