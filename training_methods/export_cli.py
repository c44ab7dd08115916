"""Placeholder: the export and chat commands register here once they work."""

from __future__ import annotations

import argparse


def register_commands(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    """Registers nothing yet."""
