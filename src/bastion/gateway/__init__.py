"""Layer 1, compute: provider-neutral model calls through one gateway.

The gateway is where budgets, retries, circuit breakers, fallbacks, routing, cost and caching
live; wire formats (`openai_chat`, `anthropic`, `gemini`, `llamacpp`) only translate.
"""

from bastion.gateway._model import Model, collect, stream_via_request

__all__ = ["Model", "collect", "stream_via_request"]
