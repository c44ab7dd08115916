"""Chunking: the sections of parsed documents cut into chunk records for training.

Chunking works on one `Section` at a time, so a chunk never mixes two documents or two sections.
A section's text is first cut into *units* by `sentences.sentence_spans`: sentences, lines and
paragraphs, and the protected spans (code blocks, tables) the parser marked, each kept whole. A
unit larger than the limit is split at line breaks, then at whitespace, then cut hard. Units are
then packed greedily into chunks of at most `chunk_size` characters, or tokens of a local Hugging
Face tokenizer. The next chunk repeats whole trailing units of the previous one, up to
`overlap_size`.

Every chunk is an exact slice of its section text (`text[start:end]`), starts and ends on a
non-space character, and no chunk is ever larger than the limit: in token mode each chunk is
re-counted as a whole (BPE merges can make a join cost more than its parts) and shrunk if needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from document_processing.converters.sentences import Span, segments, sentence_spans
from document_processing.records import ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import ConfigurationError

# How an oversize unit is split, coarsest first: at whitespace runs that hold a newline, then at
# any whitespace; below the last level it is cut hard. Possessive quantifiers keep the scan linear.
_LINE_BREAK = re.compile(r"[^\S\n]*+\n\s*+")
_WORD_BREAK = re.compile(r"\s++")
_SPLIT_LEVELS: tuple[re.Pattern[str], ...] = (_LINE_BREAK, _WORD_BREAK)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a section: `text == section_text[start:end]`."""

    text: str
    start: int
    end: int


# --------------------------------------------------------------------------------------------------
# Token counting
# --------------------------------------------------------------------------------------------------


class _TokenCounter:
    """Counts tokens of a local Hugging Face tokenizer, many texts per call."""

    def __init__(self, path: str) -> None:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigurationError(
                f"tokenizer '{path}' is not a local folder; set document_processing.tokenizer "
                "(--tokenizer) to a folder written by save_pretrained (tokenizer.json, "
                "tokenizer_config.json). Tokenizers are never downloaded."
            )
        from transformers import AutoTokenizer  # heavy: imported only in token mode

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loading failure is a config problem here
            reason = " ".join(str(exc).split())[:300]  # one line, as the launcher prints it
            raise ConfigurationError(
                f"tokenizer '{path}' could not be loaded ({type(exc).__name__}: {reason}); pass a "
                "folder written by save_pretrained."
            ) from None
        self._tokenizer = tokenizer
        # A fast tokenizer's Rust backend encodes a batch in parallel without building the
        # Python-side BatchEncoding; slow tokenizers go through the ordinary call.
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        if self._backend is not None:
            # A tokenizer.json may carry truncation or padding settings, which would cap or pad
            # the counts; this tokenizer object is ours alone, so switch them off.
            self._backend.no_truncation()
            self._backend.no_padding()

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self._backend is not None:
            encodings = self._backend.encode_batch(texts, add_special_tokens=False)
            return [len(encoding.ids) for encoding in encodings]
        ids = self._tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [len(row) for row in ids]


# --------------------------------------------------------------------------------------------------
# Packing one section
# --------------------------------------------------------------------------------------------------


