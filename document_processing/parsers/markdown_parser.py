"""Markdown files: YAML frontmatter into metadata, headings into sections, prose into plain text.

The body is read line by line into blocks (a CommonMark subset that covers what documentation
uses): ATX and setext headings, fenced and indented code, GFM tables, thematic breaks, link
reference definitions and everything else as prose paragraphs. Each heading starts a section whose
`heading_path` lists the enclosing headings ("# Guide" then "## Install" -> ["Guide", "Install"]);
the text before the first heading is a section with an empty path, and sections left with no text
are dropped (their heading still heads their subsections).

Code blocks stay verbatim, fences included; tables become "a | b" rows. Both are recorded as
protected spans of the final section text so chunking keeps them whole. Prose loses its markup:
HTML (script and style with their content), link and image syntax (their text kept), emphasis and
inline-code markers, and is then cleaned like any other text.

Frontmatter is read with `yaml.safe_load` only: a Python or other non-standard tag is refused with
a `SecurityError` before anything is constructed, and aliases are refused too, since expanding
nested aliases into text can blow up memory.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from document_processing.cleaning import clean_text
from document_processing.parsers.base import DocumentParser
from document_processing.parsers.text_parser import cut_warning, decode_bytes, read_document_bytes
from document_processing.records import DocumentMetadata, ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError, SecurityError
from shared_utils.security import first_yaml_alias, remove_control_characters, strip_html

# --------------------------------------------------------------------------------------------------
# frontmatter
# --------------------------------------------------------------------------------------------------

_FRONTMATTER_CLOSE = ("---", "...")
_TITLE_KEYS = ("title",)
_AUTHOR_KEYS = ("author", "authors")
_CREATED_KEYS = ("date", "created")
_MODIFIED_KEYS = ("modified", "updated", "lastmod")
_YAML_CORE_TAG = "tag:yaml.org,2002:"
_UNKNOWN_TAG = re.compile(r"tag '([^']*)'")


@dataclass
class _Frontmatter:
    fields: dict[str, Any]
    body: str
    body_first_line: int  # 1-based line number of the body's first line in the file


def _split_frontmatter(text: str, path: Path) -> tuple[_Frontmatter, list[str]]:
    """Separate a leading `---` ... `---` YAML block from the body; (frontmatter, warnings)."""
    lines = text.split("\n")
    if lines[0].rstrip() != "---":
        return _Frontmatter({}, text, 1), []
    close = next((i for i in range(1, len(lines)) if lines[i].rstrip() in _FRONTMATTER_CLOSE), None)
    if close is None:  # a thematic break at the top, not frontmatter
        return _Frontmatter({}, text, 1), []
    data = _load_frontmatter_yaml("\n".join(lines[1:close]), path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        warning = (
            f"the --- block at the top is YAML {type(data).__name__}, not a mapping of keys; "
            "read it as Markdown text"
        )
        return _Frontmatter({}, text, 1), [warning]
    body = "\n".join(lines[close + 1 :])
    return _Frontmatter({str(key): value for key, value in data.items()}, body, close + 2), []


def _load_frontmatter_yaml(source: str, path: Path) -> Any:
    """`yaml.safe_load` with errors that name the file and line (frontmatter starts on line 2)."""
    try:
        alias = first_yaml_alias(source)
        if alias is not None:
            raise SecurityError(
                f"{path}:{alias.start_mark.line + 2}: frontmatter uses a YAML alias "
                f"(*{alias.anchor}); only plain YAML is allowed."
            )
        return yaml.safe_load(source)
    except yaml.constructor.ConstructorError as exc:
        line = _yaml_line(exc)
        tag = _UNKNOWN_TAG.search(exc.problem or "")
        if tag is None:
            raise DocumentProcessingError(
                f"{path}{line}: frontmatter is not valid YAML ({exc.problem}); fix it or remove "
                "the --- block."
            ) from None
        name = tag.group(1).replace(_YAML_CORE_TAG, "!!")
        raise SecurityError(
            f"{path}{line}: frontmatter uses the YAML tag {name}; only plain YAML is allowed."
        ) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).split("\n")[0]
        raise DocumentProcessingError(
            f"{path}{_yaml_line(exc)}: frontmatter is not valid YAML ({problem}); fix it or "
            "remove the --- block."
        ) from None


def _yaml_line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f":{mark.line + 2}" if mark is not None else ""


def _metadata_from_frontmatter(
    fields: dict[str, Any], title: str, encoding: str
) -> DocumentMetadata:
    metadata = DocumentMetadata(title=title, encoding=encoding)
    for key, value in fields.items():
        if value is None:
            continue
        lowered = key.lower()
        if lowered in _TITLE_KEYS:
            continue  # already in `title`
        if lowered in _AUTHOR_KEYS and metadata.author is None:
            metadata.author = _as_text(value, join=", ")
        elif lowered in _CREATED_KEYS and metadata.created is None:
            metadata.created = _as_text(value)
        elif lowered in _MODIFIED_KEYS and metadata.modified is None:
            metadata.modified = _as_text(value)
        else:
            metadata.extra[key] = _as_text(value)
    return metadata


def _as_text(value: Any, join: str | None = None) -> str:
    """A frontmatter value as text: dates in ISO 8601, lists joined or JSON, others as JSON."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if join is not None and isinstance(value, list):
        return join.join(_as_text(item) for item in value)
    return json.dumps(value, ensure_ascii=False, default=_json_default, sort_keys=True)


