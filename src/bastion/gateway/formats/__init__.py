"""Wire formats: each translates `ModelRequest`/`ModelResponse` to one provider API.

`openai_chat` (OpenAI and every compatible server), `anthropic` (Messages API), `gemini`
(generateContent) and `llamacpp` (in-process local model). They only translate; retries,
budgets and routing live in the gateway. Imported lazily: `import bastion` loads none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr

if TYPE_CHECKING:
    from bastion.gateway.formats._prompt_cache import anthropic_min_tokens
    from bastion.gateway.formats.anthropic import AnthropicModel
    from bastion.gateway.formats.gemini import GeminiModel
    from bastion.gateway.formats.llamacpp import LlamaCppModel
    from bastion.gateway.formats.openai_chat import OpenAIChatModel

_LAZY = {
    "OpenAIChatModel": "bastion.gateway.formats.openai_chat",
    "AnthropicModel": "bastion.gateway.formats.anthropic",
    "GeminiModel": "bastion.gateway.formats.gemini",
    "LlamaCppModel": "bastion.gateway.formats.llamacpp",
    "anthropic_min_tokens": "bastion.gateway.formats._prompt_cache",
}

__all__ = ["AnthropicModel", "GeminiModel", "LlamaCppModel", "OpenAIChatModel", "anthropic_min_tokens"]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
