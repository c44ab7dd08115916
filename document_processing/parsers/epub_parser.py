"""EPUB books (`.epub`): chapters in reading order, sections under their headings.

ebooklib reads the package: its Dublin Core metadata (title, creators, date, language, publisher)
and its spine, the reading order of the chapters. Each chapter is XHTML, read with the HTML
walker of `html_parser` (headings start sections with their heading path, tables become rows,
lists keep their markers, footnote markers read "[1]" as in Word files, footnote asides stay as
text, page-break markers and the navigation document are left out). A chapter without headings
is headed by its title in the table of contents.

Bad input gets one line: not a zip archive, a damaged or truncated one (`zip_archive`), a zip
without an EPUB package, and DRM (encrypted chapters, which would read as noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from document_processing.parsers.base import DocumentParser
from document_processing.parsers.html_parser import html_items, mark_footnotes, parse_html_bytes
from document_processing.parsers.sections import (
    Block,
    Heading,
    build_sections,
    cut_sections,
    one_line,
)
from document_processing.parsers.text_parser import cut_warning
from document_processing.parsers.zip_archive import (
    damaged_zip,
    is_zip_damage,
    zip_member,
    zip_names,
)
from document_processing.records import DocumentMetadata, ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError

_ENCRYPTION = "META-INF/encryption.xml"
_CHAPTER_SUFFIXES = (".xhtml", ".html", ".htm", ".xml")
_FIX_ZIP = (
    "get a fresh copy (download or copy it again), or export it again from the program that "
    "made it."
)


def _check_archive(path: Path) -> None:
    """One clear reason for a file that is not a readable, DRM-free EPUB."""
    names = zip_names(
        path,
        "not an EPUB book (an .epub is a zip archive and this file is not one); check what the "
        "file really is.",
        _FIX_ZIP,
    )
    encryption = zip_member(path, _ENCRYPTION, _FIX_ZIP) if _ENCRYPTION in names else b""
    if "META-INF/container.xml" not in names:
        raise DocumentProcessingError(
            f"{path}: a zip archive with an .epub name but no EPUB package "
            "(META-INF/container.xml is missing)"
        )
    if _encrypted_chapters(encryption):
        raise DocumentProcessingError(
            f"{path}: the book's chapters are encrypted (DRM); only DRM-free EPUB files can be "
            "read."
        )


def _encrypted_chapters(encryption: bytes) -> bool:
    """Whether encryption.xml covers chapters (font obfuscation alone is harmless)."""
    if not encryption:
        return False
    from lxml import etree

    try:
        root = etree.fromstring(encryption)
    except etree.XMLSyntaxError:
        return False
    uris = [
        element.get("URI", "")
        for element in root.iter()
        if isinstance(element.tag, str) and element.tag.endswith("CipherReference")
    ]
    return any(uri.lower().endswith(_CHAPTER_SUFFIXES) for uri in uris)


def _toc_titles(entries: Any, titles: dict[str, str]) -> dict[str, str]:
    """File name -> its first title in the table of contents (nested entries included)."""
    for entry in entries:
        if isinstance(entry, tuple):  # (Section, [children])
            section, children = entry
            _add_toc_title(section, titles)
            _toc_titles(children, titles)
        else:
            _add_toc_title(entry, titles)
    return titles


def _add_toc_title(entry: Any, titles: dict[str, str]) -> None:
    href = (getattr(entry, "href", "") or "").split("#", 1)[0]
    title = (getattr(entry, "title", "") or "").strip()
    if href and title:
        titles.setdefault(href, title)


def _dc(book: Any, name: str) -> list[str]:
    return [str(value).strip() for value, _ in book.get_metadata("DC", name) if value]


def _metadata(book: Any, fallback_title: str, chapters: int) -> DocumentMetadata:
    titles, creators, dates = _dc(book, "title"), _dc(book, "creator"), _dc(book, "date")
    metadata = DocumentMetadata(
        title=titles[0] if titles else fallback_title,
        author=", ".join(creators) or None,
        created=dates[0] if dates else None,
    )
    for key in ("language", "publisher", "subject", "description", "rights"):
        values = _dc(book, key)
        if values:
            metadata.extra[key] = ", ".join(values)
    metadata.extra["chapters"] = str(chapters)
    return metadata


class EpubParser(DocumentParser):
    """An EPUB book as one section per heading, chapters in reading order."""

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        _check_archive(path)
        import ebooklib
        from ebooklib import epub

        warnings: list[str] = []
        items: list[Heading | Block] = []
        try:
            book = epub.read_epub(str(path), options={"ignore_ncx": False})
            toc = _toc_titles(book.toc, {})
            chapters = 0
            for idref, _linear in book.spine:
                item = book.get_item_with_id(idref)
                if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
                    continue
                if isinstance(item, epub.EpubNav):
                    continue
                chapter = self._chapter(item, toc, warnings)
                chapters += bool(chapter)
                items.extend(chapter)
        except DocumentProcessingError:
            raise
        except Exception as exc:  # ebooklib raises many kinds on damaged books
            if is_zip_damage(exc):
                raise damaged_zip(path, _FIX_ZIP) from None
            raise DocumentProcessingError(f"{path}: corrupt EPUB book ({one_line(exc)})") from None
        sections, first_title = build_sections(items)
        if not sections:
            raise DocumentProcessingError(
                f"{path}: has no text in its chapters (only images or markup); nothing to extract."
            )
        limit = settings.max_text_length
        sections, dropped = cut_sections(sections, limit)
        if dropped:
            warnings.append(cut_warning(limit + dropped, limit))
        return ParsedDocument(
            source=source,
            doc_type="epub",
            metadata=_metadata(book, first_title or path.stem, chapters),
            sections=sections,
            warnings=warnings,
        )

    @staticmethod
    def _chapter(item: Any, toc: dict[str, str], warnings: list[str]) -> list[Heading | Block]:
        name = item.get_name()
        try:
            root = parse_html_bytes(item.get_content())
        except ValueError:  # an empty chapter
            return []
        except Exception as exc:
            warnings.append(f"chapter {name} is not readable XHTML ({one_line(exc)}); left out")
            return []
        mark_footnotes(root)
        body = root.find("body")
        chapter = html_items(body if body is not None else root)
        if not any(isinstance(entry, Block) for entry in chapter):
            return []
        if not any(isinstance(entry, Heading) for entry in chapter):
            # Its title in the table of contents; without one, an empty heading, so the chapter
            # is not filed under the headings of the chapter before it.
            chapter.insert(0, Heading(1, toc.get(name) or toc.get(Path(name).name) or ""))
        return chapter
