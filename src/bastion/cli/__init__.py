"""The `bastion` command."""

from bastion.cli._main import main

__all__ = ["main"]
