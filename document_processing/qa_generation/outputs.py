"""What a run writes: the kept pairs split by document into qa/{train,valid,test}.jsonl (chat
records) and qa/alpaca/, qa/qa_report.json (what every step kept and dropped, the structured-output
form the teacher took) and the resolved config."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from document_processing.qa_generation.asker import AskStats
from document_processing.qa_generation.chunk_records import Chunk
from document_processing.qa_generation.teachers import Teacher
from shared_utils.config import ToolkitConfig, dump_config
from shared_utils.file_utils import AtomicFile, atomic_write_json, atomic_write_text

QA_DIR = "qa"
REPORT = "qa_report.json"
RESOLVED_CONFIG = "resolved_config.yaml"
SPLITS = ("train", "valid", "test")


@dataclass
class QaResult:
    pairs: dict[str, list[dict[str, Any]]]
    report: dict[str, Any]
    qa_dir: Path
    outputs: list[str]

    @property
    def total(self) -> int:
        return sum(len(pairs) for pairs in self.pairs.values())


def split_documents(sources: list[str], valid_ratio: float, test_ratio: float) -> dict[str, str]:
    """Each document's split: whole documents, chosen by a hash of their path (the lowest hashes
    go to test, the next to valid), at least one document per split with a positive ratio while
    one is left for training."""
    ranked = sorted(set(sources), key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    splits = dict.fromkeys(ranked, "train")
    start = 0
    for split, ratio in (("test", test_ratio), ("valid", valid_ratio)):
        if ratio <= 0:
            continue
        count = min(len(ranked) - start - 1, max(1, math.floor(ratio * len(ranked) + 0.5)))
        for source in ranked[start : start + max(count, 0)]:
            splits[source] = split
        start += max(count, 0)
    return splits


def write_outputs(
    qa_dir: Path,
    config: ToolkitConfig,
    *,
    pairs: list[dict[str, Any]],
    chunks: list[Chunk],
    languages: dict[str, str | None],
    teacher: Teacher,
    pairs_asked_for: int,
    stats: AskStats,
    filter_report: dict[str, Any],
    judge_report: dict[str, int] | None,
    started: float,
) -> QaResult:
    """The kept pairs written by split, then the report and the resolved config."""
    settings = config.qa_generation
    split_of = split_documents(
        [c.source for c in chunks], settings.valid_ratio, settings.test_ratio
    )
    by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for pair in pairs:
        by_split[split_of[pair["chunk"].source]].append(pair)
    outputs = _write_splits(qa_dir, by_split, teacher.description)
    minutes = stats.seconds / 60
    report = {
        "teacher": {
            "teacher": teacher.description,
            "structured_output": teacher.form or _cached_form(filter_report),
            "probe": getattr(teacher, "probe", {}),
        },
        "documents": len(split_of),
        "chunks": len(chunks),
        "languages": {source: language for source, language in sorted(languages.items())},
        "requests": {
            "pairs_asked_for": pairs_asked_for,
            "from_cache": stats.cached,
            "asked": stats.asked,
            "failed": stats.failed,
            "failures": dict(stats.failures.most_common(5)),
            "unparseable_retried": stats.retried_unparseable,
            "seconds": round(stats.seconds, 1),
            "replies_per_minute": round(stats.asked / minutes, 2) if minutes else None,
            "parsed_pairs_per_minute": round(stats.parsed_new / minutes, 2) if minutes else None,
        },
        "filters": filter_report,
        "judge": judge_report,
        "pairs": {split: len(items) for split, items in by_split.items()},
        "outputs": outputs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(qa_dir / REPORT, report)
    atomic_write_text(qa_dir / RESOLVED_CONFIG, dump_config(config))
    return QaResult(pairs=by_split, report=report, qa_dir=qa_dir, outputs=outputs)


def _cached_form(filter_report: dict[str, Any]) -> str:
    """The form of the cached replies, for a run that asked nothing."""
    forms = Counter(filter_report["forms_of_cached_replies"])
    if not forms:
        return "none (nothing asked)"
    return f"{forms.most_common(1)[0][0]} (every reply from the cache)"


def _write_splits(
    qa_dir: Path, by_split: dict[str, list[dict[str, Any]]], teacher: str
) -> list[str]:
    """qa/{split}.jsonl (chat) and qa/alpaca/{split}.jsonl for every split that has pairs; a
    split file of an earlier run that this run has no pairs for is removed."""
    outputs = []
    for split, pairs in by_split.items():
        names = (Path(f"{split}.jsonl"), Path("alpaca") / f"{split}.jsonl")
        if not pairs:
            for name in names:
                (qa_dir / name).unlink(missing_ok=True)
            continue
        files = [AtomicFile(qa_dir / name) for name in names]
        try:
            for pair in pairs:
                for target, record in zip(files, _pair_record(pair, teacher), strict=True):
                    target.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        except BaseException:
            for target in files:
                target.discard()
            raise
        for target in files:
            target.commit()
        outputs += [(Path(QA_DIR) / name).as_posix() for name in names]
    return outputs


def _pair_record(pair: dict[str, Any], teacher: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A kept pair as a chat record and an alpaca record, with where it came from."""
    chunk: Chunk = pair["chunk"]
    common = {
        "source": chunk.source,
        "chunk_id": chunk.chunk_id,
        "page": chunk.page,
        "section": chunk.section,
        "kind": "qa",
        "teacher": teacher,
        "grounding": round(pair["grounding"], 3),
    }
    chat = {
        "messages": [
            {"role": "user", "content": pair["question"]},
            {"role": "assistant", "content": pair["answer"]},
        ],
        **common,
    }
    alpaca = {
        "instruction": pair["question"],
        "input": "",
        "output": pair["answer"],
        "prompt": pair["question"],
        "completion": pair["answer"],
        **common,
    }
    return chat, alpaca
