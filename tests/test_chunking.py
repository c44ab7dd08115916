"""Chunking: the invariants every chunk keeps (property tests), exact small cases, code blocks,
and token mode with a tiny tokenizer built here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from document_processing.converters.chunking import Chunk, Chunker
from document_processing.converters.sentences import sentence_spans
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import ConfigurationError
from tests.conftest import TOKENIZER_TRAINING_SENTENCES


def chunker(**fields: Any) -> Chunker:
    """A chunker with these `document_processing` settings, the others at their defaults."""
    return Chunker(DocumentProcessingConfig(**fields))


# --------------------------------------------------------------------------------------------------
# Generated section texts
# --------------------------------------------------------------------------------------------------


@dataclass
class GeneratedText:
    text: str
    protected: list[tuple[int, int]] = field(default_factory=list)
    sentences: list[tuple[int, int]] = field(default_factory=list)  # spans of plain sentences


_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzé", min_size=1, max_size=12)
_long_words = st.text(alphabet="abcdefghij0123456789", min_size=30, max_size=900)
_word = st.one_of(_words, _words, _words, _words, _long_words)
_ending = st.sampled_from([".", ".", "!", "?", "…", '."', ".)", "?”"])
_sentence = st.builds(
    lambda words, ending: " ".join(words).capitalize() + ending,
    st.lists(_word, min_size=1, max_size=14),
    _ending,
)
_short_sentence = st.builds(
    lambda words, ending: " ".join(words).capitalize() + ending,
    st.lists(_words, min_size=1, max_size=3),
    _ending,
)
_separator = st.sampled_from([" ", " ", " ", "  ", "\n", "\n\n", " \n\n  ", "\t"])
_code_line = st.builds(
    lambda indent, words: "    " * indent + " ".join(words),
    st.integers(0, 2),
    st.lists(st.one_of(_words, st.sampled_from(["=", "(x)", "x.y", "1."])), min_size=1, max_size=8),
)
_code_block = st.builds(
    lambda lines: "```python\n" + "\n".join(lines) + "\n```", st.lists(_code_line, max_size=30)
)
_table = st.builds(
    lambda rows: "\n".join("| " + " | ".join(row) + " |" for row in rows),
    st.lists(st.lists(_words, min_size=2, max_size=2), min_size=1, max_size=8),
)
_piece = st.one_of(
    *([_sentence] * 4), *([_short_sentence] * 3), _code_block, _table.map(lambda t: ("table", t))
)


@st.composite
def section_texts(draw: st.DrawFn) -> GeneratedText:
    """A section text of sentences, long words, code blocks and tables, with its protected spans
    and the spans of its plain sentences."""
    generated = GeneratedText(draw(st.sampled_from(["", " ", "\n\n"])))
    for piece in draw(st.lists(_piece, max_size=25)):
        start = len(generated.text)
        if isinstance(piece, tuple):  # a table
            generated.text += piece[1]
            generated.protected.append((start, len(generated.text)))
        elif piece.startswith("```"):
            generated.text += piece
            generated.protected.append((start, len(generated.text)))
        else:
            generated.text += piece
            generated.sentences.append((start, len(generated.text)))
        generated.text += draw(_separator)
    return generated


@st.composite
def sizes(draw: st.DrawFn) -> tuple[int, int, int]:
    chunk_size = draw(st.integers(20, 400))
    overlap = draw(st.integers(0, chunk_size // 2))
    min_chunk = draw(st.integers(0, 40))
    return chunk_size, overlap, min_chunk


# --------------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------------


def assert_exact_slices(text: str, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text and chunk.text == chunk.text.strip(), chunk


def assert_progress_and_coverage(text: str, chunks: list[Chunk]) -> None:
    if not text.strip():
        assert chunks == []
        return
    assert chunks
    assert text[: chunks[0].start].strip() == ""
    assert text[chunks[-1].end :].strip() == ""
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        assert chunk.start > previous.start and chunk.end > previous.end  # progress
        assert text[previous.end : chunk.start].strip() == ""  # nothing between them is lost
    # With overlaps removed, the chunks give back the text.
    rebuilt, pos = [], chunks[0].start
    for chunk in chunks:
        if chunk.start > pos:
            rebuilt.append(text[pos : chunk.start])  # the whitespace between two chunks
        rebuilt.append(chunk.text[max(0, pos - chunk.start) :])  # the part not overlapped
        pos = chunk.end
    assert "".join(rebuilt) == text.strip()
    covered = [False] * len(text)
    for chunk in chunks:
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    assert all(covered[k] for k, char in enumerate(text) if not char.isspace())


def assert_overlaps_are_whole_units(
    text: str, protected: list[tuple[int, int]], chunks: list[Chunk], overlap: int
) -> None:
    unit_starts = {start for start, _ in sentence_spans(text, protected)}
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        if chunk.start < previous.end:
            assert previous.end - chunk.start <= overlap  # character mode: exact
            assert chunk.start in unit_starts
            assert text[chunk.start - 1].isspace()  # a whole unit begins after whitespace
            assert chunk.end > previous.end  # and something new follows it


def assert_kept_whole(spans: list[tuple[int, int]], chunks: list[Chunk], limit: int) -> None:
    """Spans that fit the limit are inside one chunk or outside every chunk, never cut."""
    for start, end in spans:
        if end - start > limit:
            continue
        for chunk in chunks:
            inside = chunk.start <= start and end <= chunk.end
            outside = chunk.end <= start or end <= chunk.start
            assert inside or outside, (start, end, chunk)


# --------------------------------------------------------------------------------------------------
# Properties, character mode
# --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated=section_texts(), limits=sizes())
def test_chunk_invariants(generated: GeneratedText, limits: tuple[int, int, int]) -> None:
    chunk_size, overlap, min_chunk = limits
    converter = chunker(chunk_size=chunk_size, overlap_size=overlap, min_chunk_size=min_chunk)
    text = generated.text
    chunks = converter.chunk_text(text, generated.protected)

    assert all(len(chunk.text) <= chunk_size for chunk in chunks)
    assert_exact_slices(text, chunks)
    assert_progress_and_coverage(text, chunks)
    assert_overlaps_are_whole_units(text, generated.protected, chunks, overlap)
    assert_kept_whole(generated.protected, chunks, chunk_size)
    assert_kept_whole(generated.sentences, chunks, chunk_size)
    for previous, chunk in zip(chunks, chunks[1:], strict=False):
        if len(chunk.text) < min_chunk:  # a short chunk stays only when merging would not fit
            assert chunk.end - previous.start > chunk_size


@settings(max_examples=100, deadline=None)
@given(generated=section_texts())
def test_units_cover_the_text_and_keep_protected_spans(generated: GeneratedText) -> None:
    text = generated.text
    units = sentence_spans(text, generated.protected)
    for (_, end), (start, _) in zip(units, units[1:], strict=False):
        assert end <= start
    pieces = [text[start:end] for start, end in units]
    assert all(piece and piece == piece.strip() for piece in pieces)
    # Every non-space character, once, in order.
    assert "".join("".join(piece.split()) for piece in pieces) == "".join(text.split())
    for start, end in generated.protected:
        stripped = text[start:end].strip()
        assert stripped in pieces


# --------------------------------------------------------------------------------------------------
# Exact values
# --------------------------------------------------------------------------------------------------

SMALL = "One two three. Four five six! Seven eight nine? Ten."


def test_small_example_with_overlap() -> None:
    chunks = chunker(chunk_size=40, overlap_size=15, min_chunk_size=0).chunk_text(SMALL)
    assert chunks == [
        Chunk("One two three. Four five six!", 0, 29),
        Chunk("Four five six! Seven eight nine? Ten.", 15, 52),
    ]


def test_small_example_without_overlap() -> None:
    chunks = chunker(chunk_size=30, overlap_size=0, min_chunk_size=0).chunk_text(SMALL)
    assert [chunk.text for chunk in chunks] == [
        "One two three. Four five six!",
        "Seven eight nine? Ten.",
    ]


def test_overlap_is_dropped_when_the_last_sentence_is_larger_than_it() -> None:
    chunks = chunker(chunk_size=30, overlap_size=10, min_chunk_size=0).chunk_text(SMALL)
    assert [chunk.text for chunk in chunks] == [
        "One two three. Four five six!",  # "Four five six!" is 14 > 10 characters
        "Seven eight nine? Ten.",
    ]


def test_short_last_chunk_is_kept_when_merging_would_exceed_the_limit() -> None:
    text = "Alpha beta gamma delta. Epsilon zeta eta theta. Ok."
    chunks = chunker(chunk_size=50, overlap_size=0, min_chunk_size=10).chunk_text(text)
    # "Ok." is under 10 characters, but the 51 characters of both do not fit 50.
    assert [chunk.text for chunk in chunks] == [
        "Alpha beta gamma delta. Epsilon zeta eta theta.",
        "Ok.",
    ]


def test_sentence_boundaries_include_closing_quotes_newlines_and_ellipsis() -> None:
    text = 'He said "stop." Then left…  Next line\nLast (really) done.) End'
    assert [text[s:e] for s, e in sentence_spans(text)] == [
        'He said "stop."',
        "Then left…",
        "Next line",
        "Last (really) done.)",
        "End",
    ]


def test_long_sentence_is_split_at_words_and_long_word_is_cut() -> None:
    text = "aaaa bbbb cccc dddd " + "x" * 25 + " end."
    chunks = chunker(chunk_size=10, overlap_size=0, min_chunk_size=0).chunk_text(text)
    assert [chunk.text for chunk in chunks] == [
        "aaaa bbbb",
        "cccc dddd",
        "x" * 10,
        "x" * 10,
        "xxxxx end.",
    ]


def test_empty_and_whitespace_sections_give_no_chunks() -> None:
    converter = Chunker()
    assert converter.chunk_text("") == []
    assert converter.chunk_text(" \n\n\t ") == []


# --------------------------------------------------------------------------------------------------
# Protected spans
# --------------------------------------------------------------------------------------------------

CODE = "```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2)). Done.\n```"


def _with_code(before: str, after: str) -> tuple[str, list[tuple[int, int]]]:
    text = before + CODE + after
    return text, [(len(before), len(before) + len(CODE))]


def test_code_block_that_fits_is_one_unit() -> None:
    text, protected = _with_code("Intro sentence here. Look:\n\n", "\n\nAfter the code. More.")
    chunks = chunker(chunk_size=len(CODE) + 5, overlap_size=0).chunk_text(text, protected)
    assert CODE in [chunk.text for chunk in chunks]
    assert_kept_whole(protected, chunks, len(CODE) + 5)
    # Without protection the block's ". " is a sentence boundary and the block may be cut.
    split = chunker(chunk_size=len(CODE) + 5, overlap_size=0).chunk_text(text)
    assert CODE not in [chunk.text for chunk in split]


def test_code_block_larger_than_the_limit_is_split_at_lines() -> None:
    text, protected = _with_code("Intro.\n\n", "\n\nAfter.")
    chunks = chunker(chunk_size=30, overlap_size=0, min_chunk_size=0).chunk_text(text, protected)
    block = [c for c in chunks if protected[0][0] <= c.start and c.end <= protected[0][1]]
    assert [c.text for c in block] == [
        "```python\ndef add(a, b):",
        "return a + b",
        "print(add(1, 2)). Done.\n```",
    ]
    lines = {line.strip() for line in CODE.splitlines()}
    for chunk in block:  # every piece starts and ends on a line boundary
        assert chunk.text.splitlines()[0].strip() in lines
        assert chunk.text.splitlines()[-1].strip() in lines


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def test_sizes_come_from_the_config_section() -> None:
    settings_ = DocumentProcessingConfig(chunk_size=123, overlap_size=7, min_chunk_size=3)
    converter = Chunker(settings_)
    assert (converter.chunk_size, converter.overlap_size, converter.min_chunk_size) == (123, 7, 3)
    assert converter.count("two words") == len("two words")  # characters without a tokenizer
    # Without settings, the config section's defaults: they have no second copy.
    defaults, plain = DocumentProcessingConfig(), Chunker()
    assert (plain.chunk_size, plain.overlap_size, plain.min_chunk_size, plain.tokenizer) == (
        defaults.chunk_size,
        defaults.overlap_size,
        defaults.min_chunk_size,
        defaults.tokenizer,
    )


def test_missing_tokenizer_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-tokenizer"
    with pytest.raises(ConfigurationError, match=re.escape(str(missing))):
        chunker(tokenizer=str(missing))
    with pytest.raises(ConfigurationError, match="could not be loaded"):
        chunker(tokenizer=str(tmp_path))  # a folder, but no tokenizer in it


@pytest.mark.parametrize("overlap", [-1, 100, 150])
def test_overlap_must_be_smaller_than_the_chunk(overlap: int) -> None:
    with pytest.raises(ConfigurationError, match="overlap_size"):
        chunker(chunk_size=100, overlap_size=overlap)


# --------------------------------------------------------------------------------------------------
# Token mode
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def count_tokens(tiny_tokenizer: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer), local_files_only=True)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(generated=section_texts(), limits=sizes())
def test_token_mode_never_exceeds_the_token_limit(
    tiny_tokenizer: Path, count_tokens, generated: GeneratedText, limits: tuple[int, int, int]
) -> None:
    chunk_size, overlap, min_chunk = limits
    converter = chunker(
        chunk_size=chunk_size,
        overlap_size=overlap,
        min_chunk_size=min_chunk,
        tokenizer=str(tiny_tokenizer),
    )
    chunks = converter.chunk_text(generated.text, generated.protected)
    assert all(count_tokens(chunk.text) <= chunk_size for chunk in chunks)
    assert_exact_slices(generated.text, chunks)
    assert_progress_and_coverage(generated.text, chunks)


def test_token_mode_counts_tokens_not_characters(tiny_tokenizer: Path, count_tokens) -> None:
    text = " ".join(TOKENIZER_TRAINING_SENTENCES[:8])
    converter = chunker(
        chunk_size=30, overlap_size=0, min_chunk_size=0, tokenizer=str(tiny_tokenizer)
    )
    assert converter.count(text) == count_tokens(text) < len(text)
    chunks = converter.chunk_text(text)
    assert all(count_tokens(chunk.text) <= 30 for chunk in chunks)
    # The trained sentences are a few tokens each, so chunks hold far more than 30 characters.
    assert max(len(chunk.text) for chunk in chunks) > 60


class _LengthPenaltyCounter:
    """Counts that are not additive: a text over 30 characters costs 10 more, and one that does
    not start with whitespace 8 more. Unit estimates then undershoot, as BPE merges across joins
    can make them; the chunker must re-count, shrink, and split a unit that fits only with its
    leading gap."""

    def count(self, texts: list[str]) -> list[int]:
        return [
            len(text) + (10 if len(text) > 30 else 0) + (0 if text[:1].isspace() else 8)
            for text in texts
        ]


class _JoinPenaltyCounter:
    """Every join between two words inside a text costs 6 more: a chunk costs far more than the
    sum of its units, so shrinking after an overlap can leave nothing new to add."""

    def count(self, texts: list[str]) -> list[int]:
        return [len(text) + 6 * len(re.findall(r"\S\s+\S", text)) for text in texts]


@pytest.mark.parametrize("counter", [_LengthPenaltyCounter(), _JoinPenaltyCounter()])
@settings(max_examples=200, deadline=None)
@given(generated=section_texts(), chunk_size=st.integers(20, 200), share=st.floats(0.2, 0.5))
def test_estimates_that_undershoot_are_corrected(
    counter, generated: GeneratedText, chunk_size: int, share: float
) -> None:
    # Large overlaps: shrinking a chunk that starts with overlap units can leave nothing new.
    converter = chunker(
        chunk_size=chunk_size, overlap_size=int(chunk_size * share), min_chunk_size=0
    )
    converter._counter = counter  # a non-additive counter stands in for a tokenizer
    chunks = converter.chunk_text(generated.text, generated.protected)
    assert all(counter.count([chunk.text])[0] <= chunk_size for chunk in chunks)
    assert_exact_slices(generated.text, chunks)
    assert_progress_and_coverage(generated.text, chunks)
