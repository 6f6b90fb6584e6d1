"""Prompt-injection signals in untrusted content.

Heuristics catch the common shapes (instructions aimed at the model, "ignore previous
instructions", hidden Unicode tag / zero-width characters, `<IMPORTANT>`-style tool-poisoning
markers, role-play and fake-role markers). A model-based classifier can be plugged in through
the `InjectionDetector` protocol. A detector hit can only ESCALATE a decision (to approval or
deny), never grant anything: a detector is a signal, not an authority.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bastion.errors import ConfigError, MissingExtraError


@dataclass(frozen=True, slots=True)
class InjectionFinding:
    detector: str
    rule: str
    excerpt: str
    score: float = 1.0


class InjectionDetector(Protocol):
    """Looks at one piece of untrusted text and reports what it finds (empty list: clean)."""

    name: str

    def detect(self, text: str) -> list[InjectionFinding]: ...


_TAG_CHARS = re.compile("[\U000e0000-\U000e007f]+")
_ZERO_WIDTH = re.compile("[\u200b-\u200f\u2060-\u2064\ufeff]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")

_RULES: list[tuple[str, re.Pattern[str]]] = [
    (
        "ignore_previous",
        re.compile(
            r"\b(ignore|disregard|forget|override|bypass)\b[^.\n]{0,40}\b(previous|prior|above|earlier|all|"
            r"your|system)\b[^.\n]{0,20}\b(instructions?|prompts?|rules?|directions?|guidelines?)",
            re.I,
        ),
    ),
    (
        "new_instructions",
        re.compile(r"\b(new|updated|real|actual|important)\s+(instructions?|task|orders?)\s*[:\-]", re.I),
    ),
    (
        # spoken TO the model ("Assistant: you must…", "AI, please…"); a description that
        # speaks ABOUT the assistant ("the assistant should not assume…") is not an injection
        "addressed_to_model",
        re.compile(
            r"\b(AI|assistant|agent|LLM|(?:language )?model|chatbot|GPT[\w.\-]*|Claude|Gemini|Llama)\s*[,:]\s*"
            r"(you\s+)?(must|should|need to|have to|will now|are now|please|ignore|before|first|do not|now)\b",
            re.I,
        ),
    ),
    (
        "addressed_to_model",
        re.compile(
            r"\b(to|for) you,?\s+(the\s+)?(AI|assistant|agent|LLM|(?:language )?model|chatbot|GPT[\w.\-]*|"
            r"Claude|Gemini|Llama)\b|\b(dear|hey|hello|attention)\s+(AI|assistant|agent|LLM|model|chatbot)\b",
            re.I,
        ),
    ),
    (
        "task_hijack",
        re.compile(
            r"\b(before|prior to)\s+(you\s+)?(can\s+)?(solve|complete|finish|continue|answer|do|proceed with|start)"
            r"\b[^.\n]{0,40}\b(task|request|question|instructions?)\b"
            r"|\bafter you do that\b|\b(instead of|rather than)\s+(the|your)\s+(task|request)\b",
            re.I,
        ),
    ),
    (
        "imperative_to_model",
        re.compile(
            r"\b(when you|before you|after you|you must|you should|make sure (?:you|to)|do not (?:tell|"
            r"inform|mention)|don't (?:tell|inform|mention))\b[^.\n]{0,80}\b(send|transfer|forward|email|"
            r"e-mail|call|pay|wire|delete|post|upload|visit|fetch|open|include|append|tell|share)\b",
            re.I,
        ),
    ),
    (
        "tool_poisoning_marker",
        re.compile(
            r"<\s*/?\s*(IMPORTANT|SYSTEM|INSTRUCTIONS?|INFORMATION|ADMIN|OVERRIDE|CRITICAL|TASK|NOTE)\s*>"
            r"|<!--[^>]{0,300}?\b(ignore|assistant|AI|instructions?|you must)\b",
            re.I,
        ),
    ),
    (
        "fake_role",
        re.compile(
            r"(^|\n)\s*(\[?(system|assistant|developer)\]?\s*:|<\|im_start\|>|<\|system\|>|\[INST\]|"
            r"###\s*(system|instruction))",
            re.I,
        ),
    ),
    (
        "role_play",
        re.compile(
            r"\b(you are now|pretend (to be|you are)|act as|from now on,? you|roleplay as|DAN mode|"
            r"developer mode|jailbreak)\b",
            re.I,
        ),
    ),
    (
        "secrecy",
        re.compile(r"\b(do not|don't|never)\s+(tell|inform|notify|alert|mention (this )?to)\s+the\s+user\b", re.I),
    ),
    (
        "exfiltration_markup",
        re.compile(r"!\[[^\]]*\]\(\s*https?://[^)]*[?&][^)]*=", re.I),
    ),
]


def decode_tag_chars(text: str) -> str:
    """Unicode tag characters mirror ASCII (U+E0041 is an invisible 'A'): show what they hide."""
    return "".join(chr(ord(c) - 0xE0000) for c in text if 0xE0000 <= ord(c) <= 0xE007F)


class HeuristicDetector:
    """Fast regular-expression signals (no model). Hidden text is decoded and scanned too."""

    name = "heuristic"

    def detect(self, text: str) -> list[InjectionFinding]:
        findings: list[InjectionFinding] = []
        hidden = "".join(decode_tag_chars(m.group(0)) for m in _TAG_CHARS.finditer(text))
        if hidden:
            findings.append(InjectionFinding(self.name, "hidden_unicode_tags", hidden[:120]))
        if _ZERO_WIDTH.search(text):
            findings.append(InjectionFinding(self.name, "zero_width_chars", "zero-width characters present", 0.6))
        if _BIDI.search(text):
            findings.append(InjectionFinding(self.name, "bidi_override", "bidirectional override present", 0.6))
        visible = _ZERO_WIDTH.sub("", text)
        for scan in (visible, hidden):
            if not scan:
                continue
            for rule, pattern in _RULES:
                m = pattern.search(scan)
                if m is not None:
                    start = max(0, m.start() - 20)
                    findings.append(InjectionFinding(self.name, rule, scan[start : m.end() + 40].strip()))
        return findings


class ClassifierDetector:
    """Wraps any `classify(text) -> probability of injection` function (a local model, a
    remote moderation endpoint you trust) as a detector."""

    def __init__(self, classify: Callable[[str], float], *, threshold: float = 0.5, name: str = "classifier"):
        self._classify = classify
        self.threshold = threshold
        self.name = name

    def detect(self, text: str) -> list[InjectionFinding]:
        score = float(self._classify(text))
        if score >= self.threshold:
            return [InjectionFinding(self.name, "classifier", text[:120], score)]
        return []


def load_onnx_classifier(path: str | Path, *, threshold: float = 0.5, max_length: int = 512) -> ClassifierDetector:
    """A sequence-classification model exported to ONNX in a local directory (`model.onnx` +
    `tokenizer.json`, label 1 = injection), e.g. a prompt-injection DeBERTa you downloaded
    yourself. Nothing is fetched: a missing file is a `ConfigError`."""
    root = Path(path)
    model_file, tok_file = root / "model.onnx", root / "tokenizer.json"
    missing = [str(p) for p in (model_file, tok_file) if not p.is_file()]
    if missing:
        raise ConfigError(
            f"injection classifier at {root} is incomplete: missing {', '.join(missing)}. Export the model "
            "to ONNX with its tokenizer.json into that directory (Bastion never downloads models)."
        )
    try:
        import numpy as np
        import onnxruntime as ort  # pyright: ignore[reportMissingTypeStubs]
        from tokenizers import Tokenizer  # pyright: ignore[reportMissingTypeStubs]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtraError("embed", e.name or "onnxruntime", "the ONNX injection classifier") from e
    tokenizer: Any = Tokenizer.from_file(str(tok_file))
    tokenizer.enable_truncation(max_length=max_length)
    session: Any = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}

    def classify(text: str) -> float:
        enc = tokenizer.encode(text)
        feed: dict[str, Any] = {"input_ids": np.array([enc.ids], dtype=np.int64)}
        if "attention_mask" in inputs:
            feed["attention_mask"] = np.array([enc.attention_mask], dtype=np.int64)
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.array([enc.type_ids], dtype=np.int64)
        logits = np.asarray(session.run(None, feed)[0])[0]
        exp = np.exp(logits - logits.max())
        return float((exp / exp.sum())[-1])

    return ClassifierDetector(classify, threshold=threshold, name=f"onnx:{root.name}")


__all__ = [
    "ClassifierDetector",
    "HeuristicDetector",
    "InjectionDetector",
    "InjectionFinding",
    "decode_tag_chars",
    "load_onnx_classifier",
]
