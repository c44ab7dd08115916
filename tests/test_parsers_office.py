"""Word, HTML and EPUB input: fixtures written here with python-docx, ebooklib and plain text,
read into sections with heading paths, tables as rows, lists, footnotes and metadata; bad input
fails with one line and the rest of the run goes on."""

from __future__ import annotations

import datetime as dt
import json
import struct
import zipfile
from pathlib import Path

import pytest

from document_processing.parsers import SUPPORTED_SUFFIXES, parser_for
from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError


def _parse(path: Path) -> ParsedDocument:
    return parser_for(path).parse(path, path.name, DocumentProcessingConfig())


def _paths(document: ParsedDocument) -> list[tuple[list[str], str]]:
    return [(section.heading_path, section.text) for section in document.sections]


# --------------------------------------------------------------------------------------------------
# Word
# --------------------------------------------------------------------------------------------------

_FOOTNOTES_XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<w:footnotes xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    '<w:footnote w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:footnote>'
    '<w:footnote w:id="1"><w:p><w:r><w:t>Red wigglers, Eisenia fetida.</w:t></w:r></w:p>'
    "</w:footnote></w:footnotes>"
)


def _add_footnotes_part(path: Path) -> None:
    """python-docx writes no footnotes: add the part, its relationship and its content type."""
    with zipfile.ZipFile(path) as source:
        files = {name: source.read(name) for name in source.namelist()}
    files["word/footnotes.xml"] = _FOOTNOTES_XML.encode()
    files["word/_rels/document.xml.rels"] = files["word/_rels/document.xml.rels"].replace(
        b"</Relationships>",
        b'<Relationship Id="rIdFootnotes" Target="footnotes.xml" Type="http://schemas.'
        b'openxmlformats.org/officeDocument/2006/relationships/footnotes"/></Relationships>',
    )
    files["[Content_Types].xml"] = files["[Content_Types].xml"].replace(
        b"</Types>",
        b'<Override PartName="/word/footnotes.xml" ContentType="application/vnd.openxmlformats-'
        b'officedocument.wordprocessingml.footnotes+xml"/></Types>',
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        for name, data in files.items():
            target.writestr(name, data)


def write_docx(path: Path) -> Path:
    import docx
    from docx.oxml import OxmlElement
    from docx.oxml.ns import qn

    document = docx.Document()
    properties = document.core_properties
    properties.title = "Worm Bin Manual"
    properties.author = "Ann Gardener"
    properties.created = dt.datetime(2024, 3, 5, 10, 30)
    properties.keywords = "compost, worms"
    document.add_paragraph("Worm Bins", style="Title")
    document.add_paragraph("A short manual for the kitchen.")
    document.add_heading("Setting up", level=1)
    paragraph = document.add_paragraph("Use red worms")
    reference = OxmlElement("w:footnoteReference")
    reference.set(qn("w:id"), "1")
    paragraph.add_run()._r.append(reference)
    paragraph.add_run(" in a bin thirty centimetres deep.")
    deleted = OxmlElement("w:del")
    deleted_run = OxmlElement("w:r")
    deleted_text = OxmlElement("w:delText")
    deleted_text.text = " Tracked deletion never shown."
    deleted_run.append(deleted_text)
    deleted.append(deleted_run)
    paragraph._p.append(deleted)
    document.add_heading("Bedding", level=2)
    for item in ("Shredded cardboard", "Garden soil"):
        document.add_paragraph(item, style="List Bullet")
    for item in ("Soak the bedding", "Add the worms"):
        document.add_paragraph(item, style="List Number")
    document.add_heading("Feeding", level=1)
    table = document.add_table(rows=3, cols=2)
    rows = (("Food", "Weekly"), ("Peelings", "yes"), ("Meat", "no"))
    for row, cells in zip(table.rows, rows, strict=True):
        for cell, text in zip(row.cells, cells, strict=True):
            cell.text = text
    document.add_paragraph("Bury each feeding.")
    document.save(str(path))
    _add_footnotes_part(path)
    return path


def test_docx_sections_lists_tables_footnotes_and_metadata(tmp_path: Path) -> None:
    document = _parse(write_docx(tmp_path / "manual.docx"))
    assert document.doc_type == "docx"
    metadata = document.metadata
    assert (metadata.title, metadata.author) == ("Worm Bin Manual", "Ann Gardener")
    assert metadata.created == "2024-03-05T10:30:00+00:00"  # W3CDTF in UTC
    assert metadata.extra["keywords"] == "compost, worms"
    assert _paths(document) == [
        (["Worm Bins"], "A short manual for the kitchen."),
        (
            ["Worm Bins", "Setting up"],
            "Use red worms[1] in a bin thirty centimetres deep.\n\n"
            "[1] Red wigglers, Eisenia fetida.",
        ),
        (
            ["Worm Bins", "Setting up", "Bedding"],
            "- Shredded cardboard\n- Garden soil\n1. Soak the bedding\n2. Add the worms",
        ),
        (
            ["Worm Bins", "Feeding"],
            "Food | Weekly\nPeelings | yes\nMeat | no\n\nBury each feeding.",
        ),
    ]
    feeding = document.sections[-1]
    start, end = feeding.protected[0]
    assert feeding.text[start:end] == "Food | Weekly\nPeelings | yes\nMeat | no"


def _ole_file(path: Path, encrypted: bool) -> Path:
    """The start of a compound file (what Word writes for .doc and for any encrypted file)."""
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    stream = "EncryptedPackage" if encrypted else "WordDocument"
    path.write_bytes(header + stream.encode("utf-16-le") + bytes(1024))
    return path


def _truncated(source: Path) -> Path:
    """The first half of `source`, as an interrupted download leaves it: member headers at the
    start, the zip directory at the end gone."""
    path = source.with_name(f"truncated{source.suffix}")
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return path


def _damaged(source: Path, member: str) -> Path:
    """A copy of `source` with the first 32 bytes of `member`'s compressed data inverted; its
    header and the zip directory are intact, so the damage shows only when it is read."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo(member)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    for index in range(start, start + min(32, info.compress_size)):
        data[index] ^= 0xFF
    path = source.with_name(f"damaged{source.suffix}")
    path.write_bytes(bytes(data))
    return path


def _truncated_docx(tmp_path: Path) -> Path:
    return _truncated(write_docx(tmp_path / "whole.docx"))


def _damaged_docx(tmp_path: Path) -> Path:
    return _damaged(write_docx(tmp_path / "whole.docx"), "word/document.xml")


def _workbook(tmp_path: Path) -> Path:
    path = tmp_path / "sheet.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: _ole_file(d / "locked.docx", True), "password-protected (encrypted)"),
        (lambda d: _ole_file(d / "old.docx", False), "an old binary Word document (.doc)"),
        (lambda d: _write(d / "notes.docx", b"just some text\n"), "not a Word document"),
        (_truncated_docx, "a damaged or truncated zip archive (the file was cut short"),
        (_damaged_docx, "(the compressed data of word/document.xml is corrupt); get a fresh"),
        (_workbook, "an Excel workbook with a .docx name"),
        (lambda d: _write(d / "empty.docx", b""), "empty file"),
    ],
)
def test_bad_docx_is_one_line_naming_the_reason(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(DocumentProcessingError) as caught:
        _parse(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

ARTICLE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Worm bins | Garden Site</title>
<meta name="author" content="Ann Gardener">
<meta property="article:published_time" content="2024-03-05T10:00:00Z">
<style>body { color: red }</style><script>var tracking = "scriptword";</script></head>
<body>
<header><div class="logo">GardenSite</div>
<nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shopmenu</a></li></ul></nav></header>
<aside class="sidebar"><h3>Popular posts</h3><ul><li><a href="/t">Sidebarword tomatoes</a></li>
<li><a href="/r">Sidebarword roses</a></li></ul></aside>
<main><article>
<h1>Building a worm bin</h1>
<p>A worm bin turns kitchen scraps into castings. The container should be about thirty
centimetres deep, because redworms feed near the surface and avoid the deep layers.</p>
<h2>Materials</h2>
<p>You need a plastic tub, shredded cardboard for bedding, and garden soil for grit.</p>
<ul><li>Plastic tub with a lid</li><li>Shredded cardboard bedding</li></ul>
<h2>Feeding schedule</h2>
<table><thead><tr><th>Week</th><th>Food</th></tr></thead>
<tbody><tr><td>1</td><td>Coffee grounds</td></tr><tr><td>2</td><td>Vegetable peelings</td></tr>
</tbody></table>
<pre><code>ratio = browns / greens
print(ratio)</code></pre>
<p>Harvest the castings after three months by moving the bedding to one side of the bin.</p>
</article></main>
<footer><p>Copyright 2024 GardenSite footerword. <a href="/privacy">Privacy</a></p></footer>
</body></html>
"""


def test_web_page_gives_its_article_not_its_menus(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(ARTICLE, encoding="utf-8")
    document = _parse(path)
    assert document.doc_type == "html"
    assert (document.metadata.title, document.metadata.author) == (
        "Building a worm bin",
        "Ann Gardener",
    )
    assert document.metadata.created == "2024-03-05"
    text = document.text
    for boilerplate in ("scriptword", "Shopmenu", "Sidebarword", "footerword", "color: red"):
        assert boilerplate not in text
    materials, feeding = document.sections[1], document.sections[2]
    assert materials.heading_path == ["Building a worm bin", "Materials"]
    assert materials.text.endswith("- Plastic tub with a lid\n- Shredded cardboard bedding")
    assert feeding.heading_path == ["Building a worm bin", "Feeding schedule"]
    assert [feeding.text[a:b] for a, b in feeding.protected] == [
        "Week | Food\n1 | Coffee grounds\n2 | Vegetable peelings",
        "```\nratio = browns / greens\nprint(ratio)\n```",
    ]
    assert feeding.text.endswith("moving the bedding to one side of the bin.")


def test_short_page_without_an_article_is_read_without_navigation(tmp_path: Path) -> None:
    path = tmp_path / "short.htm"
    path.write_bytes(
        b"<html><head><meta charset='windows-1252'></head><body>"
        b"<nav>Menu</nav><ol start='3'><li>caf\xe9</li><li>na\xefve</li></ol></body></html>"
    )
    document = _parse(path)
    assert document.text == "3. café\n4. naïve"
    assert document.metadata.title == "short"


# A page with footnotes in the common forms: Python-Markdown's, Pandoc's and Wikipedia's; `{tag}`
# holds the text, `{lead}` a sentence that makes it long enough to be trafilatura's article.
FOOTNOTES = """<html><head><title>Orchard notes</title></head><body>
<nav><a href="/">Home</a> <a href="/blog">Blog</a></nav>
<{tag}><h1>Orchard notes</h1>
<p>{lead}Apple trees tolerate some shade<sup id="fnref:1"><a class="footnote-ref" href="#fn:1">1</a>
</sup>. Pears want full sun<a href="#fn2" class="footnote-ref" id="fnref2" role="doc-noteref"><sup>2
</sup></a>, and plums crop best on a south wall<sup id="cite_ref-3" class="reference"><a
href="#cite_note-3"><span class="cite-bracket">[</span>3<span class="cite-bracket">]</span></a>
</sup>.</p>
<div class="footnote"><hr><ol>
<li id="fn:1"><p>Half a day of sun is enough.&#160;<a class="footnote-backref" href="#fnref:1"
title="Jump back to footnote 1 in the text">&#8617;</a></p></li>
<li id="fn2"><p>Six hours a day.<a href="#fnref2" class="footnote-back"
role="doc-backlink">\u21a9\ufe0e</a></p></li></ol></div>
<ol class="references"><li id="cite_note-3"><span class="mw-cite-backlink"><b><a
href="#cite_ref-3">^</a></b></span> <span class="reference-text">Smith, Fruit Walls, 1901.</span>
</li></ol>
</{tag}><footer>Copyright footerword</footer></body></html>
"""
PRUNING = (
    "The orchard trees need careful pruning in late winter, before the buds open, so that the "
    "light reaches every branch in summer and the fruit ripens evenly across the whole crown. "
)


@pytest.mark.parametrize(("tag", "lead"), [("article", PRUNING), ("div", "")])
def test_html_footnotes_read_as_in_word_files(tmp_path: Path, tag: str, lead: str) -> None:
    """Markers read "[1]", the notes "[1] text", without their links back, both from
    trafilatura's article and from the fallback that reads a short page whole."""
    path = tmp_path / "notes.html"
    path.write_text(FOOTNOTES.format(tag=tag, lead=lead), encoding="utf-8")
    text = _parse(path).text
    assert "shade[1]. Pears want full sun[2], and plums crop best on a south wall[3]." in text
    assert text.endswith(
        "[1] Half a day of sun is enough.\n\n[2] Six hours a day.\n\n[3] Smith, Fruit Walls, 1901."
    )
    assert "\u21a9" not in text and "^" not in text


def test_html_without_text_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "blank.html"
    path.write_text("<html><script>only()</script><nav>Menu</nav></html>", encoding="utf-8")
    with pytest.raises(DocumentProcessingError, match=r"blank\.html: has no text"):
        _parse(path)


# --------------------------------------------------------------------------------------------------
# EPUB
# --------------------------------------------------------------------------------------------------


def write_epub(path: Path) -> Path:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("worm-book-1")
    book.set_title("The Worm Book")
    book.set_language("en")
    book.add_author("Ann Gardener")
    book.add_author("Bob Digger")
    book.add_metadata("DC", "date", "2023-06-01")
    one = epub.EpubHtml(title="Getting started", file_name="one.xhtml", lang="en")
    one.content = (
        "<html><body><h1>Getting started</h1><p>Worms eat scraps.</p>"
        "<h2>The bin</h2><p>Thirty centimetres deep.</p>"
        "<table><tr><th>Part</th><th>Size</th></tr><tr><td>Lid</td><td>40 cm</td></tr></table>"
        '<p>Drill holes.<a epub:type="noteref" href="#n1">1</a></p>'
        '<span epub:type="pagebreak" title="12"/>'
        '<aside epub:type="footnote" id="n1"><p>1. Eight millimetres.</p></aside></body></html>'
    )
    two = epub.EpubHtml(title="Harvest time", file_name="two.xhtml", lang="en")
    two.content = "<html><body><p>Castings are ready after three months.</p></body></html>"
    for chapter in (one, two):
        book.add_item(chapter)
    book.toc = (
        epub.Link("one.xhtml", "Getting started", "one"),
        epub.Link("two.xhtml", "Harvest time", "two"),
    )
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", one, two]
    epub.write_epub(str(path), book)
    return path


def test_epub_chapters_in_reading_order_with_metadata(tmp_path: Path) -> None:
    document = _parse(write_epub(tmp_path / "book.epub"))
    assert document.doc_type == "epub"
    metadata = document.metadata
    assert metadata.title == "The Worm Book"
    assert metadata.author == "Ann Gardener, Bob Digger"
    assert metadata.created == "2023-06-01"
    assert metadata.extra["language"] == "en" and metadata.extra["chapters"] == "2"
    assert _paths(document) == [
        (["Getting started"], "Worms eat scraps."),
        (
            ["Getting started", "The bin"],
            "Thirty centimetres deep.\n\nPart | Size\nLid | 40 cm\n\nDrill holes.[1]\n\n"
            "1. Eight millimetres.",
        ),
        (["Harvest time"], "Castings are ready after three months."),
    ]
    assert "Table of Contents" not in document.text  # the navigation document is left out


def test_drm_epub_and_non_epub_are_one_line(tmp_path: Path) -> None:
    book = write_epub(tmp_path / "book.epub")
    locked = tmp_path / "locked.epub"
    with zipfile.ZipFile(book) as source, zipfile.ZipFile(locked, "w") as target:
        for name in source.namelist():
            target.writestr(name, source.read(name))
        target.writestr(
            "META-INF/encryption.xml",
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData><enc:CipherData>'
            '<enc:CipherReference URI="EPUB/one.xhtml"/></enc:CipherData></enc:EncryptedData>'
            "</encryption>",
        )
    with pytest.raises(DocumentProcessingError, match="encrypted \\(DRM\\)"):
        _parse(locked)
    fake = _write(tmp_path / "fake.epub", b"%PDF-1.4 not a book")
    with pytest.raises(DocumentProcessingError, match="not an EPUB book"):
        _parse(fake)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_truncated, "(the file was cut short: the zip directory at its end is missing)"),
        (
            lambda book: _damaged(book, "EPUB/one.xhtml"),
            "(the compressed data of EPUB/one.xhtml is corrupt)",
        ),
    ],
)
def test_truncated_or_damaged_epub_is_one_line_with_the_fix(
    tmp_path: Path, make, reason: str
) -> None:
    path = make(write_epub(tmp_path / "book.epub"))
    with pytest.raises(DocumentProcessingError) as caught:
        _parse(path)
    assert str(caught.value) == (
        f"{path}: a damaged or truncated zip archive {reason}; get a fresh copy (download or "
        "copy it again), or export it again from the program that made it."
    )


