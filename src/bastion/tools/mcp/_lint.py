"""Lint MCP tool descriptions for poisoning patterns (instructions aimed at the model)."""

from __future__ import annotations

import re
import unicodedata

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("hidden-instruction-tag", re.compile(r"<\s*/?\s*(important|system|instructions?|secret)\s*>", re.I)),
    (
        "override-instructions",
        re.compile(r"\b(ignore|disregard|forget)\b.{0,40}\b(previous|prior|above|other)\b", re.I),
    ),
    (
        "conceal-from-user",
        re.compile(r"\b(do not|don't|never)\s+(tell|inform|mention|show)\b.{0,20}\buser\b", re.I),
    ),
    ("sensitive-file", re.compile(r"(~/\.ssh|id_rsa|\.env\b|/etc/passwd|\.aws/credentials|mcp\.json)", re.I)),
    (
        "cross-tool-directive",
        re.compile(r"\b(before|after|instead of)\s+(using|calling)\b.{0,60}\btool\b", re.I),
    ),
    (
        "exfiltration",
        re.compile(r"\b(send|forward|upload|post)\b.{0,40}\b(to|at)\b.{0,40}(https?://|@)", re.I),
    ),
]


def lint_description(text: str) -> list[str]:
    """Names of the poisoning patterns found in a tool description (empty: clean)."""
    findings = [name for name, pattern in _PATTERNS if pattern.search(text)]
    if any(unicodedata.category(ch) == "Cf" or 0xE0000 <= ord(ch) <= 0xE007F for ch in text):
        findings.append("invisible-unicode")
    return findings
