#!/usr/bin/env python3
"""Regenerate configs/default.yaml from the config dataclasses (run after changing a default)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared_utils.config import DEFAULT_CONFIG_PATH, render_default_yaml  # noqa: E402

if __name__ == "__main__":
    DEFAULT_CONFIG_PATH.write_text(render_default_yaml(), encoding="utf-8")
    print(f"wrote {DEFAULT_CONFIG_PATH}")
