"""HTML files (`.html`, `.htm`): the article of a web page, in sections under its headings.

A page saved from a browser holds far more than its article: menus, a header, a sidebar, a cookie
banner, a footer, comments. trafilatura (the boilerplate remover that tops the public article
extraction benchmarks) picks the article and the page's metadata (title, author, date, site name);
`favor_recall` keeps short documentation pages whole. Its output, simplified HTML, is read here
into the same sections as every other format: headings start sections with their heading path,
tables become "a | b" rows, lists keep their "- " and "1. " markers, `<pre>` is code; scripts,
styles and navigation never reach the text. Footnotes read as in Word files (`mark_footnotes`,
before trafilatura, which drops superscripts and links): the marker "[1]", the note "[1] text",
its link back to the marker ("↩", "^") left out. When trafilatura finds no article, or a very short
one (then it returns all the text of the page, flattened), the whole body is read without its
`nav`, `header`, `footer`, `aside` and form elements instead (with a warning when trafilatura
found nothing).

`html_items` (the element walker) is shared with the EPUB parser, whose chapters are XHTML without
boilerplate, and with the Markdown parser, for raw HTML blocks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from document_processing.parsers.base import DocumentParser
from document_processing.parsers.sections import (
    Block,
    Heading,
    build_sections,
    cut_sections,
    fenced,
    one_line,
    table_rows,
)
from document_processing.parsers.text_parser import cut_warning, read_document_bytes
from document_processing.records import DocumentMetadata, ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError

# Elements whose content is never text for a reader (ruby annotations repeat the base text).
_SKIPPED = frozenset(
    "script style noscript template head title meta link base svg canvas iframe object embed "
    "audio video map area button select option datalist input textarea rt rp nav form".split()
)
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_BLOCKS = frozenset(
    "html body div p section article main header footer aside address figure figcaption details "
    "summary center hgroup fieldset legend dl dt dd caption blockquote hr li ul ol menu dir".split()
)
_CONTAINERS = frozenset(("li", "blockquote", "td", "th", "dd"))  # headings inside are plain text
_LAYOUT_MARKERS = ("table", "h1", "h2", "h3", "h4", "h5", "h6")
# Boilerplate the fallback drops when trafilatura finds no article.
_BOILERPLATE_TAGS = ("nav", "header", "footer", "aside", "form", "menu")
_BOILERPLATE_ROLES = ("navigation", "banner", "contentinfo", "complementary", "search", "menu")
_MIN_ARTICLE_CHARS = 250  # trafilatura's own MIN_EXTRACTED_SIZE
_MAX_DEPTH = 200  # deeper elements are read as plain text: no recursion limit on hostile nesting
_BREAK = "\x00"  # a <br> while whitespace is collapsed; control characters never reach here
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")
_EPUB_TYPE = "{http://www.idpf.org/2007/ops}type"
# Footnotes: a marker is a link to an anchor of the page, set as a superscript or marked as a
# note reference (Python-Markdown, Pandoc, kramdown, markdown-it, Wikipedia, EPUB); its label is
# a short number, letter or symbol, with or without brackets ("1", "[1]", "[note 2]", "*").
_NOTEREF_HINTS = ("noteref", "footnote-ref", "footnote")
_NOTE_LABEL = re.compile(r"\[?\s*([^\s\[\]]{1,8}(?: [^\s\[\]]{1,8})?)\s*\]?")
# A footnote's link back to its marker: by its class or role, or by the arrow it shows.
_BACKLINK_HINTS = ("backlink", "backref", "footnote-back", "reversefootnote")
_BACKLINK_ARROWS = frozenset("\u21a9 \u21a5 \u2191 \u2934 \u2b11 ^".split())


def _collapse(text: str) -> str:
    """HTML whitespace: runs become one space, <br> a line break."""
    text = _WHITESPACE.sub(" ", text.replace("\n" + _BREAK, _BREAK))
    return "\n".join(line.strip() for line in text.split(_BREAK))


def _tag(element: Any) -> str | None:
    """The element's lower-case local name; None for comments and processing instructions."""
    tag = element.tag
    if not isinstance(tag, str):
        return None
    return tag.rsplit("}", 1)[-1].lower()


def _skipped(element: Any, tag: str) -> bool:
    if tag in _SKIPPED or element.get("hidden") is not None:
        return True
    epub_type = element.get(_EPUB_TYPE) or element.get("epub:type") or ""
    return "pagebreak" in epub_type or "toc" in epub_type.split()


