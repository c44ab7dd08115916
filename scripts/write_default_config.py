#!/usr/bin/env python3
"""Write configs/default.yaml from the config dataclasses (run after changing a default), or with
--check only say whether the shipped file is what they render."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared_utils.config import DEFAULT_CONFIG_PATH, render_default_yaml  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write configs/default.yaml from the dataclasses of shared_utils/config.py "
        "(every key, its default and its help)."
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the file differs from what the dataclasses render",
    )
    args = parser.parse_args(argv)
    rendered = render_default_yaml()
    if args.check:
        path = DEFAULT_CONFIG_PATH
        if not path.is_file() or path.read_text(encoding="utf-8") != rendered:
            print(
                f"{path} is not what shared_utils/config.py renders — run "
                "`python scripts/write_default_config.py` and commit the file",
                file=sys.stderr,
            )
            return 1
        print(f"{path} is up to date")
        return 0
    DEFAULT_CONFIG_PATH.write_text(rendered, encoding="utf-8")
    print(f"wrote {DEFAULT_CONFIG_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
