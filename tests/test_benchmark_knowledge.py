"""scripts/benchmark_knowledge.py: the lexical retriever it reads the fine-tuned figure against."""

from __future__ import annotations

import json
from pathlib import Path

from tests.script_helpers import load_script


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _record(prompt: str, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    }


def test_lexical_ceiling_ranks_prompts_by_the_questions_words(tmp_path: Path) -> None:
    benchmark = load_script("benchmark_knowledge")
    train = _write_jsonl(
        tmp_path / "train.jsonl",
        [
            _record(
                "What does the text say about the ferry Wenna Lorne?", "She was built in 1978."
            ),
            _record("What does the text say about Brannow Fell?", "The hill is 212 metres high."),
            _record("What does the text say about the harbour?", "The harbour opened in 1822."),
        ],
    )
    questions = _write_jsonl(
        tmp_path / "questions.jsonl",
        [
            {"question": "When was the Wenna Lorne built?", "answers": ["1978"]},
            {"question": "How tall is Brannow Fell?", "answers": ["212 metres"]},
            # The harbour record ranks first; its answer does not hold the reference.
            {"question": "How deep is the harbour?", "answers": ["9 metres"]},
            # No prompt shares a word: the first record is taken, and it misses.
            {"question": "Who keeps the lighthouse?", "answers": ["Aldous Treweek"]},
        ],
    )
    assert benchmark.lexical_ceiling(train, questions) == (4, 2)