class _Walker:
    """Reads an element tree into headings and blocks, in reading order."""

    def __init__(self) -> None:
        self.items: list[Heading | Block] = []
        self.inline: list[str] = []
        self.containers = 0  # depth inside li/blockquote/table cells: headings there are text
        self.lists = 0
        self.list_started = False  # the next prose block opens a top-level list
        self.marker = ""  # list marker waiting for its item's first prose

    # -- output ------------------------------------------------------------------------------

    def flush(self) -> None:
        text = _collapse("".join(self.inline)).strip() if self.inline else ""
        self.inline = []
        if not text:
            return
        if self.marker:
            text, self.marker = f"{self.marker} {text}", ""
        tight = self.lists > 0 and not self.list_started
        self.list_started = False
        self.items.append(Block("prose", text, tight=tight))

    def emit(self, block: Block) -> None:
        self.flush()
        if self.marker:  # an item that starts with code or a table: its marker on its own
            marker, self.marker = self.marker, ""
            self.items.append(Block("prose", marker, tight=self.lists > 0))
        self.list_started = False
        self.items.append(block)

    # -- walking -----------------------------------------------------------------------------

    def walk(self, element: Any, depth: int = 0) -> None:
        tag = _tag(element)
        if tag is None or _skipped(element, tag):
            return
        if depth > _MAX_DEPTH:
            self.inline.append(" " + element.text_content() + " ")
            return
        if tag in _HEADINGS and not self.containers:
            self.flush()
            text = _collapse(_inline_text(element)).strip()
            self.items.append(Heading(_HEADINGS[tag], text))
        elif tag == "pre":
            code = _inline_text(element, collapse=False).strip("\n")
            if code.strip():
                self.emit(Block("code", fenced(code)))
        elif tag == "table" and not _is_layout_table(element):
            self.table(element)
        elif tag in ("ul", "ol", "menu", "dir"):
            self.list(element, tag == "ol", depth)
        elif tag == "br":
            self.inline.append(_BREAK)
        elif tag in _BLOCKS or tag in _HEADINGS or tag in ("table", "tr", "td", "th", "tbody"):
            self.flush()
            inside = tag in _CONTAINERS or tag in _HEADINGS
            self.containers += inside
            self.children(element, depth)
            self.containers -= inside
            self.flush()
        else:  # inline: a, span, em, code, sub, ...
            self.children(element, depth)

    def children(self, element: Any, depth: int) -> None:
        if element.text:
            self.inline.append(element.text)
        for child in element:
            self.walk(child, depth + 1)
            if child.tail:
                self.inline.append(child.tail)

    def list(self, element: Any, ordered: bool, depth: int) -> None:
        self.flush()
        if not self.lists:
            self.list_started = True
        self.lists += 1
        number = _start(element)
        for child in element:
            if _tag(child) != "li":
                self.walk(child, depth + 1)
                continue
            self.flush()
            # An item whose first block is a list keeps both markers ("1. - item").
            self.marker = (f"{self.marker} " if self.marker else "") + (
                f"{number}." if ordered else "-"
            )
            number += 1
            self.containers += 1
            self.children(child, depth + 1)
            self.flush()
            self.containers -= 1
            self.marker = ""
        self.lists -= 1
        if not self.lists:
            self.list_started = False

    def table(self, element: Any) -> None:
        caption = element.find("caption")
        if caption is not None:
            self.flush()
            self.inline.append(_inline_text(caption))
            self.flush()
        rows = [
            [_collapse(_inline_text(cell)) for cell in row if _tag(cell) in ("td", "th")]
            for row in element.xpath(
                "./*[local-name()='tr'] | ./*[local-name()='thead' or local-name()='tbody' "
                "or local-name()='tfoot']/*[local-name()='tr']"
            )
        ]
        text = table_rows(rows)
        if text:
            self.emit(Block("table", text))


def _start(element: Any) -> int:
    try:
        return int(element.get("start", "1"))
    except ValueError:
        return 1


def _is_layout_table(table: Any) -> bool:
    """A table used to lay out a page (one column, or headings and tables inside its cells)."""
    rows = table.xpath(".//*[local-name()='tr']")
    if all(len([c for c in row if _tag(c) in ("td", "th")]) <= 1 for row in rows):
        return True
    markers = " or ".join(f"local-name()='{name}'" for name in _LAYOUT_MARKERS)
    return bool(table.xpath(f".//*[local-name()='td' or local-name()='th']//*[{markers}]"))


