"""Plain text files, and the byte decoding the Markdown parser shares.

A `.txt` file becomes one section of cleaned prose. Its encoding is worked out in `decode_bytes`:
a byte order mark decides first; NUL bytes mean UTF-16/32 without a BOM or binary data; valid
UTF-8 (or UTF-8 with a few bad bytes) is UTF-8. Otherwise the text is cp1252, the usual Windows
encoding, when it reads as plausible Western European text in cp1252, and charset-normalizer
picks the encoding when it does not: on short texts charset-normalizer alone cannot tell cp1252
from cp1250 or cp1257 and would turn "naïve" into "naďve".
Undecodable bytes never crash: they become U+FFFD with a warning.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from document_processing.cleaning import clean_text
from document_processing.parsers.base import DocumentParser
from document_processing.records import DocumentMetadata, ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError
from shared_utils.security import sanitize_text

# Checked longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SAMPLE_BYTES = 64 * 1024  # enough to judge the layout of NULs and control bytes
# Control bytes that do not occur in text (tab, newline, carriage return, form feed and escape do).
_BINARY_BYTES = bytes(set(range(32)) - {9, 10, 12, 13, 27}) + b"\x7f"
_BINARY_SHARE = 0.10  # a larger share of control bytes in the raw sample is binary
_GARBAGE_SHARE = 0.25  # a larger share of U+FFFD and control characters once decoded is binary
_NUL_PARITY_SHARE = 0.30  # UTF-16 ASCII text: about half the bytes in one parity are NUL
_UTF8_BAD_PER_GOOD = 2  # U+FFFD per valid non-ASCII character still read as damaged UTF-8
_WESTERN = "cp1252"
_WESTERN_SAMPLE_CHARS = 256 * 1024

# cp1252 plausibility. Cyrillic, Greek, Hebrew or Arabic single-byte text read as cp1252 turns
# nearly every letter into an accented Latin one; Western languages accent a few percent (a short
# French phrase such as "déjà vu à l’été" reaches 45%).
_MAX_ACCENTED_LETTER_SHARE = 0.6
_LETTER = re.compile(r"[^\W\d_]")
_NON_ASCII_LETTER = re.compile(r"[^\W\d_a-zA-Z]")
# Letters and signs that Central European, Baltic and Turkish text turns into in cp1252 (ı -> ý,
# ş -> þ, ğ -> ð, š in cp1257 -> ð, Polish ą ł ż -> ¹ ³ ¿ inside words) but that Western text
# hardly uses. Icelandic, which does use ð þ ý, is left to charset-normalizer.
_UNLIKELY_IN_CP1252 = re.compile(
    r"[ðþýÐÞÝ¤¦¨¯¸]|(?<=[^\W\d_])(?:[^\x00-\x7f\w\s’‘·–—]|[ªº²³¹µ])(?=[^\W\d_])"
)
# Czech in cp1250 read as cp1252: ř -> ø alongside ě ů ň -> ì ù ò; no Western language has both.
_CZECH_AS_CP1252 = re.compile(r"ø[^ìùò]*[ìùò]|[ìùò][^ø]*ø")


def read_document_bytes(path: Path) -> bytes:
    """The file's bytes; an unreadable file is a `DocumentProcessingError` naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DocumentProcessingError(
            f"{path}: cannot be read ({exc.strerror or exc}); check that it exists and is readable."
        ) from None


def decode_bytes(data: bytes, path: Path, kind: str = "plain") -> tuple[str, str, list[str]]:
    """Decode a text file's bytes: (text, encoding name, warnings).

    `kind` names the expected format in the error for binary data ("plain", "Markdown"). Raises
    `DocumentProcessingError` for an empty file and for binary data.
    """
    if not data:
        raise DocumentProcessingError(f"{path}: empty file (0 bytes); nothing to extract.")
    decoded = _decode_with_bom(data) or _decode_wide_without_bom(data)
    if decoded is None:
        if b"\x00" in data[:_SAMPLE_BYTES] or _control_byte_share(data) > _BINARY_SHARE:
            raise _binary_error(path, kind)
        decoded = _decode_narrow(data)
    text, encoding, warnings = decoded
    if _garbage_share(text) > _GARBAGE_SHARE:
        raise _binary_error(path, kind)
    return text, encoding, warnings


def _binary_error(path: Path, kind: str) -> DocumentProcessingError:
    return DocumentProcessingError(
        f"{path}: looks like binary data, not {kind} text; check that the file really is "
        f"{kind} text, or remove it from the input folder."
    )


def _decode_with_bom(data: bytes) -> tuple[str, str, list[str]] | None:
    for bom, codec in _BOMS:
        if data.startswith(bom):
            # The "utf-16"/"utf-32" codecs read the BOM to pick the byte order and drop it.
            return _decode_replacing(data, codec)
    return None


