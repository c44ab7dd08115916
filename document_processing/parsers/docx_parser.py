"""Word files (`.docx`): paragraphs under their headings, tables as rows, lists, footnotes.

python-docx opens the package (core properties: title, author, created, modified) and resolves
styles; the body is read in order from its XML, so content controls, tracked insertions and text
boxes are read and deleted text, field codes and the fallback copy of drawings are not. A
paragraph styled "Heading N" (or with an outline level) starts a section with its heading path; a
"Title" paragraph heads them all. List paragraphs keep a "- " or "1. " marker. Tables become
"a | b" rows (a one-column table is a box of paragraphs, read as paragraphs); the table of
contents is left out. Footnotes and endnotes are numbered where they are referenced ("[1]") and
their text closes the section that references them.

Bad input gets one line: an encrypted (password-protected) file, an old binary `.doc` under a
`.docx` name, a file that is not a zip archive, a damaged or truncated one (`zip_archive`), or a
zip without a Word document inside.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from document_processing.parsers.base import DocumentParser
from document_processing.parsers.sections import (
    Block,
    Heading,
    build_sections,
    cut_sections,
    one_line,
    table_rows,
)
from document_processing.parsers.text_parser import cut_warning
from document_processing.parsers.zip_archive import damaged_zip, is_zip_damage, zip_names
from document_processing.records import DocumentMetadata, ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError

_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
_OLE_MAGIC = (
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # compound file: .doc, or any encrypted Office file
)
_ENCRYPTED_STREAM = "EncryptedPackage".encode("utf-16-le")
_HEADING_STYLE = re.compile(r"heading\s*([1-9])$", re.IGNORECASE)
_TOC_STYLE = re.compile(r"toc\s*\d|table of contents|toc heading", re.IGNORECASE)
_BODY_TEXT_OUTLINE = 9  # w:outlineLvl 9 means body text
_ORDERED_FORMATS_EXCLUDED = ("bullet", "none")
_FIX_ZIP = (
    "get a fresh copy (download or copy it again), or let Word or LibreOffice repair it and "
    "save it again."
)


def _w(name: str) -> str:
    return f"{{{_W}}}{name}"


# Elements whose text is not part of the document as a reader sees it: deleted text of tracked
# changes, field codes (the result of a field is read), the fallback copy of a drawing, comments.
_SKIPPED = {_w("delText"), _w("instrText"), f"{{{_MC}}}Fallback", _w("commentReference")}


def _check_package(path: Path) -> None:
    """One clear reason for a file that python-docx cannot read as a Word document."""
    try:
        with path.open("rb") as stream:
            head = stream.read(8)
    except OSError as exc:
        raise DocumentProcessingError(
            f"{path}: cannot be read ({exc.strerror or exc}); check that it exists and is readable."
        ) from None
    if not head:
        raise DocumentProcessingError(f"{path}: empty file (0 bytes); nothing to extract.")
    if head == _OLE_MAGIC:
        if _ENCRYPTED_STREAM in path.read_bytes():
            raise DocumentProcessingError(
                f"{path}: the Word file is password-protected (encrypted); save a copy without "
                "a password (File > Info > Protect Document) and extract that."
            )
        raise DocumentProcessingError(
            f"{path}: an old binary Word document (.doc) with a .docx name; save it as .docx "
            "in Word or LibreOffice (soffice --convert-to docx)."
        )
    names = zip_names(
        path,
        "not a Word document (a .docx is a zip archive and this file is not one); check what "
        "the file really is.",
        _FIX_ZIP,
    )
    if "word/document.xml" not in names:
        kind = (
            "an Excel workbook"
            if "xl/workbook.xml" in names
            else "a PowerPoint presentation"
            if "ppt/presentation.xml" in names
            else "an OpenDocument file"
            if "content.xml" in names
            else "a zip archive"
        )
        raise DocumentProcessingError(
            f"{path}: {kind} with a .docx name, not a Word document (no word/document.xml)"
        )


@dataclass
class _Numbering:
    """List formats from numbering.xml: (numId, level) -> whether the list is numbered."""

    ordered: dict[tuple[str, int], bool] = field(default_factory=dict)
    starts: dict[tuple[str, int], int] = field(default_factory=dict)
    counters: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def read(cls, document: Any) -> _Numbering:
        numbering = cls()
        try:
            root = document.part.numbering_part.element
        except (KeyError, NotImplementedError, AttributeError):
            return numbering
        abstract = {a.get(_w("abstractNumId")): a for a in root.findall(_w("abstractNum"))}
        for num in root.findall(_w("num")):
            num_id = num.get(_w("numId"))
            ref = num.find(_w("abstractNumId"))
            definition = abstract.get(ref.get(_w("val"))) if ref is not None else None
            if definition is None:
                continue
            for level in definition.findall(_w("lvl")):
                ilvl = int(level.get(_w("ilvl"), "0"))
                fmt = level.find(_w("numFmt"))
                start = level.find(_w("start"))
                value = fmt.get(_w("val")) if fmt is not None else "decimal"
                numbering.ordered[(num_id, ilvl)] = value not in _ORDERED_FORMATS_EXCLUDED
                numbering.starts[(num_id, ilvl)] = (
                    int(start.get(_w("val"), "1")) if start is not None else 1
                )
        return numbering

    def marker(self, num_id: str, level: int) -> str:
        key = (num_id, level)
        if not self.ordered.get(key, False):
            return "-"
        for other in [k for k in self.counters if k[0] == num_id and k[1] > level]:
            del self.counters[other]  # a deeper list restarts after its parent item
        self.counters[key] = self.counters.get(key, self.starts.get(key, 1) - 1) + 1
        return f"{self.counters[key]}."


@dataclass
class _Notes:
    """Footnote and endnote texts by (kind, id); numbered in the order they are referenced."""

    texts: dict[tuple[str, str], str] = field(default_factory=dict)
    numbers: dict[tuple[str, str], int] = field(default_factory=dict)
    pending: list[int] = field(default_factory=list)  # referenced, not yet written out
    by_number: dict[int, str] = field(default_factory=dict)

    @classmethod
    def read(cls, document: Any) -> _Notes:
        from docx.opc.constants import RELATIONSHIP_TYPE as RT
        from lxml import etree

        notes = cls()
        for rel in document.part.rels.values():
            kind = {RT.FOOTNOTES: "footnote", RT.ENDNOTES: "endnote"}.get(rel.reltype)
            if kind is None or rel.is_external:
                continue
            root = etree.fromstring(rel.target_part.blob)
            for note in root.findall(_w(kind)):
                if note.get(_w("type")) in ("separator", "continuationSeparator"):
                    continue
                paragraphs = [_paragraph_text(p, None) for p in note.iter(_w("p"))]
                notes.texts[(kind, note.get(_w("id")))] = " ".join(p for p in paragraphs if p)
        return notes

    def reference(self, kind: str, note_id: str | None) -> str:
        key = (kind, note_id or "")
        if key not in self.texts:
            return ""
        if key not in self.numbers:
            number = len(self.numbers) + 1
            self.numbers[key] = number
            self.by_number[number] = self.texts[key]
            self.pending.append(number)
        return f"[{self.numbers[key]}]"

    def flush(self) -> Block | None:
        if not self.pending:
            return None
        lines = [f"[{number}] {self.by_number[number]}" for number in self.pending]
        self.pending = []
        return Block("prose", "\n".join(lines))


def _paragraph_text(paragraph: Any, notes: _Notes | None) -> str:
    """The text of a w:p as a reader sees it (tabs, breaks and note markers included)."""
    parts: list[str] = []
    stack = [iter(paragraph)]
    while stack:
        element = next(stack[-1], None)
        if element is None:
            stack.pop()
            continue
        tag = element.tag
        if not isinstance(tag, str) or tag in _SKIPPED:
            continue
        if tag == _w("t"):
            parts.append(element.text or "")
        elif tag == _w("tab"):
            parts.append("\t")
        elif tag in (_w("br"), _w("cr")):
            parts.append("\n")
        elif tag == _w("noBreakHyphen"):
            parts.append("-")
        elif tag == _w("softHyphen"):
            parts.append("\u00ad")
        elif tag in (_w("footnoteReference"), _w("endnoteReference")):
            kind = "footnote" if tag == _w("footnoteReference") else "endnote"
            if notes is not None:
                parts.append(notes.reference(kind, element.get(_w("id"))))
        elif tag == _w("p") and element is not paragraph:  # a text box's paragraph
            parts.append("\n")
            stack.append(iter(element))
        else:
            stack.append(iter(element))
    return "".join(parts)


class _StyleInfo:
    """Heading level, list numbering and TOC-ness of paragraph styles, by style id (cached).

    Read from styles.xml directly: python-docx's style objects cost a millisecond each.
    """

    def __init__(self, document: Any) -> None:
        styles = document.styles.element.findall(_w("style"))
        self.by_id = {style.get(_w("styleId")): style for style in styles}
        self.default = next(
            (
                style
                for style in styles
                if style.get(_w("type")) == "paragraph"
                and style.get(_w("default")) in ("1", "true", "on")
            ),
            None,
        )
        self.cache: dict[str | None, tuple[int | None, tuple[str, int] | None, bool]] = {}

    def of(self, style_id: str | None) -> tuple[int | None, tuple[str, int] | None, bool]:
        if style_id not in self.cache:
            style = self.default if style_id is None else self.by_id.get(style_id)
            self.cache[style_id] = self._resolve(style)
        return self.cache[style_id]

    def _resolve(self, style: Any) -> tuple[int | None, tuple[str, int] | None, bool]:
        if style is None:
            return None, None, False
        level: int | None = None
        numbering: tuple[str, int] | None = None
        current, seen = style, 0
        while current is not None and seen < 20:  # basedOn chains; a loop is not followed
            name = _val(current.find(_w("name"))).strip()
            if level is None:
                match = _HEADING_STYLE.match(name)
                if match:
                    level = int(match.group(1))
                elif name.lower() == "title":
                    level = 0
                else:
                    outline = current.find(f"{_w('pPr')}/{_w('outlineLvl')}")
                    if outline is not None:
                        value = int(_val(outline) or _BODY_TEXT_OUTLINE)
                        level = value + 1 if value < _BODY_TEXT_OUTLINE else None
            if numbering is None:
                numbering = _num_pr(current.find(_w("pPr")))
            current = self.by_id.get(_val(current.find(_w("basedOn"))) or None)
            seen += 1
        name = _val(style.find(_w("name")))
        return level, numbering, bool(_TOC_STYLE.match(name.strip()))


def _val(element: Any) -> str:
    return (element.get(_w("val")) or "") if element is not None else ""


def _num_pr(ppr: Any) -> tuple[str, int] | None:
    if ppr is None:
        return None
    num_pr = ppr.find(_w("numPr"))
    if num_pr is None:
        return None
    num_id = num_pr.find(_w("numId"))
    ilvl = num_pr.find(_w("ilvl"))
    if num_id is None or num_id.get(_w("val")) in (None, "0"):
        return None
    return num_id.get(_w("val")), int(ilvl.get(_w("val"), "0")) if ilvl is not None else 0


@dataclass
class _BodyReader:
    styles: _StyleInfo
    numbering: _Numbering
    notes: _Notes
    items: list[Heading | Block] = field(default_factory=list)
    in_list: bool = False

    def block(self, container: Any) -> None:
        for child in container:
            tag = child.tag
            if tag == _w("p"):
                self.paragraph(child)
            elif tag == _w("tbl"):
                self.table(child)
            elif tag == _w("sdt"):
                if not _is_toc(child):
                    content = child.find(_w("sdtContent"))
                    if content is not None:
                        self.block(content)
            elif tag in (_w("customXml"), _w("ins"), _w("smartTag")):
                self.block(child)

    def paragraph(self, p: Any) -> None:
        ppr = p.find(_w("pPr"))
        style = ppr.find(_w("pStyle")) if ppr is not None else None
        level, style_numbering, is_toc = self.styles.of(
            style.get(_w("val")) if style is not None else None
        )
        if is_toc:
            return
        own_outline = ppr.find(_w("outlineLvl")) if ppr is not None else None
        if own_outline is not None:
            value = int(own_outline.get(_w("val"), _BODY_TEXT_OUTLINE))
            level = value + 1 if value < _BODY_TEXT_OUTLINE else None
        text = _paragraph_text(p, self.notes)
        if not text.strip():
            return
        if level is not None:
            self.close_notes()
            self.in_list = False
            self.items.append(Heading(level, text))
            return
        numbering = _num_pr(ppr) or style_numbering
        if numbering is not None:
            marker = self.numbering.marker(*numbering)
            self.items.append(Block("prose", f"{marker} {text}", tight=self.in_list))
            self.in_list = True
            return
        self.in_list = False
        self.items.append(Block("prose", text))

    def table(self, tbl: Any) -> None:
        rows = tbl.findall(_w("tr"))
        cells_per_row = [row.findall(_w("tc")) for row in rows]
        self.in_list = False
        if all(len(cells) <= 1 for cells in cells_per_row):  # a box around paragraphs
            for cells in cells_per_row:
                for cell in cells:
                    self.block(cell)
            return
        table = [
            [" ".join(_paragraph_text(p, self.notes) for p in cell.iter(_w("p"))) for cell in cells]
            for cells in cells_per_row
        ]
        text = table_rows(table)
        if text:
            self.items.append(Block("table", text))

    def close_notes(self) -> None:
        block = self.notes.flush()
        if block is not None:
            self.items.append(block)


def _is_toc(sdt: Any) -> bool:
    gallery = sdt.find(f"{_w('sdtPr')}/{_w('docPartObj')}/{_w('docPartGallery')}")
    return gallery is not None and "contents" in (gallery.get(_w("val")) or "").lower()


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _metadata(document: Any, fallback_title: str) -> DocumentMetadata:
    properties = document.core_properties
    metadata = DocumentMetadata(
        title=(properties.title or "").strip() or fallback_title,
        author=(properties.author or "").strip() or None,
        created=_iso(properties.created),
        modified=_iso(properties.modified),
    )
    for key in ("subject", "keywords", "language", "category", "comments"):
        value = (getattr(properties, key, None) or "").strip()
        if value:
            metadata.extra[key] = value
    return metadata


class DocxParser(DocumentParser):
    """A Word document (`.docx`) as one section per heading, with its core properties."""

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        _check_package(path)
        import docx

        try:
            document = docx.Document(str(path))
            reader = _BodyReader(
                _StyleInfo(document), _Numbering.read(document), _Notes.read(document)
            )
            reader.block(document.element.body)
            reader.close_notes()
        except DocumentProcessingError:
            raise
        except Exception as exc:  # python-docx and lxml raise many kinds on damaged packages
            if is_zip_damage(exc):
                raise damaged_zip(path, _FIX_ZIP) from None
            raise DocumentProcessingError(
                f"{path}: corrupt Word document ({one_line(exc)})"
            ) from None
        sections, first_title = build_sections(reader.items)
        if not sections:
            raise DocumentProcessingError(
                f"{path}: has no text (only headings, images or empty paragraphs); nothing to "
                "extract."
            )
        warnings: list[str] = []
        limit = settings.max_text_length
        sections, dropped = cut_sections(sections, limit)
        if dropped:
            warnings.append(cut_warning(limit + dropped, limit))
        return ParsedDocument(
            source=source,
            doc_type="docx",
            metadata=_metadata(document, first_title or path.stem),
            sections=sections,
            warnings=warnings,
        )