def _inline_text(element: Any, collapse: bool = True) -> str:
    """The text of an element as a reader sees it (skipped elements left out, <br> kept)."""
    parts: list[str] = []

    def visit(node: Any, depth: int) -> None:
        tag = _tag(node)
        if tag is None or _skipped(node, tag):
            return
        if tag == "br":
            parts.append(_BREAK if collapse else "\n")
        elif depth > _MAX_DEPTH:
            parts.append(node.text_content())
            return
        if node.text:
            parts.append(node.text)
        for child in node:
            visit(child, depth + 1)
            if child.tail:
                parts.append(child.tail)
        if tag in ("p", "div", "li", "tr") and collapse:
            parts.append(" ")

    visit(element, 0)
    return "".join(parts)


def mark_footnotes(root: Any) -> bool:
    """Footnotes in place, as Word's read: each marker becomes "[1]" in the text, each note of a
    footnote list starts with "[1] " (a paragraph, no longer a list item), and the links back to
    the markers ("↩", "^", "↑") are dropped. Whether anything changed."""
    backlinks = [element for element in root.iter() if _is_backlink(element)]
    for element in backlinks:
        if element.getparent() is not None:
            _replace_with_text(element, "")
    by_id: dict[str, Any] | None = None
    noted: set[str] = set()
    markers = 0
    for anchor in list(root.iter()):
        label = _note_label(anchor)
        if label is None or anchor.getparent() is None:
            continue
        sup = _sup_around(anchor)
        whole = sup is not None and sup.text_content().strip() == anchor.text_content().strip()
        _replace_with_text(sup if whole else anchor, f"[{label}]")
        markers += 1
        if by_id is None:
            by_id = {element.get("id"): element for element in root.iter() if element.get("id")}
        target = anchor.get("href", "")[1:]
        note = by_id.get(target)
        if note is not None and _tag(note) == "li" and target not in noted:
            noted.add(target)
            _as_note_paragraph(note, label)
    return bool(backlinks or markers)


def _hints(element: Any) -> str:
    """The element's class, role, rel and epub:type, lower case: where footnote markup names
    itself."""
    names = ("class", "role", "rel", _EPUB_TYPE, "epub:type")
    return " ".join(element.get(name) or "" for name in names).lower()


def _is_backlink(element: Any) -> bool:
    """A footnote's link back to its marker (or the span that holds such links)."""
    tag = _tag(element)
    if tag not in ("a", "span", "sup", "b"):
        return False
    if any(hint in _hints(element) for hint in _BACKLINK_HINTS):
        return True
    text = element.text_content().replace("\ufe0e", "").replace("\ufe0f", "").strip()
    return tag == "a" and (element.get("href") or "").startswith("#") and text in _BACKLINK_ARROWS


def _sup_around(anchor: Any) -> Any | None:
    """The <sup> that is the parent or grandparent of `anchor`, or None."""
    parent = anchor.getparent()
    for element in (parent, parent.getparent() if parent is not None else None):
        if element is not None and _tag(element) == "sup":
            return element
    return None


def _note_label(anchor: Any) -> str | None:
    """The label of a footnote marker ("1" of "[1]"); None when `anchor` is no marker."""
    if _tag(anchor) != "a" or not (anchor.get("href") or "").startswith("#"):
        return None
    if not (
        _sup_around(anchor) is not None
        or any(_tag(element) == "sup" for element in anchor.iterdescendants())
        or any(hint in _hints(anchor) for hint in _NOTEREF_HINTS)
    ):
        return None
    match = _NOTE_LABEL.fullmatch(_collapse(anchor.text_content()).strip())
    return match.group(1) if match else None


def _replace_with_text(element: Any, text: str) -> None:
    """Remove `element`, leaving `text` (and the text after it) in its place."""
    text += element.tail or ""
    previous, parent = element.getprevious(), element.getparent()
    if previous is not None:
        previous.tail = (previous.tail or "") + text
    else:
        parent.text = (parent.text or "") + text
    parent.remove(element)


def _as_note_paragraph(note: Any, label: str) -> None:
    """A footnote list item as a block that starts with its label; a list left without items
    (every note moved out of it) becomes a plain block too."""
    first = note
    while not (first.text or "").strip() and len(first) and _tag(first[0]) in ("p", "span", "div"):
        first = first[0]
    first.text = f"[{label}] " + (first.text or "").lstrip()
    note.tag = "div"
    parent = note.getparent()
    if (
        parent is not None
        and _tag(parent) in ("ol", "ul")
        and not any(_tag(child) == "li" for child in parent)
    ):
        parent.tag = "div"


def html_items(root: Any) -> list[Heading | Block]:
    """Headings and blocks of an lxml element tree (a whole page, a chapter, an HTML fragment)."""
    walker = _Walker()
    walker.walk(root)
    walker.flush()
    return walker.items


