"""An OpenAI-compatible HTTP proxy in front of the gateway, with virtual API keys.

Any OpenAI SDK can point at it (`base_url=http://host:port/v1`, `api_key=<virtual key>`);
each call runs through `bastion.gateway` as the key's tenant, so budgets, retries, routing,
cost and caching apply. It serves the OpenAI Chat Completions, Responses (with
`previous_response_id` stored per tenant) and Embeddings APIs and the models list; any other
OpenAI path (assistants, files, audio, images ...) gets an OpenAI-style 404 naming what is served.
"""

from bastion.gateway.proxy._app import BudgetHook, ProxyApp, ProxyGateway, create_proxy_app
from bastion.gateway.proxy._budgets import GatewayKeyBudgets, key_scope
from bastion.gateway.proxy._codec import ChatCompletionBody
from bastion.gateway.proxy._keys import (
    KEY_PREFIX,
    KEYS_FILE,
    InMemoryKeyStore,
    KeyStore,
    PostgresKeyStore,
    SQLiteKeyStore,
    VirtualKey,
    hash_key,
    mint_key,
    new_key,
    open_key_store,
    parse_duration,
)
from bastion.gateway.proxy._response_store import (
    InMemoryResponseStore,
    PostgresResponseStore,
    ResponseStore,
    SQLiteResponseStore,
    StoredResponse,
)

__all__ = [
    "KEYS_FILE",
    "KEY_PREFIX",
    "BudgetHook",
    "ChatCompletionBody",
    "GatewayKeyBudgets",
    "InMemoryKeyStore",
    "InMemoryResponseStore",
    "KeyStore",
    "PostgresKeyStore",
    "PostgresResponseStore",
    "ProxyApp",
    "ProxyGateway",
    "ResponseStore",
    "SQLiteKeyStore",
    "SQLiteResponseStore",
    "StoredResponse",
    "VirtualKey",
    "create_proxy_app",
    "hash_key",
    "key_scope",
    "mint_key",
    "new_key",
    "open_key_store",
    "parse_duration",
]
