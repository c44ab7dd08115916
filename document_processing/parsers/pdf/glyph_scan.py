"""Predicting, from a page's fonts and content stream, the pages pdfplumber would fill with
"(cid:NN)", without running its layout analysis (well under a millisecond a page).
"""

from __future__ import annotations

import re
from typing import Any

# pdfminer (under pdfplumber) writes "(cid:NN)" for every shown code its font object cannot map to
# Unicode: no /ToUnicode entry and a glyph name outside its glyph list (TeX math fonts), or a CID
# font without a map. Which codes a page shows is in its content stream, which one regex pass
# reads at C speed: font selections (Tf), the strings of the text-showing operators (Tj ' " TJ),
# q/Q (which restore the font), Form XObjects (Do). Everything else is matched only to be skipped,
# so a string or name elsewhere (a marked-content property, inline image data) is never read as
# text: a code wrongly found would send a good page to pypdf, while one missed only costs time
# (the quality check still reads the page's real text).
_NUMBER = rb"[-+]?(?:\d+\.?\d*|\.\d+)"
_LITERAL = rb"\((?:[^\\()]|\\.|\((?:[^\\()]|\\.)*\))*\)"  # one level of balanced parentheses
_HEX = rb"<[0-9A-Fa-f\s]*>"
_NAME_CHARS = rb"[^\s/\[\]()<>{}%]"
_OPERATOR_END = rb"(?![^\s\[\]()<>{}/%])"
_CONTENT_TOKEN = re.compile(
    b"|".join(
        [
            rb"%[^\r\n]*",  # comment
            rb"\bBI\b.*?\bID\b.*?\bEI\b",  # inline image: binary data
            rb"\[(?P<array>(?:%s|%s|%s|\s+)*+)\]\s*TJ%s" % (_LITERAL, _HEX, _NUMBER, _OPERATOR_END),
            rb"(?P<string>%s|%s)\s*(?:Tj|'|\")%s" % (_LITERAL, _HEX, _OPERATOR_END),
            rb"/(?P<font>%s+)\s+%s\s+Tf%s" % (_NAME_CHARS, _NUMBER, _OPERATOR_END),
            rb"/(?P<xobject>%s+)\s+Do%s" % (_NAME_CHARS, _OPERATOR_END),
            rb"/%s*|%s|%s" % (_NAME_CHARS, _LITERAL, _HEX),  # other operands: skipped whole
            rb"(?<![^\s\[\]()<>{}/%%])(?:(?P<save>q)|(?P<restore>Q)|(?P<odd_font>Tf))%s"
            % _OPERATOR_END,
        ]
    ),
    re.S,
)
_STRING = re.compile(_LITERAL + rb"|" + _HEX)
_ESCAPE = re.compile(rb"\\([0-7]{1,3}|\r\n|.)", re.S)
_ESCAPED = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_NON_HEX = re.compile(rb"[^0-9A-Fa-f]")
_SUBSET_TAG = re.compile(r"^[A-Z]{6}\+")
_MAX_FORM_DEPTH = 8


def _string_bytes(token: bytes) -> bytes:
    """The bytes a literal "(...)" or hex "<...>" string token stands for."""
    if token.startswith(b"<"):
        digits = _NON_HEX.sub(b"", token[1:-1])
        return bytes.fromhex((digits + b"0" * (len(digits) % 2)).decode("ascii"))
    body = token[1:-1]
    return _ESCAPE.sub(_unescape, body) if b"\\" in body else body


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match.group(1)
    if escaped[:1].isdigit():
        return bytes([int(escaped, 8) & 0xFF])
    if escaped in (b"\r\n", b"\r", b"\n"):
        return b""  # a backslash before a line end continues the string
    return _ESCAPED.get(escaped, escaped)


