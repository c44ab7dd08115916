"""Text parser and the shared byte decoding: encodings, BOMs, bad bytes, binary and empty files."""

from __future__ import annotations

from pathlib import Path

import pytest

from document_processing.parsers.text_parser import TextParser, decode_bytes
from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError

SAMPLE = "café – naïve “quotes”"


def _parse(path: Path, settings: DocumentProcessingConfig | None = None) -> ParsedDocument:
    return TextParser().parse(path, f"sub/{path.name}", settings or DocumentProcessingConfig())


def _write_bytes(tmp_path: Path, data: bytes, name: str = "notes.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_utf8_text_becomes_one_cleaned_section(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, "First  line\nwrapped ﬁne.\n\n\nSecond para.\n".encode())
    document = _parse(path)
    assert document.source == "sub/notes.txt" and document.doc_type == "text"
    assert document.metadata.title == "notes"
    assert document.metadata.encoding == "utf-8"
    assert [section.text for section in document.sections] == [
        "First line wrapped fine.\n\nSecond para."
    ]
    assert document.sections[0].heading_path == [] and document.warnings == []


def test_title_is_the_file_stem(tmp_path: Path) -> None:
    assert _parse(_write_bytes(tmp_path, b"x", name="my_notes.txt")).metadata.title == "my_notes"


def test_cp1252_text_decodes_right(tmp_path: Path) -> None:
    document = _parse(_write_bytes(tmp_path, SAMPLE.encode("cp1252")))
    assert document.sections[0].text == SAMPLE
    assert document.metadata.encoding == "cp1252"
    assert document.warnings == []


def test_cp1251_cyrillic_is_not_forced_into_cp1252() -> None:
    text = "Привет, как дела? Это простой тест."
    decoded, encoding, _ = decode_bytes(text.encode("cp1251"), Path("ru.txt"))
    assert (decoded, encoding) == (text, "cp1251")


@pytest.mark.parametrize(
    ("codec", "encoding"),
    [
        ("utf-8-sig", "utf-8-sig"),
        ("utf-16", "utf-16"),  # with BOM, native byte order
        ("utf-16-be", None),  # without BOM: detected from the NUL layout
        ("utf-16-le", None),
        ("utf-32", "utf-32"),
    ],
)
def test_byte_order_marks_and_wide_encodings(
    tmp_path: Path, codec: str, encoding: str | None
) -> None:
    text = f"Hello {SAMPLE}\nsecond line"
    data = text.encode(codec)
    if codec in ("utf-16-be", "utf-16-le"):
        assert not data.startswith((b"\xff\xfe", b"\xfe\xff"))
    document = _parse(_write_bytes(tmp_path, data))
    assert document.sections[0].text == f"Hello {SAMPLE} second line"
    assert document.metadata.encoding == (encoding or codec)
    assert document.warnings == []


def test_explicit_utf16_bom_in_both_byte_orders() -> None:
    for bom, codec in ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        text, encoding, warnings = decode_bytes(bom + "naïve".encode(codec), Path("x.txt"))
        assert (text, encoding, warnings) == ("naïve", "utf-16", [])


def test_invalid_utf8_bytes_do_not_crash(tmp_path: Path) -> None:
    data = "naïve café ".encode() + b"\xff\xfe broken \x80 tail"
    document = _parse(_write_bytes(tmp_path, data))
    assert document.sections[0].text == "naïve café \ufffd\ufffd broken \ufffd tail"
    assert document.metadata.encoding == "utf-8"
    assert document.warnings == [
        "3 undecodable byte sequence(s) replaced with U+FFFD (decoded as utf-8)"
    ]


def test_cp1252_with_one_accidental_utf8_sequence_stays_cp1252() -> None:
    text = "CAFÉ… déjà vu à l’été"  # "É…" happens to be a valid UTF-8 byte pair
    assert decode_bytes(text.encode("cp1252"), Path("x.txt"))[:2] == (text, "cp1252")


def test_undecodable_short_text_still_decodes(tmp_path: Path) -> None:
    document = _parse(_write_bytes(tmp_path, b"hello \x81\x8d world"))
    assert document.sections[0].text.startswith("hello ")
    assert document.sections[0].text.endswith(" world")


def test_zero_byte_file_is_an_error(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, b"")
    with pytest.raises(DocumentProcessingError) as caught:
        _parse(path)
    assert str(caught.value) == f"{path}: empty file (0 bytes); nothing to extract."


@pytest.mark.parametrize(
    "data",
    [
        b"\x7fELF\x02\x01\x01\x00" + bytes(64) + b"\x03\x00>\x00",
        bytes(range(256)) * 8,
        b"PK\x03\x04\x14\x00\x08\x00\x08\x00" + bytes([0x9C, 0x11, 0x85]) * 200,
    ],
)
def test_binary_data_is_an_error(tmp_path: Path, data: bytes) -> None:
    path = _write_bytes(tmp_path, data, name="blob.txt")
    with pytest.raises(DocumentProcessingError) as caught:
        _parse(path)
    assert str(caught.value).startswith(f"{path}: looks like binary data, not plain text; ")


def test_whitespace_only_file_has_no_text(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, b" \n\t\n<br>\n")
    with pytest.raises(DocumentProcessingError, match=r"notes\.txt: has no text after cleaning"):
        _parse(path)


def test_html_is_sanitised(tmp_path: Path) -> None:
    document = _parse(_write_bytes(tmp_path, b"Keep <b>this</b>.<script>evil()</script>\n"))
    assert document.sections[0].text == "Keep this."


def test_overlong_text_is_cut_with_a_warning(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path, b"word " * 10)
    document = _parse(path, DocumentProcessingConfig(max_text_length=12))
    assert document.sections[0].text == "word word wo"
    assert document.warnings == [
        "text cut at 12 characters (document_processing.max_text_length); 37 characters dropped"
    ]
