"""The ``ctxproto`` command-line interface."""

from ctxproto.cli.main import main

__all__ = ["main"]