def _json_default(value: Any) -> str:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)  # bytes (!!binary), sets


# --------------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------------

_ATX_HEADING = re.compile(r" {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*")
_SETEXT_UNDERLINE = re.compile(r" {0,3}(=+|-+)[ \t]*")
_THEMATIC_BREAK = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*")
_FENCE_OPEN = re.compile(r"([ \t]*)(`{3,}|~{3,})(.*)")
_INDENTED_CODE = re.compile(r"(?: {4}|\t)")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")
_BLOCKQUOTE = re.compile(r" {0,3}>")
_TABLE_SEPARATOR = re.compile(r" {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*")
_REFERENCE_DEFINITION = re.compile(r" {0,3}\[([^\]^][^\]]*)\]:[ \t]*\S.*")
# Raw HTML whose content is not text: it may run over blank lines, so it is collected whole before
# strip_html removes it with its content.
_RAW_HTML_OPEN = re.compile(
    r"<(script|style|iframe|object|embed|noscript|template)\b|<!--", re.IGNORECASE
)


@dataclass
class _Heading:
    level: int
    text: str  # raw Markdown of the heading text


@dataclass
class _Block:
    kind: Literal["prose", "code", "table"]
    lines: list[str]


@dataclass
class _BlockScan:
    items: list[_Heading | _Block] = field(default_factory=list)
    reference_labels: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)


def _scan_blocks(body: str, first_line: int) -> _BlockScan:
    """Split the Markdown body into headings and prose/code/table blocks, in document order."""
    lines = body.split("\n")
    scan = _BlockScan()
    paragraph: list[str] = []
    in_list = False  # indented lines continue a list item instead of starting code
    i = 0

    def flush() -> None:
        if paragraph:
            scan.items.append(_Block("prose", paragraph.copy()))
            paragraph.clear()

    while i < len(lines):
        line = lines[i]
        fence = _FENCE_OPEN.fullmatch(line)
        if fence and (in_list or len(fence.group(1).expandtabs(4)) <= 3) and _is_fence(fence):
            flush()
            end = _fence_end(lines, i, fence.group(2))
            if end == len(lines):
                end -= 1
                scan.warnings.append(
                    f"code fence opened on line {first_line + i} is never closed; kept as code "
                    "to the end of the file"
                )
            scan.items.append(_Block("code", lines[i : end + 1]))
            i = end + 1
            continue
        if not line.strip():
            if not in_list:
                flush()
            else:
                paragraph.append(line)  # blank line inside a list: items stay one block
            i += 1
            continue
        heading = _ATX_HEADING.fullmatch(line)
        if heading:
            flush()
            in_list = False
            scan.items.append(_Heading(len(heading.group(1)), heading.group(2) or ""))
            i += 1
            continue
        underline = _SETEXT_UNDERLINE.fullmatch(line)
        if underline and paragraph and not in_list and _is_setext_content(paragraph):
            level = 1 if underline.group(1).startswith("=") else 2
            scan.items.append(_Heading(level, " ".join(part.strip() for part in paragraph)))
            paragraph.clear()
            i += 1
            continue
        if _THEMATIC_BREAK.fullmatch(line):
            flush()
            in_list = False
            i += 1
            continue
        if not paragraph and not in_list and _INDENTED_CODE.match(line):
            end = _indented_code_end(lines, i)
            scan.items.append(_Block("code", lines[i:end]))
            i = end
            continue
        if "|" in line and i + 1 < len(lines) and _is_table_separator(lines[i + 1]):
            flush()
            in_list = False
            end = i + 2
            while end < len(lines) and lines[end].strip() and "|" in lines[end]:
                end += 1
            scan.items.append(_Block("table", [lines[i], *lines[i + 2 : end]]))
            i = end
            continue
        reference = _REFERENCE_DEFINITION.fullmatch(line)
        if reference and not paragraph:
            scan.reference_labels.add(_normalise_label(reference.group(1)))
            i += 1
            continue
        if _RAW_HTML_OPEN.search(_CODE_SPAN.sub("", line)):
            end = _raw_html_end(lines, i)
            paragraph.extend(lines[i : end + 1])
            i = end + 1
            continue
        if _LIST_ITEM.match(line):
            if not in_list:
                flush()  # a list starts its own block, so its items are not joined to the intro
            in_list = True
        elif in_list and not line[0].isspace() and paragraph and not paragraph[-1].strip():
            flush()  # an unindented paragraph after a blank line ends the list
            in_list = False
        paragraph.append(line)
        i += 1
    flush()
    return scan