def parse_html_bytes(data: bytes | str) -> Any:
    """An lxml tree of an HTML page: UTF-8 when the bytes are UTF-8 (libxml2 would take a page
    without a charset for Latin-1), else the encoding its meta charset names."""
    import lxml.html

    if isinstance(data, bytes):
        if not data.strip():
            raise ValueError("empty document")
        try:
            data = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            return lxml.html.document_fromstring(data)
    # lxml refuses text that still declares an encoding.
    return lxml.html.document_fromstring(_XML_DECLARATION.sub("", data, count=1))


# --------------------------------------------------------------------------------------------------
# web pages
# --------------------------------------------------------------------------------------------------


def _article(data: bytes | str) -> tuple[Any | None, Any]:
    """(trafilatura's article as an lxml tree or None, its metadata document or None)."""
    import trafilatura

    document = trafilatura.extract_with_metadata(
        data,
        output_format="html",
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
        include_formatting=False,
        favor_recall=True,
        deduplicate=False,
    )
    if document is None or not document.text:
        return None, document
    return parse_html_bytes(document.text), document


def _without_boilerplate(tree: Any) -> Any:
    """The page's <main> or <article> (else its body) without menus, banners and forms."""
    for element in list(tree.iter()):
        tag = _tag(element)
        role = (element.get("role") or "").lower() if tag else ""
        if tag in _BOILERPLATE_TAGS or role in _BOILERPLATE_ROLES:
            element.drop_tree()
    for name in ("main", "article"):
        found = tree.xpath(f"//*[local-name()='{name}']")
        if found:
            return found[0]
    body = tree.find("body")
    return body if body is not None else tree


def _page_metadata(tree: Any, document: Any, path: Path) -> DocumentMetadata:
    def meta(*names: str) -> str | None:
        for name in names:
            for element in tree.xpath(f"//meta[@name='{name}' or @property='{name}']"):
                content = (element.get("content") or "").strip()
                if content:
                    return content
        return None

    title_element = tree.find(".//title")
    page_title = title_element.text_content().strip() if title_element is not None else ""
    get = (lambda name: getattr(document, name, None) or None) if document is not None else None
    metadata = DocumentMetadata(
        title=(get and get("title")) or meta("og:title") or page_title or "",
        author=(get and get("author")) or meta("author", "article:author"),
        created=(get and get("date")) or meta("article:published_time", "date"),
        modified=meta("article:modified_time", "last-modified"),
    )
    for key in ("sitename", "description", "language", "license"):
        value = get and get(key)
        if value:
            metadata.extra[key] = str(value)
    lang = tree.get("lang")
    if lang and "language" not in metadata.extra:
        metadata.extra["language"] = lang
    return metadata


class HTMLParser(DocumentParser):
    """A web page (`.html`, `.htm`) as the sections of its article, with its metadata."""

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        data = read_document_bytes(path)
        if not data.strip():
            raise DocumentProcessingError(f"{path}: empty file; nothing to extract.")
        if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DocumentProcessingError(
                f"{path}: looks like binary data, not HTML; check that the file really is a web "
                "page, or remove it from the input folder."
            )
        warnings: list[str] = []
        try:
            tree = parse_html_bytes(data)
            # trafilatura drops superscripts and links: footnotes are marked before it reads.
            page: bytes | str = data
            if mark_footnotes(tree):
                import lxml.html

                page = lxml.html.tostring(tree, encoding="unicode")
            article, document = _article(page)
        except Exception as exc:  # lxml and trafilatura raise many kinds on broken markup
            raise DocumentProcessingError(
                f"{path}: not readable as HTML ({one_line(exc)})"
            ) from None
        if article is not None and len(article.text_content()) >= _MIN_ARTICLE_CHARS:
            items = html_items(article)
        else:
            # Below this size trafilatura falls back to all the text of the page, flattened;
            # the page's own structure, without its semantic boilerplate, is better.
            items = html_items(_without_boilerplate(tree))
            if article is None:
                warnings.append(
                    "no article found by trafilatura; read the whole page without its "
                    "navigation, header, footer and sidebars"
                )
        sections, first_title = build_sections(items)
        if not sections:
            raise DocumentProcessingError(
                f"{path}: has no text after cleaning (only markup, scripts or navigation); "
                "nothing to extract."
            )
        limit = settings.max_text_length
        sections, dropped = cut_sections(sections, limit)
        if dropped:
            warnings.append(cut_warning(limit + dropped, limit))
        metadata = _page_metadata(tree, document, path)
        metadata.title = metadata.title or first_title or path.stem
        return ParsedDocument(
            source=source,
            doc_type="html",
            metadata=metadata,
            sections=sections,
            warnings=warnings,
        )