class _SectionChunker:
    """Chunks one section text; sizes in characters, or tokens when `counter` is given."""

    # Chunks planned (and, in token mode, re-counted in one batch) at a time: a bad estimate
    # costs a re-plan of at most this many chunks.
    plan_window = 64

    def __init__(
        self, text: str, limit: int, overlap: int, min_chars: int, counter: _TokenCounter | None
    ) -> None:
        self.text = text
        self.limit = limit
        self.overlap = overlap
        self.min_chars = min_chars
        self.counter = counter

    # sizes -----------------------------------------------------------------------------------

    def costs(self, units: list[Span]) -> list[int]:
        """What each unit adds to a chunk: its characters, or its tokens counted together with
        the whitespace before it (one batch for the whole list)."""
        if self.counter is None:
            return [end - start for start, end in units]
        text = self.text
        with_gap = [
            text[(units[k - 1][1] if k else start) : end] for k, (start, end) in enumerate(units)
        ]
        return self.counter.count(with_gap)

    def size_function(self, units: list[Span], costs: list[int]) -> Callable[[int, int], int]:
        """size(i, j): the size of a chunk holding units i..j.

        Exact for characters. In tokens, the sum of the units' costs: an estimate (the first
        unit is counted with a gap the chunk does not have, and BPE may merge across a join)
        that `pack` checks by counting the chunk itself.
        """
        if self.counter is None:
            return lambda i, j: units[j][1] - units[i][0]
        prefix = [0]
        for cost in costs:
            prefix.append(prefix[-1] + cost)
        return lambda i, j: prefix[j + 1] - prefix[i]

    def sizes(self, spans: list[Span]) -> list[int]:
        """Exact size of each span on its own, in one batch."""
        if self.counter is None:
            return [end - start for start, end in spans]
        return self.counter.count([self.text[start:end] for start, end in spans])

    def fits(self, start: int, end: int) -> bool:
        return self.sizes([(start, end)])[0] <= self.limit

    # splitting -------------------------------------------------------------------------------

    def split_oversize(
        self, spans: list[Span], costs: list[int], levels: tuple[re.Pattern[str], ...]
    ) -> list[Span]:
        """`spans` with every span over the limit replaced by pieces that fit.

        `costs` are upper-bound-like estimates; only spans whose estimate is over the limit are
        measured exactly, on their own.
        """
        suspects = [k for k, cost in enumerate(costs) if cost > self.limit]
        if not suspects:
            return spans
        alone = dict(zip(suspects, self.sizes([spans[k] for k in suspects]), strict=True))
        result: list[Span] = []
        for k, span in enumerate(spans):
            if alone.get(k, 0) > self.limit:
                result.extend(self.split_span(*span, levels))
            else:
                result.append(span)
        return result

    def split_span(self, start: int, end: int, levels: tuple[re.Pattern[str], ...]) -> list[Span]:
        """Pieces of an oversize span, each within the limit, cut at the coarsest level that
        separates it (lines, then words), packed back together as far as the limit allows."""
        for depth, pattern in enumerate(levels):
            parts = segments(self.text, start, end, pattern)
            if len(parts) > 1:
                parts = self.split_oversize(parts, self.sizes(parts), levels[depth + 1 :])
                return self.pack(parts, self.costs(parts), overlap=0)
        return self.hard_cut(start, end)

    def hard_cut(self, start: int, end: int) -> list[Span]:
        """Cut a span with no whitespace (one huge "word") into pieces within the limit."""
        if self.counter is None:
            return [(pos, min(pos + self.limit, end)) for pos in range(start, end, self.limit)]
        pieces: list[Span] = []
        while start < end:
            cut = self._longest_fitting_prefix(start, end)
            pieces.append((start, cut))
            start = cut
        return pieces

    def _longest_fitting_prefix(self, start: int, end: int) -> int:
        """Largest `cut` with text[start:cut] within the token limit, but at least one character
        so that cutting always progresses. Exponential, then binary search: huge words are rare,
        so a few dozen counts per piece do not matter."""
        good, bad = start + 1, end + 1
        probe = start + self.limit
        while probe < end:
            if not self.fits(start, probe):
                bad = probe
                break
            good = probe
            probe = start + 2 * (probe - start)
        else:
            if self.fits(start, end):
                return end
            bad = end
        while bad - good > 1:
            middle = (good + bad) // 2
            if self.fits(start, middle):
                good = middle
            else:
                bad = middle
        return good

    # packing ---------------------------------------------------------------------------------

    def next_start(
        self, i: int, j: int, size: Callable[[int, int], int], count: int, overlap: int
    ) -> int:
        """First unit of the chunk after units i..j (`count` when none is left): j + 1, moved
        back over trailing units of this chunk worth at most `overlap`, as long as unit j + 1
        still fits after them and the new chunk does not start where this one did (progress)."""
        if j + 1 >= count:
            return count
        k = j + 1
        while k - 1 > i and size(k - 1, j) <= overlap and size(k - 1, j + 1) <= self.limit:
            k -= 1
        return k

    def plan(
        self, size: Callable[[int, int], int], count: int, i: int, overlap: int
    ) -> list[tuple[int, int]]:
        """Up to `plan_window` greedy chunks (unit index ranges) from unit i, by estimate."""
        limit = self.limit
        planned: list[tuple[int, int]] = []
        while i < count and len(planned) < self.plan_window:
            j = i
            while j + 1 < count and size(i, j + 1) <= limit:
                j += 1
            planned.append((i, j))
            i = self.next_start(i, j, size, count, overlap)
        return planned

    def pack(self, units: list[Span], costs: list[int], overlap: int) -> list[Span]:
        """Greedy packing of units, each within the limit on its own, into chunk spans.

        A chunk takes units while they fit; the next one starts with the overlap units. In token
        mode each planned chunk is counted whole (a batch per window); at the first one over the
        limit, units are dropped from its end until it fits, and planning resumes after it.
        """
        size = self.size_function(units, costs)
        count = len(units)
        chunks: list[Span] = []
        last = -1  # index of the last unit already in a chunk
        i = 0
        while i < count:
            planned = self.plan(size, count, i, overlap)
            spans = [(units[a][0], units[b][1]) for a, b in planned]
            if self.counter is not None:
                real = self.sizes(spans)
                failed = next((n for n, value in enumerate(real) if value > self.limit), None)
            else:
                failed = None  # character sizes are exact
            if failed is None:
                chunks.extend(spans)
                last = planned[-1][1]
                i = self.next_start(*planned[-1], size, count, overlap)
                continue
            chunks.extend(spans[:failed])
            last = planned[failed - 1][1] if failed else last
            i, j = planned[failed]
            while j > i and not self.fits(units[i][0], units[j - 1][1]):
                j -= 1
            j -= 1  # units i..j + 1 do not fit
            if j <= last:
                if i <= last:
                    # Only overlap units fit: the chunk would add nothing. Start after them.
                    i = last + 1
                else:
                    # With its leading gap the unit was within the limit, alone it is not.
                    chunks.extend(self.split_span(*units[i], _SPLIT_LEVELS))
                    last = i
                    i += 1
                continue
            chunks.append((units[i][0], units[j][1]))
            last = j
            i = self.next_start(i, j, size, count, overlap)
        return chunks

    def merge_small(self, chunks: list[Span]) -> list[Span]:
        """Chunks under `min_chars` characters joined to the previous chunk when that fits.

        Greedy packing leaves a short chunk only where the next unit did not fit, so with exact
        (character) or additive counts this keeps it; it merges where token counts of the joined
        text come out lower than the shrinking step saw.
        """
        merged: list[Span] = []
        for start, end in chunks:
            if merged and end - start < self.min_chars and self.fits(merged[-1][0], end):
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def run(self, protected: Sequence[Sequence[int]]) -> list[Chunk]:
        units = sentence_spans(self.text, protected)
        costs = self.costs(units)
        split = self.split_oversize(units, costs, _SPLIT_LEVELS)
        if split is not units:
            units, costs = split, self.costs(split)
        spans = self.merge_small(self.pack(units, costs, self.overlap))
        return [Chunk(self.text[start:end], start, end) for start, end in spans]


