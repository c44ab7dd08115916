"""The instruction records of one document, of the kinds `document_processing.record_kinds` names.

Two kinds come from the document's structure, its headings and its chunks, and are built here:

- section: the first chunk of each section under a heading answers "Write the section
  "<heading path>" of "<title>"." Recitation: the text in its own order.
- continuation: a chunk of two or more sentences (and at least 2 * min_chunk_size characters) is
  cut at the sentence boundary nearest its first third; the model is asked to continue the first
  part with the rest.

The others (topic, question and cloze) ask about the key terms and facts of each sentence,
answered by the document's own text: `instruction_records.FactRecordBuilder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from document_processing.converters.instruction_records import FactRecordBuilder, record_pair
from document_processing.converters.sentences import Span, normalise_spans, sentence_spans
from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig

RecordPair = tuple[dict[str, Any], dict[str, Any]]  # (Alpaca record, chat record)


def document_instruction_records(
    doc: ParsedDocument, chunks: Sequence[dict[str, Any]], settings: DocumentProcessingConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Alpaca records, chat records) of `doc`, made from its chunk records `chunks`, of the
    kinds in `settings.record_kinds`."""
    kinds = tuple(settings.record_kinds)
    pairs: list[RecordPair] = []
    if "section" in kinds or "continuation" in kinds:
        pairs += structure_records(doc, chunks, kinds, settings.min_chunk_size)
    if {"topic", "question", "cloze"} & set(kinds):
        builder = FactRecordBuilder(doc, chunks, phrasings=settings.question_phrasings)
        pairs += [pair for pair in builder.records() if pair[0]["kind"] in kinds]
    return [alpaca for alpaca, _ in pairs], [chat for _, chat in pairs]


def structure_records(
    doc: ParsedDocument,
    chunks: Sequence[dict[str, Any]],
    kinds: Sequence[str],
    min_chunk_size: int,
) -> list[RecordPair]:
    """The section and continuation records (those of them in `kinds`), in chunk order."""
    title = doc.metadata.title or doc.source
    pairs = []
    seen_sections: set[int] = set()
    for record in chunks:
        meta = record["metadata"]
        section_index = meta["section_index"]
        path = doc.sections[section_index].heading_path
        where = (doc.source, record["chunk_id"])
        if "section" in kinds and section_index not in seen_sections and path:
            instruction = f'Write the section "{" > ".join(path)}" of "{title}".'
            pairs.append(record_pair(instruction, "", record["text"], *where, "section"))
        seen_sections.add(section_index)

        text = record["text"]
        if "continuation" not in kinds or len(text) < 2 * min_chunk_size:
            continue
        section = doc.sections[section_index]
        protected = _local_spans(
            normalise_spans(section.protected, len(section.text)),
            meta["char_start"],
            meta["char_end"],
        )
        split = _continuation_split(text, protected)
        if split is not None:
            pairs.append(record_pair("Continue the text.", *split, *where, "continuation"))
    return pairs


def _continuation_split(text: str, protected: list[Span]) -> tuple[str, str] | None:
    """(first part, rest) of a chunk, split at the sentence boundary nearest one third of it."""
    units = sentence_spans(text, protected)
    if len(units) < 2:
        return None
    third = len(text) / 3
    # Boundary k lies between units k and k + 1.
    k = min(range(len(units) - 1), key=lambda index: abs(units[index][1] - third))
    return text[: units[k][1]], text[units[k + 1][0] :]


def _local_spans(spans: Sequence[Sequence[int]], start: int, end: int) -> list[Span]:
    """Protected spans of a section clipped to [start, end) and shifted to chunk offsets."""
    local = []
    for span_start, span_end in spans:
        lo, hi = max(span_start, start), min(span_end, end)
        if hi > lo:
            local.append((lo - start, hi - start))
    return local
