#!/usr/bin/env python3
"""Same as `python main.py evaluate-rl ...`: the same code and flags, runnable directly."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["evaluate-rl", *sys.argv[1:]]))