# --------------------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------------------


class Chunker:
    """Cuts parsed documents into chunk records, one section at a time."""

    def __init__(self, settings: DocumentProcessingConfig | None = None) -> None:
        """`settings` gives `chunk_size`, `overlap_size`, `min_chunk_size` and `tokenizer`
        (`DocumentProcessingConfig`'s defaults when None: the config section is their one
        source)."""
        settings = settings or DocumentProcessingConfig()
        chunk_size, overlap_size = settings.chunk_size, settings.overlap_size
        min_chunk_size, tokenizer = settings.min_chunk_size, settings.tokenizer
        if chunk_size < 1:
            raise ConfigurationError(
                f"document_processing.chunk_size is {chunk_size}; it must be at least 1."
            )
        if not 0 <= overlap_size < chunk_size:
            raise ConfigurationError(
                f"document_processing.overlap_size is {overlap_size}; it must be at least 0 and "
                f"smaller than chunk_size ({chunk_size})."
            )
        if min_chunk_size < 0:
            raise ConfigurationError(
                f"document_processing.min_chunk_size is {min_chunk_size}; it must be at least 0."
            )
        self.chunk_size = chunk_size
        self.overlap_size = overlap_size
        self.min_chunk_size = min_chunk_size
        self.tokenizer = tokenizer
        self._counter = _TokenCounter(tokenizer) if tokenizer else None

    def count(self, text: str) -> int:
        """The size of `text` in this chunker's unit."""
        if self._counter is None:
            return len(text)
        return self._counter.count([text])[0]

    def chunk_text(self, text: str, protected: Sequence[Sequence[int]] = ()) -> list[Chunk]:
        """Chunks of one section text; `protected` spans are kept whole when they fit."""
        chunker = _SectionChunker(
            text, self.chunk_size, self.overlap_size, self.min_chunk_size, self._counter
        )
        return chunker.run(protected)

    def chunk_document(self, doc: ParsedDocument) -> list[dict[str, Any]]:
        """One record per chunk, every record with the same keys and value types."""
        located = [
            (section_index, section, chunk)
            for section_index, section in enumerate(doc.sections)
            for chunk in self.chunk_text(section.text, section.protected)
        ]
        meta = doc.metadata
        records = []
        for index, (section_index, section, chunk) in enumerate(located):
            records.append(
                {
                    "text": chunk.text,
                    "source": doc.source,
                    "title": meta.title,
                    "type": doc.doc_type,
                    "chunk_id": f"{doc.source}#{index}",
                    "metadata": {
                        "chunk_index": index,
                        "total_chunks": len(located),
                        # Never null and never an empty list: `datasets` infers column types
                        # from the first block it reads, and a null or `[]` there makes it
                        # refuse real values later (other splits, later blocks of a big file).
                        "section_path": [str(h) for h in section.heading_path] or [meta.title],
                        # A chunk of a multi-page section gets the section's page range: within
                        # a section the page of each character is not known. 0: no pages.
                        "page_start": min(section.pages, default=0),
                        "page_end": max(section.pages, default=0),
                        "engine": "+".join(dict.fromkeys(str(e) for e in section.engines)),
                        "ocr_confidence": _ocr_confidence(doc, section),
                        "char_start": chunk.start,
                        "char_end": chunk.end,
                        "section_index": section_index,
                        "author": meta.author or "",
                        "created": meta.created or "",
                        "modified": meta.modified or "",
                        "page_count": meta.page_count or 0,
                        "encoding": meta.encoding or "",
                    },
                }
            )
        return records


def _ocr_confidence(doc: ParsedDocument, section: Section) -> float:
    """The lowest OCR confidence (0..1) of the section's pages that OCR read, -1.0 when it read
    none: a chunk's pages are its section's, so a filter at t keeps a chunk only when every page
    it may come from reached t."""
    values = [
        float(doc.page_ocr[page]["confidence"])
        for page in section.pages
        if "confidence" in doc.page_ocr.get(page, {})
    ]
    return min(values, default=-1.0)


__all__ = ["Chunk", "Chunker"]
