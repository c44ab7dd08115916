"""Sections from a stream of headings and blocks: the part every structured format shares.

A parser turns its file into `Heading`s and `Block`s in reading order (Markdown from its token
stream, HTML and EPUB from their element trees, Word from its paragraphs and tables) and hands them
to `build_sections`. Each heading starts a section whose `heading_path` lists the enclosing
headings ("# Guide" then "## Install" -> ["Guide", "Install"]); text before the first heading is a
section with an empty path, and a section left with no text is dropped (its heading still heads its
subsections).

Blocks are prose, code or tables. Prose is cleaned with `clean_text`; code stays verbatim and
tables are already "a | b" rows; both are recorded as protected spans of the section text, so
chunking keeps them whole. A prose block marked `tight` (the next item of a list) joins the prose
before it with a line break instead of a blank line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from document_processing.cleaning import clean_text
from document_processing.records import Section

BlockKind = Literal["prose", "code", "table"]


@dataclass
class Heading:
    level: int  # 1-6 for HTML and Markdown, 0 for a Word "Title" paragraph
    text: str  # plain text, not yet cleaned


@dataclass
class Block:
    kind: BlockKind
    text: str  # prose: plain text, not yet cleaned; code: verbatim; table: "a | b" rows
    tight: bool = False  # prose only: joins the prose before it with "\n" (list items)


_FENCE_RUN = re.compile(r"^ {0,3}(`{3,})", re.MULTILINE)


def fenced(code: str) -> str:
    """Code between fence lines, the fence longer than any backtick fence inside the code."""
    longest = max((len(match.group(1)) for match in _FENCE_RUN.finditer(code)), default=2)
    fence = "`" * max(3, longest + 1)
    body = code if code.endswith("\n") or not code else code + "\n"
    return f"{fence}\n{body}{fence}"


def one_line(exc: BaseException) -> str:
    """A library's exception as one short line for the report ("KeyError: 'x'")."""
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def table_rows(rows: list[list[str]]) -> str:
    """Rows of cell texts as "a | b" lines; cells cleaned to one line, empty rows left out."""
    lines = []
    for row in rows:
        cells = [" ".join(clean_text(cell).split()) for cell in row]
        if any(cells):
            lines.append(" | ".join(cells).strip())
    return "\n".join(lines)


@dataclass
class _Part:
    kind: BlockKind
    text: str


@dataclass
class SectionBuilder:
    """Collects blocks under the current heading path and closes them into sections."""

    sections: list[Section] = field(default_factory=list)
    first_title: str | None = None  # the first top-level heading (level 0 or 1), cleaned
    parts: list[_Part] = field(default_factory=list)
    stack: list[tuple[int, str]] = field(default_factory=list)  # (level, cleaned heading text)

    def add(self, block: Block) -> None:
        if not block.text.strip():
            return
        if block.kind == "prose" and block.tight and self.parts and self.parts[-1].kind == "prose":
            self.parts[-1].text += "\n" + block.text
        else:
            self.parts.append(_Part(block.kind, block.text))

    def heading(self, level: int, text: str) -> None:
        self.close()
        cleaned = " ".join(clean_text(text).split())
        if level <= 1 and self.first_title is None and cleaned:
            self.first_title = cleaned
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, cleaned))

    def close(self) -> None:
        """End the current section; one without text is dropped."""
        pieces: list[str] = []
        protected: list[tuple[int, int]] = []
        offset = 0
        for part in self.parts:
            text = clean_text(part.text) if part.kind == "prose" else part.text
            if not text.strip():
                continue
            if pieces:
                offset += 2  # the "\n\n" between blocks
            if part.kind != "prose":
                protected.append((offset, offset + len(text)))
            pieces.append(text)
            offset += len(text)
        self.parts = []
        if pieces:
            path = [heading for _, heading in self.stack if heading]
            self.sections.append(
                Section(text="\n\n".join(pieces), heading_path=path, protected=protected)
            )


def build_sections(items: list[Heading | Block]) -> tuple[list[Section], str | None]:
    """Sections in document order, and the text of the first level-0/1 heading (if any)."""
    builder = SectionBuilder()
    for item in items:
        if isinstance(item, Heading):
            builder.heading(item.level, item.text)
        else:
            builder.add(item)
    builder.close()
    return builder.sections, builder.first_title


def cut_sections(sections: list[Section], limit: int) -> tuple[list[Section], int]:
    """Keep at most `limit` characters of the document text; (sections, characters dropped)."""
    total = sum(len(section.text) for section in sections) + 2 * (len(sections) - 1)
    if total <= limit:
        return sections, 0
    kept: list[Section] = []
    used = 0
    for section in sections:
        room = limit - used - (2 if kept else 0)
        if room <= 0:
            break
        if len(section.text) > room:
            section.text = section.text[:room]
            section.protected = [
                (start, min(end, room)) for start, end in section.protected if start < room
            ]
        kept.append(section)
        used += len(section.text) + (2 if len(kept) > 1 else 0)
    return kept, total - limit