def _is_fence(fence: re.Match[str]) -> bool:
    # A backtick fence's info string cannot contain backticks ("```a`" is inline code).
    return not (fence.group(2).startswith("`") and "`" in fence.group(3))


def _fence_end(lines: list[str], start: int, opener: str) -> int:
    """Index of the closing fence line (same character, at least as long), or len(lines)."""
    closing = re.compile(rf"[ \t]*{re.escape(opener[0])}{{{len(opener)},}}[ \t]*")
    for j in range(start + 1, len(lines)):
        if closing.fullmatch(lines[j]):
            return j
    return len(lines)


def _indented_code_end(lines: list[str], start: int) -> int:
    """End (exclusive) of an indented code block: indented lines and blanks between them."""
    end = start
    j = start
    while j < len(lines) and (not lines[j].strip() or _INDENTED_CODE.match(lines[j])):
        j += 1
        if lines[j - 1].strip():
            end = j  # trailing blank lines are not part of the block
    return end


def _raw_html_end(lines: list[str], start: int) -> int:
    """Index of the line that closes the raw HTML opened on `start` (or the last line)."""
    text = _CODE_SPAN.sub("", lines[start])
    opened = _RAW_HTML_OPEN.search(text)
    assert opened is not None
    close = "-->" if opened.group(1) is None else f"</{opened.group(1).lower()}"
    rest = text[opened.end() :]
    j = start
    while close not in rest.lower():
        j += 1
        if j == len(lines):
            return len(lines) - 1
        rest = lines[j]
    return j


def _is_setext_content(paragraph: list[str]) -> bool:
    """Only a plain paragraph turns into a setext heading (not a list or a quote)."""
    return not any(_LIST_ITEM.match(line) or _BLOCKQUOTE.match(line) for line in paragraph)


def _is_table_separator(line: str) -> bool:
    return "-" in line and ("|" in line) and _TABLE_SEPARATOR.fullmatch(line) is not None


def _normalise_label(label: str) -> str:
    return " ".join(label.split()).casefold()


# --------------------------------------------------------------------------------------------------
# inline markup
# --------------------------------------------------------------------------------------------------