# --------------------------------------------------------------------------------------------------
# through the command
# --------------------------------------------------------------------------------------------------


def test_extract_reads_the_new_formats_and_reports_bad_ones(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    write_docx(docs / "manual.docx")
    write_epub(docs / "book.epub")
    (docs / "page.html").write_text(ARTICLE, encoding="utf-8")
    _ole_file(docs / "locked.docx", True)
    _write(docs / "notes.docx", b"plain text saved with the wrong name\n")
    _write(docs / "broken.epub", b"PK\x03\x04 truncated")
    _damaged(write_docx(docs / "whole.docx"), "word/document.xml")  # damaged.docx
    (docs / "whole.docx").unlink()
    out = tmp_path / "out"
    status, stdout, err = run_main("extract", docs, out, "--workers", "2", "--no-progress")
    assert status == 3, err  # some failed, the rest written
    report = json.loads((out / "extract_report.json").read_text(encoding="utf-8"))
    files = {entry["source"]: entry for entry in report["files"]}
    failed = {source: f["reason"] for source, f in files.items() if f["status"] == "failed"}
    assert set(failed) == {"locked.docx", "notes.docx", "broken.epub", "damaged.docx"}
    for source, reason in failed.items():
        assert f"failed: {source}: {reason}" in err and "\n" not in reason
        assert "Traceback" not in reason
    assert failed["broken.epub"].startswith("a damaged or truncated zip archive (the file was cut")
    assert failed["damaged.docx"].startswith("a damaged or truncated zip archive (the compressed")
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    by_type = {record["type"] for record in records}
    assert by_type == {"docx", "epub", "html"}
    assert any(
        record["metadata"]["section_path"] == ["Worm Bins", "Feeding"]
        and "Peelings | yes" in record["text"]
        for record in records
    )


def test_the_new_suffixes_are_registered() -> None:
    assert {".docx", ".html", ".htm", ".epub"} <= set(SUPPORTED_SUFFIXES)


def test_utf8_page_without_a_charset_is_read_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plain.html"  # short: read by the fallback, from our own tree
    path.write_bytes("<html><body><p>Naïve señor, déjà vu.</p></body></html>".encode())
    assert _parse(path).text == "Naïve señor, déjà vu."
