"""Placeholder: filled in by its command's implementation."""

from __future__ import annotations

import argparse


def register_commands(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    """Registers nothing yet."""