# Placeholders keep code spans, escaped characters and autolinks away from the markup passes;
# NUL cannot occur in the text (control characters were removed when the file was read).
_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
_MARKUP_CHAR = re.compile(r"[`\\<>&\[\]*_~+!]")  # text without any of these has no markup
# Code spans and emphasis are matched within one line and a bounded length: an unmatched marker
# then costs a short scan, not one to the end of a (possibly huge) line, which would be quadratic.
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.{1,2000}?)(?<!`)\1(?!`)")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^\s<>]+|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)>")
_LINK_TEXT = r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"
_LINK_DESTINATION = (
    r"\(\s*(?:<[^<>\n]*>|(?:[^()\s]|\([^()\s]*\))*)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"
)
_IMAGE = re.compile(r"!" + _LINK_TEXT + r"(?:" + _LINK_DESTINATION + r"|\[[^\]]*\])")
_INLINE_LINK = re.compile(_LINK_TEXT + _LINK_DESTINATION)
_REFERENCE_LINK = re.compile(_LINK_TEXT + r"\[([^\]]*)\]")
_SHORTCUT_LINK = re.compile(r"\[([^\[\]^][^\[\]]*)\](?!\()")
_STRONG_STAR = re.compile(r"\*\*(?=\S)(.{1,500}?)(?<=\S)\*\*")
_STRONG_UNDERSCORE = re.compile(r"(?<!\w)__(?=\S)(.{1,500}?)(?<=\S)__(?!\w)")
_STRIKE = re.compile(r"~~(?=\S)(.{1,500}?)(?<=\S)~~")
_EMPHASIS_STAR = re.compile(r"\*(?=[^\s*])(.{1,500}?)(?<=[^\s*])\*")
_EMPHASIS_UNDERSCORE = re.compile(r"(?<!\w)_(?=[^\s_])(.{1,500}?)(?<=[^\s_])_(?!\w)")
_QUOTE_MARKERS = re.compile(r"^(?:[ \t]{0,3}>[ \t]?)+", re.MULTILINE)
_BULLET = re.compile(r"^([ \t]*)[*+](?=[ \t])", re.MULTILINE)
_HARD_BREAK = re.compile(r"\\$", re.MULTILINE)


def markdown_to_text(markdown: str, reference_labels: set[str] | None = None) -> str:
    """Markdown prose as cleaned plain text (the text of links and images kept, markup dropped).

    List markers stay ("* item" and "+ item" become "- item"); block quote markers go. HTML is
    removed with `strip_html` (script and style with their content); inline code loses only its
    backticks and is protected from the other passes. Reference-style links lose their brackets
    when they are full ("[text][ref]") or collapsed ("[text][]"), and shortcut links ("[text]")
    when a definition for the label exists in `reference_labels`.
    """
    if not _MARKUP_CHAR.search(markdown):
        return clean_text(markdown)
    saved: list[str] = []

    def save(text: str) -> str:
        saved.append(text)
        return f"\x00{len(saved) - 1}\x00"

    text = _QUOTE_MARKERS.sub("", markdown)
    text = _BULLET.sub(r"\1-", text)
    text = _HARD_BREAK.sub("", text)
    text = _CODE_SPAN.sub(lambda m: save(_code_span_text(m.group(2))), text)
    text = _ESCAPE.sub(lambda m: save(m.group(1)), text)
    text = _AUTOLINK.sub(lambda m: save(m.group(1)), text)
    if "<" in text:
        text = strip_html(text)  # also unescapes entities
    elif "&" in text:
        text = html.unescape(text)
    text = _remove_link_syntax(text, reference_labels or set())
    text = _remove_emphasis(text)
    while "\x00" in text:  # saved text can hold placeholders of its own (code in a link's text)
        text = _PLACEHOLDER.sub(lambda m: saved[int(m.group(1))], text)
    return clean_text(text)


def _code_span_text(code: str) -> str:
    # CommonMark: one space is stripped from each side when both sides have one.
    if len(code) > 2 and code.startswith(" ") and code.endswith(" ") and code.strip():
        return code[1:-1]
    return code


def _remove_link_syntax(text: str, reference_labels: set[str]) -> str:
    if "[" not in text:
        return text
    text = _IMAGE.sub(r"\1", text)
    text = _INLINE_LINK.sub(r"\1", text)
    text = _REFERENCE_LINK.sub(r"\1", text)
    if reference_labels:
        text = _SHORTCUT_LINK.sub(
            lambda m: m.group(1) if _normalise_label(m.group(1)) in reference_labels else m.group(),
            text,
        )
    return text


def _remove_emphasis(text: str) -> str:
    if "*" in text or "_" in text:
        text = _STRONG_STAR.sub(r"\1", text)
        text = _STRONG_UNDERSCORE.sub(r"\1", text)
        text = _EMPHASIS_STAR.sub(r"\1", text)
        text = _EMPHASIS_UNDERSCORE.sub(r"\1", text)
    if "~~" in text:
        text = _STRIKE.sub(r"\1", text)
    return text


