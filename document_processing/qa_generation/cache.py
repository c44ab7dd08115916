"""Every finished teacher reply, kept as it arrives: an interrupted run loses nothing.

The cache is one append-only JSON Lines file, `{"key": ..., "reply": ...}` a line, written and
flushed to disk line by line under a lock (requests finish on several threads). A run that is
killed mid-line (kill -9, power loss) leaves a torn last line, which the next run ignores. The
key is a hash of everything that shapes a reply: the chunk and passage, the teacher (URL or file
and model), the prompt version and the sampling settings; a rerun asks only for keys not found.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

CACHE_FILE = "replies.jsonl"


def cache_key(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts."""
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ReplyCache:
    """Replies by key, read from `folder/replies.jsonl` and appended to it as they finish."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / CACHE_FILE
        self.replies: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path.exists():
            self._read()
        self._lock = threading.Lock()
        self._handle = self.path.open("a", encoding="utf-8")

    def _read(self) -> None:
        with self.path.open("rb") as handle:
            data = handle.read()
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw.decode("utf-8"))
                self.replies[line["key"]] = line["reply"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                self.torn_lines += 1
        if data and not data.endswith(b"\n"):
            # A torn last line: start the next one on a line of its own.
            with self.path.open("ab") as handle:
                handle.write(b"\n")

    def get(self, key: str) -> dict[str, Any] | None:
        return self.replies.get(key)

    def put(self, key: str, reply: dict[str, Any]) -> None:
        line = json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n"
        with self._lock:
            self.replies[key] = reply
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            self._handle.close()
