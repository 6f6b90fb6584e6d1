"""An OpenAI-compatible HTTP proxy in front of the gateway, with virtual API keys.

Any OpenAI SDK can point at it (`base_url=http://host:port/v1`, `api_key=<virtual key>`);
each call runs through `bastion.gateway` as the key's tenant, so budgets, retries, routing,
cost and caching apply. It is the server side of the OpenAI Chat Completions format only:
no embeddings, assistants, files or the Responses API.
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

__all__ = [
    "KEYS_FILE",
    "KEY_PREFIX",
    "BudgetHook",
    "ChatCompletionBody",
    "GatewayKeyBudgets",
    "InMemoryKeyStore",
    "KeyStore",
    "PostgresKeyStore",
    "ProxyApp",
    "ProxyGateway",
    "SQLiteKeyStore",
    "VirtualKey",
    "create_proxy_app",
    "hash_key",
    "key_scope",
    "mint_key",
    "new_key",
    "open_key_store",
    "parse_duration",
]