# --------------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------------

_TABLE_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _render_block(block: _Block, reference_labels: set[str]) -> str:
    if block.kind == "code":
        return "\n".join(block.lines)
    if block.kind == "table":
        return "\n".join(_render_table_row(row, reference_labels) for row in block.lines)
    return markdown_to_text("\n".join(block.lines), reference_labels)


def _render_table_row(row: str, reference_labels: set[str]) -> str:
    """ "| a | **b** |" -> "a | b"."""
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    cells = _TABLE_CELL_SPLIT.split(row)
    cells = [markdown_to_text(cell.replace("\\|", "|"), reference_labels) for cell in cells]
    return " | ".join(cells).strip()


@dataclass
class _SectionBuilder:
    """Collects rendered blocks under the current heading path and closes them into sections."""

    reference_labels: set[str]
    sections: list[Section] = field(default_factory=list)
    parts: list[tuple[str, bool]] = field(default_factory=list)  # (text, protected)
    stack: list[tuple[int, str]] = field(default_factory=list)  # (level, heading text)

    def add(self, block: _Block) -> None:
        text = _render_block(block, self.reference_labels)
        if text.strip():
            self.parts.append((text, block.kind != "prose"))

    def heading(self, level: int, text: str) -> None:
        self.close()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, text))

    def close(self) -> None:
        """End the current section; one without text is dropped."""
        if not self.parts:
            return
        pieces: list[str] = []
        protected: list[tuple[int, int]] = []
        offset = 0
        for text, is_protected in self.parts:
            if pieces:
                offset += 2  # the "\n\n" between blocks
            if is_protected:
                protected.append((offset, offset + len(text)))
            pieces.append(text)
            offset += len(text)
        path = [heading for _, heading in self.stack if heading]
        text = "\n\n".join(pieces)
        self.sections.append(Section(text=text, heading_path=path, protected=protected))
        self.parts = []


def _build_sections(scan: _BlockScan) -> tuple[list[Section], str | None]:
    """Sections in document order, and the text of the first level-1 heading (if any)."""
    builder = _SectionBuilder(scan.reference_labels)
    first_h1: str | None = None
    for item in scan.items:
        if isinstance(item, _Heading):
            text = markdown_to_text(item.text, scan.reference_labels)
            if item.level == 1 and first_h1 is None and text:
                first_h1 = text
            builder.heading(item.level, text)
        else:
            builder.add(item)
    builder.close()
    return builder.sections, first_h1


def _cut_sections(sections: list[Section], limit: int) -> tuple[list[Section], int]:
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


# --------------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------------


class MarkdownParser(DocumentParser):
    """A Markdown file as one section per heading, with frontmatter in the metadata."""

    suffixes = (".md", ".markdown")

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        data = read_document_bytes(path)
        raw, encoding, warnings = decode_bytes(data, path, kind="Markdown")
        # Control characters go everywhere, code blocks included ("\r\n" becomes "\n").
        text = remove_control_characters(raw.removeprefix("\ufeff"))
        frontmatter, frontmatter_warnings = _split_frontmatter(text, path)
        warnings.extend(frontmatter_warnings)
        scan = _scan_blocks(frontmatter.body, frontmatter.body_first_line)
        warnings.extend(scan.warnings)
        sections, first_h1 = _build_sections(scan)
        if not sections:
            raise DocumentProcessingError(
                f"{path}: has no text after cleaning (only frontmatter, headings, markup or "
                "whitespace); nothing to extract."
            )
        limit = settings.max_text_length
        sections, dropped = _cut_sections(sections, limit)
        if dropped:
            warnings.append(cut_warning(limit + dropped, limit))
        title = _frontmatter_title(frontmatter.fields) or first_h1 or path.stem
        return ParsedDocument(
            source=source,
            doc_type="markdown",
            metadata=_metadata_from_frontmatter(frontmatter.fields, title, encoding),
            sections=sections,
            warnings=warnings,
        )


def _frontmatter_title(fields: dict[str, Any]) -> str | None:
    for key, value in fields.items():
        if key.lower() in _TITLE_KEYS and value is not None:
            return clean_text(_as_text(value)) or None
    return None