class _FontCodes:
    """Which codes of one pdfminer font have no Unicode mapping (pdfminer's `to_unichr`)."""

    def __init__(self, font: Any, resource_name: str) -> None:
        from pdfminer.pdffont import PDFSimpleFont

        self.font = font  # held, so the id() cache key in UnmappedGlyphScan is never reused
        self.name = _SUBSET_TAG.sub("", str(getattr(font, "basefont", "") or resource_name))
        self._mapped: bytes | None = None  # simple fonts: every mapped one-byte code
        self._cid_mapped: dict[int, bool] = {}
        if isinstance(font, PDFSimpleFont):
            self._mapped = bytes(code for code in range(256) if self._maps(code))

    def _maps(self, cid: int) -> bool:
        from pdfminer.pdffont import PDFUnicodeNotDefined

        try:
            self.font.to_unichr(cid)
        except PDFUnicodeNotDefined:
            return False
        return True

    def has_unmapped(self, shown: bytes) -> bool:
        if self._mapped is not None:
            return bool(shown.translate(None, self._mapped))  # what is left has no mapping
        for cid in self.font.decode(shown):
            mapped = self._cid_mapped.get(cid)
            if mapped is None:
                mapped = self._cid_mapped[cid] = self._maps(cid)
            if not mapped:
                return True
        return False


class UnmappedGlyphScan:
    """Fonts of a pdfplumber page that would show codes as "(cid:NN)", without layout analysis.

    Uses the document's pdfminer resource manager, so the font objects it builds are the ones the
    layout analysis reuses for the pages that do get it.
    """

    def __init__(self, rsrcmgr: Any) -> None:
        self._rsrcmgr = rsrcmgr
        self._fonts: dict[int, _FontCodes] = {}

    def page_fonts(self, page_obj: Any) -> list[str]:
        """Names of the fonts (subset tag dropped) that show at least one unmappable code."""
        from pdfminer.pdftypes import list_value

        found: dict[str, None] = {}
        self._scan(page_obj.resources, list_value(page_obj.contents), found, (), 0)
        return list(found)

    def _scan(
        self,
        resources: Any,
        streams: list[Any],
        found: dict[str, None],
        forms: tuple[int, ...],
        depth: int,
    ) -> None:
        from pdfminer.pdftypes import PDFStream, dict_value, resolve1, stream_value

        resources = dict_value(resources)
        fonts = self._fonts_of(resources)
        xobjects = dict_value(resources.get("XObject"))
        data = b"\n".join(stream_value(stream).get_data() for stream in streams)
        current: _FontCodes | None = None  # pdfminer starts each page and form without a font
        saved: list[_FontCodes | None] = []
        for match in _CONTENT_TOKEN.finditer(data):
            kind = match.lastgroup
            if kind is None:
                continue
            if kind == "font":
                current = fonts.get(_pdf_name(match.group("font")))
            elif kind == "odd_font":
                current = None  # a Tf we cannot read: attribute nothing until the next one
            elif kind == "save":
                saved.append(current)
            elif kind == "restore":
                if saved:
                    current = saved.pop()
            elif kind in ("string", "array"):
                if current is None or current.name in found:
                    continue
                tokens = [match.group(kind)] if kind == "string" else _STRING.findall(match[kind])
                if any(current.has_unmapped(_string_bytes(token)) for token in tokens):
                    found[current.name] = None
            elif kind == "xobject" and depth < _MAX_FORM_DEPTH:
                form = resolve1(xobjects.get(_pdf_name(match.group("xobject"))))
                if (
                    isinstance(form, PDFStream)
                    and _pdf_name_of(form.get("Subtype")) == "Form"
                    and "BBox" in form
                    and form.objid not in forms
                ):
                    # A form without resources uses the page's (PDF 1.7, section 8.10.1).
                    own = form.get("Resources")
                    self._scan(
                        own if own else resources,
                        [form],
                        found,
                        (*forms, form.objid),
                        depth + 1,
                    )

    def _fonts_of(self, resources: dict[str, Any]) -> dict[str, _FontCodes]:
        from pdfminer.pdftypes import PDFObjRef, dict_value

        fonts = {}
        for name, spec in dict_value(resources.get("Font")).items():
            objid = spec.objid if isinstance(spec, PDFObjRef) else None
            font = self._rsrcmgr.get_font(objid, dict_value(spec))  # cached by pdfminer per objid
            codes = self._fonts.get(id(font))
            if codes is None:
                codes = self._fonts[id(font)] = _FontCodes(font, name)
            fonts[name] = codes
        return fonts


def _pdf_name(raw: bytes) -> str:
    """A name token's text, "#xx" escapes decoded, as pdfminer keys resource dictionaries."""
    if b"#" in raw:
        raw = re.sub(rb"#([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        return raw.decode("utf-8")  # as pdfminer decodes names
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _pdf_name_of(value: Any) -> str:
    from pdfminer.psparser import literal_name

    return literal_name(value) if value is not None else ""
