"""The runtime server: HTTP API (FastAPI), the gateway's OpenAI-compatible proxy and the web UI."""

from bastion.server._app import Admin, Extension, Operator, Viewer, create_app, require
from bastion.server._auth import ApiKeyStore, Principal, Role, SQLiteApiKeyStore
from bastion.server._limits import EdgeLimits
from bastion.server._project import Project, ProjectEnv, load_project

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
    "create_app",
    "load_project",
    "require",
]
