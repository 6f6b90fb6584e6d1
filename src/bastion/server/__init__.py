"""The runtime server: HTTP API (FastAPI), the gateway's OpenAI-compatible proxy and the web UI.

Names load on first use, so the CLI can read a project (`load_project`) without importing
FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bastion._lazy import lazy_getattr

if TYPE_CHECKING:
    from bastion.server._app import Admin, Extension, Operator, Viewer, create_app, require
    from bastion.server._auth import ApiKeyStore, Principal, Role, SQLiteApiKeyStore, key_id_of, open_api_key_store
    from bastion.server._limits import EdgeLimits
    from bastion.server._project import Project, ProjectEnv, load_project
    from bastion.server._serve import build_server

_LAZY: dict[str, str] = {
    "Admin": "bastion.server._app",
    "Extension": "bastion.server._app",
    "Operator": "bastion.server._app",
    "Viewer": "bastion.server._app",
    "create_app": "bastion.server._app",
    "require": "bastion.server._app",
    "ApiKeyStore": "bastion.server._auth",
    "Principal": "bastion.server._auth",
    "Role": "bastion.server._auth",
    "SQLiteApiKeyStore": "bastion.server._auth",
    "key_id_of": "bastion.server._auth",
    "open_api_key_store": "bastion.server._auth",
    "EdgeLimits": "bastion.server._limits",
    "Project": "bastion.server._project",
    "ProjectEnv": "bastion.server._project",
    "load_project": "bastion.server._project",
    "build_server": "bastion.server._serve",
}

__all__ = [
    "Admin",
    "ApiKeyStore",
    "EdgeLimits",
    "Extension",
    "Operator",
    "Principal",
    "Project",
    "ProjectEnv",
    "Role",
    "SQLiteApiKeyStore",
    "Viewer",
    "build_server",
    "create_app",
    "key_id_of",
    "load_project",
    "open_api_key_store",
    "require",
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