def _decode_wide_without_bom(data: bytes) -> tuple[str, str, list[str]] | None:
    """UTF-32 or UTF-16 without a BOM, recognised by where the NUL bytes of ASCII characters sit."""
    sample = data[:_SAMPLE_BYTES]
    if b"\x00" not in sample:
        return None
    sample = sample[: len(sample) // 4 * 4]
    if len(sample) < 4:
        return None
    # Share of NUL bytes at each position modulo 4: ASCII in UTF-32-LE is "A\0\0\0".
    per_slot = [sample[slot::4].count(0) / (len(sample) // 4) for slot in range(4)]
    if min(per_slot[1:]) > 1 - _BINARY_SHARE and per_slot[0] < _BINARY_SHARE:
        return _decode_replacing(data, "utf-32-le")
    if min(per_slot[:3]) > 1 - _BINARY_SHARE and per_slot[3] < _BINARY_SHARE:
        return _decode_replacing(data, "utf-32-be")
    even = (per_slot[0] + per_slot[2]) / 2
    odd = (per_slot[1] + per_slot[3]) / 2
    if odd > _NUL_PARITY_SHARE and even < _BINARY_SHARE:
        return _decode_replacing(data, "utf-16-le")
    if even > _NUL_PARITY_SHARE and odd < _BINARY_SHARE:
        return _decode_replacing(data, "utf-16-be")
    return None


def _decode_narrow(data: bytes) -> tuple[str, str, list[str]]:
    """UTF-8 when it is (nearly) valid UTF-8, else the encoding charset-normalizer finds."""
    try:
        return data.decode("utf-8"), "utf-8", []
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd")
    non_ascii = len(text) - len(text.encode("ascii", errors="ignore"))
    valid_non_ascii = non_ascii - replaced
    # Valid multi-byte sequences are rare by chance in single-byte text (cp1252 would need an
    # accented capital followed by a symbol byte), so with enough of them this is UTF-8 with a few
    # bad bytes, which a single-byte guess would turn into mojibake everywhere else.
    if valid_non_ascii and replaced <= _UTF8_BAD_PER_GOOD * valid_non_ascii:
        return text, "utf-8", [_replacement_warning(replaced, "utf-8")]
    detected = _detect_single_byte(data)
    if detected is not None:
        return detected
    return text, "utf-8", [_replacement_warning(replaced, "utf-8") + "; encoding not recognised"]


def _detect_single_byte(data: bytes) -> tuple[str, str, list[str]] | None:
    try:
        western = data.decode(_WESTERN)
    except UnicodeDecodeError:
        western = None
    if western is not None and _plausible_western(western[:_WESTERN_SAMPLE_CHARS]):
        return western, _WESTERN, []

    from charset_normalizer import from_bytes  # imported here: only non-UTF-8 files need it

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        return None
    return str(best), codecs.lookup(best.encoding).name, []


def _plausible_western(text: str) -> bool:
    """Whether `text` (decoded as cp1252) reads like a Western European language."""
    letters = len(_LETTER.findall(text))
    accented = len(_NON_ASCII_LETTER.findall(text))
    if not letters or accented > _MAX_ACCENTED_LETTER_SHARE * letters:
        return False
    return not _UNLIKELY_IN_CP1252.search(text) and not _CZECH_AS_CP1252.search(text)


def _decode_replacing(data: bytes, codec: str) -> tuple[str, str, list[str]]:
    text = data.decode(codec, errors="replace")
    name = codecs.lookup(codec).name
    replaced = text.count("\ufffd")
    return text, name, [_replacement_warning(replaced, name)] if replaced else []


def _replacement_warning(count: int, encoding: str) -> str:
    return f"{count} undecodable byte sequence(s) replaced with U+FFFD (decoded as {encoding})"


def _control_byte_share(data: bytes) -> float:
    sample = data[:_SAMPLE_BYTES]
    return (len(sample) - len(sample.translate(None, _BINARY_BYTES))) / len(sample)


def _garbage_share(text: str) -> float:
    """Share of U+FFFD and non-text control characters in the decoded sample."""
    sample = text[:_SAMPLE_BYTES]
    if not sample:
        return 0.0
    garbage = sample.count("\ufffd") + sum(sample.count(chr(b)) for b in _BINARY_BYTES)
    return garbage / len(sample)


class TextParser(DocumentParser):
    """A `.txt` file as one section of cleaned text, titled by the file's stem."""

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        data = read_document_bytes(path)
        raw, encoding, warnings = decode_bytes(data, path)
        # Sanitised without a limit, then cut after cleaning, so the limit counts the cleaned text.
        sanitized, _ = sanitize_text(raw)
        text = clean_text(sanitized)
        if not text:
            raise DocumentProcessingError(
                f"{path}: has no text after cleaning ({len(data)} bytes of whitespace, control "
                "characters or markup); nothing to extract."
            )
        if len(text) > settings.max_text_length:
            warnings.append(cut_warning(len(text), settings.max_text_length))
            text = text[: settings.max_text_length].rstrip()
        return ParsedDocument(
            source=source,
            doc_type="text",
            metadata=DocumentMetadata(title=path.stem, encoding=encoding),
            sections=[Section(text=text)],
            warnings=warnings,
        )


def cut_warning(length: int, limit: int) -> str:
    """The warning for a document cut at `document_processing.max_text_length`."""
    return (
        f"text cut at {limit:,} characters (document_processing.max_text_length); "
        f"{length - limit:,} characters dropped"
    )
