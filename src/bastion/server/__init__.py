"""The runtime server: HTTP API (FastAPI), the gateway's OpenAI-compatible proxy and the web UI."""

from bastion.server._app import Admin, Extension, Operator, Viewer, create_app, require
from bastion.server._auth import ApiKeyStore, Principal, Role, SQLiteApiKeyStore

__all__ = [
    "Admin",
    "ApiKeyStore",
    "Extension",
    "Operator",
    "Principal",
    "Role",
    "SQLiteApiKeyStore",
    "Viewer",
    "create_app",
    "require",
]
