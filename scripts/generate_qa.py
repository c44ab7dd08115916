#!/usr/bin/env python3
"""Same as `python main.py generate-qa ...`: the same code and flags, runnable directly."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["generate-qa", *sys.argv[1:]]))
