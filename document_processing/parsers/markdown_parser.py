"""Markdown files: YAML frontmatter into metadata, headings into sections, prose into plain text.

The body is parsed by markdown-it-py, a CommonMark parser (with GFM tables and strikethrough), and
its token stream is read into the shared sections (`parsers/sections.py`): each top-level heading
starts a section whose `heading_path` lists the enclosing headings ("# Guide" then "## Install" ->
["Guide", "Install"]); the text before the first heading is a section with an empty path, and
sections left with no text are dropped (their heading still heads their subsections). A heading
inside a block quote or a list item is text of that quote or item.

Link reference definitions are the parser's business, never text. Code blocks keep their content
verbatim between ``` fences (indented code keeps its four-space indent); a fence's info string
(```` ```python hl_lines="1 3" ````) is not training text: its language goes to the metadata
(`code_languages`). Tables become "a | b" rows. Code and tables are recorded as protected spans of
the final section text so chunking keeps them whole. Prose loses its markup: the text of links and
images (their alt text) stays, list items keep a "- " or "1. " marker, raw HTML is read like an
HTML file (script and style with their content dropped), and it is then cleaned like any other
text.

Frontmatter is found by python-frontmatter's YAML boundary and read with `yaml.safe_load` only: a
Python or other non-standard tag is refused with a `SecurityError` before anything is constructed,
and aliases are refused too, since expanding nested aliases into text can blow up memory.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from document_processing.cleaning import clean_text
from document_processing.parsers.base import DocumentParser
from document_processing.parsers.sections import (
    Block,
    Heading,
    build_sections,
    cut_sections,
    fenced,
    table_rows,
)
from document_processing.parsers.text_parser import cut_warning, decode_bytes, read_document_bytes
from document_processing.records import DocumentMetadata, ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError, SecurityError
from shared_utils.security import first_yaml_alias, remove_control_characters

# --------------------------------------------------------------------------------------------------
# frontmatter
# --------------------------------------------------------------------------------------------------

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
    from frontmatter import YAMLHandler

    handler = YAMLHandler()
    if not handler.detect(text):
        return _Frontmatter({}, text, 1), []
    boundaries = handler.FM_BOUNDARY.finditer(text)
    opening = next(boundaries)
    closing = next(boundaries, None)
    if closing is None:  # a thematic break at the top, not frontmatter
        return _Frontmatter({}, text, 1), []
    # The YAML text starts with the rest of the opening line: its line 0 is the file's line 1.
    first_line = text.count("\n", 0, opening.end()) + 1
    data = _load_frontmatter_yaml(text[opening.end() : closing.start()], path, first_line)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        warning = (
            f"the --- block at the top is YAML {type(data).__name__}, not a mapping of keys; "
            "read it as Markdown text"
        )
        return _Frontmatter({}, text, 1), [warning]
    body = text[closing.end() :].removeprefix("\n")
    body_first_line = text.count("\n", 0, closing.end()) + 2
    return _Frontmatter({str(key): value for key, value in data.items()}, body, body_first_line), []


def _load_frontmatter_yaml(source: str, path: Path, first_line: int) -> Any:
    """`yaml.safe_load` with errors that name the file and line (`source` starts on line
    `first_line` of the file)."""
    try:
        alias = first_yaml_alias(source)
        if alias is not None:
            raise SecurityError(
                f"{path}:{alias.start_mark.line + first_line}: frontmatter uses a YAML alias "
                f"(*{alias.anchor}); only plain YAML is allowed."
            )
        return yaml.safe_load(source)
    except yaml.constructor.ConstructorError as exc:
        line = _yaml_line(exc, first_line)
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
            f"{path}{_yaml_line(exc, first_line)}: frontmatter is not valid YAML ({problem}); "
            "fix it or remove the --- block."
        ) from None


def _yaml_line(exc: yaml.YAMLError, first_line: int) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f":{mark.line + first_line}" if mark is not None else ""


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
# tokens -> headings and blocks
# --------------------------------------------------------------------------------------------------

_RAW_TEXT_OPEN = re.compile(r"<(script|style|textarea|title)\b[^>]*(?<!/)>", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<br\b", re.IGNORECASE)
_LANGUAGE = re.compile(r"[\w+#.-]+")
_MAX_NESTING = 100


@lru_cache(maxsize=1)
def _markdown_it() -> Any:
    from markdown_it import MarkdownIt

    # maxNesting bounds the work on hostile nesting; deeper blocks are left out (with a warning).
    return MarkdownIt("commonmark", {"html": True, "maxNesting": _MAX_NESTING}).enable(
        ["table", "strikethrough"]
    )


def _inline_text(children: list[Any] | None) -> str:
    """The visible text of an inline token's children: link and image text kept, markup gone."""
    parts: list[str] = []
    raw_text: str | None = None  # inside inline <script>/<style>: skipped up to its end tag
    for token in children or ():
        kind = token.type
        if raw_text is not None:
            if kind == "html_inline" and token.content.lower().startswith(f"</{raw_text}"):
                raw_text = None
            continue
        if kind in ("text", "code_inline", "text_special"):
            parts.append(token.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "image":
            parts.append(_inline_text(token.children))
        elif kind == "html_inline":
            opened = _RAW_TEXT_OPEN.match(token.content)
            if opened:
                raw_text = opened.group(1).lower()
            elif _HTML_BREAK.match(token.content):
                parts.append("\n")
    return "".join(parts)


def _fence_language(info: str) -> str | None:
    """The language of a fence's info string: "python" for "python hl_lines="1 3"", "{.py}"."""
    match = _LANGUAGE.search(info.split(maxsplit=1)[0].lstrip("{.")) if info.strip() else None
    return match.group().lower() if match else None


def _is_closed_fence(token: Any, lines: list[str]) -> bool:
    start, end = token.map
    if end - 1 <= start or end > len(lines):
        return False
    closing = lines[end - 1].strip()
    fence = token.markup
    return closing.startswith(fence[0] * len(fence)) and not closing.strip(fence[0])


@dataclass
class _MarkdownRender:
    """Reads markdown-it's flat token stream into headings and blocks, in document order."""

    lines: list[str]
    first_line: int  # 1-based line number of `lines[0]` in the file
    items: list[Heading | Block] = field(default_factory=list)
    languages: dict[str, None] = field(default_factory=dict)  # ordered set
    warnings: list[str] = field(default_factory=list)
    lists: list[int] = field(default_factory=list)  # next number of each open list (-1: bullets)
    marker: str = ""  # the marker of the list item whose first block is still to come
    list_opens: bool = False  # the next block opens a top-level list: a blank line before it
    last_closed_list: int = -2  # index of the token that closed the last top-level list

    def prose(self, text: str) -> None:
        if self.marker:
            text, self.marker = f"{self.marker} {text}".rstrip(), ""
        if not text.strip():
            return
        tight = bool(self.lists) and not self.list_opens
        self.list_opens = False
        self.items.append(Block("prose", text, tight=tight))

    def protected(self, block: Block) -> None:
        if self.marker:  # a list item that starts with code or a table: its marker on its own
            self.prose("")
        self.list_opens = False
        self.items.append(block)

    def html(self, source: str, nested: bool) -> None:
        from document_processing.parsers.html_parser import html_items, parse_html_bytes

        try:
            root = parse_html_bytes(f"<html><body><div>{source}</div></body></html>")
        except ValueError:  # lxml's "Document is empty" and kin: nothing visible
            return
        for item in html_items(root.find("body")):
            if isinstance(item, Heading):
                if not nested:
                    self.items.append(item)
                else:
                    self.prose(item.text)
            elif item.kind == "prose":
                self.prose(item.text)
            else:
                self.protected(item)

    def render(self, tokens: list[Any]) -> None:
        index = 0
        while index < len(tokens):
            token = tokens[index]
            kind = token.type
            if kind == "heading_open":
                text = _inline_text(tokens[index + 1].children)
                if token.level == 0:
                    self.items.append(Heading(int(token.tag[1]), text))
                else:
                    self.prose(text)
                index += 3
                continue
            if kind == "paragraph_open":
                self.prose(_inline_text(tokens[index + 1].children))
                index += 3
                continue
            if kind in ("bullet_list_open", "ordered_list_open"):
                if not self.lists:
                    self.list_opens = index != self.last_closed_list + 1
                self.lists.append(int(token.attrs.get("start", 1)) if token.tag == "ol" else -1)
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
                if not self.lists:
                    self.last_closed_list = index
            elif kind == "list_item_open":
                number = self.lists[-1]
                # An item whose first block is a list: "1. - 2. foo" keeps all three markers.
                self.marker = f"{self.marker} {number}." if number >= 0 else f"{self.marker} -"
                self.marker = self.marker.lstrip()
                if number >= 0:
                    self.lists[-1] += 1
            elif kind == "list_item_close" and self.marker:
                self.prose("")  # an empty item keeps its marker
            elif kind == "fence":
                self.fence(token)
            elif kind == "code_block":
                code = "\n".join(
                    f"    {line}" if line.strip() else "" for line in token.content.split("\n")
                )
                self.protected(Block("code", code.rstrip("\n ")))
            elif kind == "table_open":
                index = self.table(tokens, index)
            elif kind == "html_block":
                self.html(token.content, nested=token.level > 0)
            index += 1

    def fence(self, token: Any) -> None:
        language = _fence_language(token.info)
        if language:
            self.languages[language] = None
        if token.level == 0 and not _is_closed_fence(token, self.lines):
            self.warnings.append(
                f"code fence opened on line {self.first_line + token.map[0]} is never closed; "
                "kept as code to the end of the file"
            )
        self.protected(Block("code", fenced(token.content)))

    def table(self, tokens: list[Any], index: int) -> int:
        """Read the table that opens at `index`; returns the index of its `table_close`."""
        rows: list[list[str]] = []
        while tokens[index].type != "table_close":
            token = tokens[index]
            if token.type == "tr_open":
                rows.append([])
            elif token.type == "inline" and rows:
                rows[-1].append(_inline_text(token.children))
            index += 1
        self.protected(Block("table", table_rows(rows)))
        return index


def _render_markdown(body: str, first_line: int) -> _MarkdownRender:
    renderer = _MarkdownRender(body.split("\n"), first_line)
    tokens = _markdown_it().parse(body)
    renderer.render(tokens)
    if any(token.level >= _MAX_NESTING - 1 for token in tokens):
        renderer.warnings.append(
            f"blocks nested more than {_MAX_NESTING} deep (quotes in quotes, lists in lists) "
            "were left out"
        )
    return renderer


# --------------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------------


class MarkdownParser(DocumentParser):
    """A Markdown file as one section per heading, with frontmatter in the metadata."""

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        data = read_document_bytes(path)
        raw, encoding, warnings = decode_bytes(data, path, kind="Markdown")
        # Control characters go everywhere, code blocks included ("\r\n" becomes "\n").
        text = remove_control_characters(raw.removeprefix("\ufeff"))
        frontmatter, frontmatter_warnings = _split_frontmatter(text, path)
        warnings.extend(frontmatter_warnings)
        renderer = _render_markdown(frontmatter.body, frontmatter.body_first_line)
        warnings.extend(renderer.warnings)
        sections, first_h1 = build_sections(renderer.items)
        if not sections:
            raise DocumentProcessingError(
                f"{path}: has no text after cleaning (only frontmatter, headings, markup or "
                "whitespace); nothing to extract."
            )
        limit = settings.max_text_length
        sections, dropped = cut_sections(sections, limit)
        if dropped:
            warnings.append(cut_warning(limit + dropped, limit))
        title = _frontmatter_title(frontmatter.fields) or first_h1 or path.stem
        metadata = _metadata_from_frontmatter(frontmatter.fields, title, encoding)
        if renderer.languages:
            metadata.extra.setdefault("code_languages", ", ".join(renderer.languages))
        return ParsedDocument(
            source=source,
            doc_type="markdown",
            metadata=metadata,
            sections=sections,
            warnings=warnings,
        )


def _frontmatter_title(fields: dict[str, Any]) -> str | None:
    for key, value in fields.items():
        if key.lower() in _TITLE_KEYS and value is not None:
            return clean_text(_as_text(value)) or None
    return None
