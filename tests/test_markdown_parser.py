"""Markdown parser: frontmatter, safety, titles, sections, code, tables, links, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from document_processing.parsers.markdown_parser import MarkdownParser
from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError, SecurityError


def _parse(path: Path, settings: DocumentProcessingConfig | None = None) -> ParsedDocument:
    return MarkdownParser().parse(path, path.name, settings or DocumentProcessingConfig())


def _write(tmp_path: Path, text: str, name: str = "doc.md") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# frontmatter
# --------------------------------------------------------------------------------------------------


def test_frontmatter_fills_the_metadata(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "---\ntitle: The Guide\nauthor: [Ann, Bob]\ndate: 2024-01-15\n"
        "updated: 2024-02-01 10:30:00\ntags: [setup, linux]\ndraft: false\nsummary: Short.\n"
        "---\nBody text.\n",
    )
    document = _parse(path)
    metadata = document.metadata
    assert metadata.title == "The Guide"
    assert metadata.author == "Ann, Bob"
    assert metadata.created == "2024-01-15"
    assert metadata.modified == "2024-02-01T10:30:00"
    assert metadata.extra == {"tags": '["setup", "linux"]', "draft": "false", "summary": "Short."}
    assert metadata.encoding == "utf-8"
    assert document.doc_type == "markdown" and document.source == "doc.md"
    assert [section.text for section in document.sections] == ["Body text."]


def test_python_tag_in_frontmatter_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _write(
        tmp_path,
        f"---\ntitle: x\ncmd: !!python/object/apply:os.system ['touch {marker}']\n---\nBody.\n",
    )
    with pytest.raises(SecurityError) as caught:
        _parse(path)
    assert str(caught.value) == (
        f"{path}:3: frontmatter uses the YAML tag !!python/object/apply:os.system; "
        "only plain YAML is allowed."
    )
    assert not marker.exists()


def test_custom_tag_in_frontmatter_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "---\nvalue: !custom 3\n---\nBody.\n")
    with pytest.raises(SecurityError, match=r"doc\.md:2: frontmatter uses the YAML tag !custom"):
        _parse(path)


def test_yaml_aliases_in_frontmatter_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "---\na: &x [1, 2]\nb: [*x, *x]\n---\nBody.\n")
    with pytest.raises(SecurityError, match=r"doc\.md:3: frontmatter uses a YAML alias \(\*x\)"):
        _parse(path)


def test_malformed_frontmatter_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "---\ntitle: ok\ntags: [a, b\nnext: 1\n---\nBody.\n")
    with pytest.raises(DocumentProcessingError) as caught:
        _parse(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:4: frontmatter is not valid YAML (")
    assert "\n" not in message


def test_a_leading_thematic_break_without_a_closing_one_is_not_frontmatter(tmp_path: Path) -> None:
    document = _parse(_write(tmp_path, "---\n\nJust text.\n"))
    assert [section.text for section in document.sections] == ["Just text."]


# --------------------------------------------------------------------------------------------------
# titles and sections
# --------------------------------------------------------------------------------------------------


def test_title_falls_back_to_first_h1_then_file_stem(tmp_path: Path) -> None:
    def title(text: str, name: str = "doc.md") -> str:
        return _parse(_write(tmp_path, text, name)).metadata.title

    assert title("Intro.\n\n## Sub\n\n# The *Main* Title\n\nText.\n") == "The Main Title"
    assert title("Setext One\n==========\n\nText.\n") == "Setext One"
    assert title("## Only H2\n\nText.\n", name="my_notes.md") == "my_notes"


def test_heading_paths_follow_nesting_including_setext(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "Preamble text.\n\n"
        "Guide\n=====\n\nGuide intro.\n\n"
        "Install\n-------\n\nInstall text.\n\n"
        "### Linux ###\n\nLinux text.\n\n"
        "## Usage\n\nUsage text.\n\n"
        "# Appendix\n\n#### Deep\n\nDeep text.\n",
    )
    sections = _parse(path).sections
    assert [(s.heading_path, s.text) for s in sections] == [
        ([], "Preamble text."),
        (["Guide"], "Guide intro."),
        (["Guide", "Install"], "Install text."),
        (["Guide", "Install", "Linux"], "Linux text."),
        (["Guide", "Usage"], "Usage text."),
        (["Appendix", "Deep"], "Deep text."),
    ]


def test_empty_sections_are_dropped_but_head_their_children(tmp_path: Path) -> None:
    path = _write(tmp_path, "# Guide\n\n## Empty\n\n### Child\n\nChild text.\n")
    sections = _parse(path).sections
    assert [(s.heading_path, s.text) for s in sections] == [
        (["Guide", "Empty", "Child"], "Child text.")
    ]


def test_heading_lines_are_not_part_of_the_section_text(tmp_path: Path) -> None:
    sections = _parse(_write(tmp_path, "# Title\n\nBody one.\n\nBody two.\n")).sections
    assert sections[0].text == "Body one.\n\nBody two."


# --------------------------------------------------------------------------------------------------
# code blocks and tables
# --------------------------------------------------------------------------------------------------

FENCED_CODE = "# not a heading\nx  =  1\t# tab kept\n\n\nprint(x)\n"


def test_fenced_code_is_kept_verbatim_and_protected_its_info_string_is_metadata(
    tmp_path: Path,
) -> None:
    fenced = f'```python title=x hl_lines="1 3"\n{FENCED_CODE}```'
    path = _write(tmp_path, f"# Code\n\nBefore *it*.\n\n{fenced}\n\nAfter.\n")
    document = _parse(path)
    (section,) = document.sections
    assert section.heading_path == ["Code"]
    code = f"```\n{FENCED_CODE}```"
    assert section.text == f"Before it.\n\n{code}\n\nAfter."
    assert len(section.protected) == 1
    start, end = section.protected[0]
    assert section.text[start:end] == code
    assert "title=x" not in section.text and "hl_lines" not in section.text
    assert document.metadata.extra == {"code_languages": "python"}


def test_tilde_fence_with_html_inside_is_not_stripped(tmp_path: Path) -> None:
    document = _parse(_write(tmp_path, "~~~html\n<script>keep()</script>\n## still code\n~~~\n"))
    (section,) = document.sections
    code = "```\n<script>keep()</script>\n## still code\n```"
    assert section.text == code and section.protected == [(0, len(code))]
    assert document.metadata.extra == {"code_languages": "html"}


def test_code_with_fences_inside_gets_a_longer_fence(tmp_path: Path) -> None:
    (section,) = _parse(_write(tmp_path, "~~~~md\n```py\nx = 1\n```\n~~~~\n")).sections
    assert section.text == "````\n```py\nx = 1\n```\n````"


def test_unclosed_fence_runs_to_the_end_with_a_warning(tmp_path: Path) -> None:
    document = _parse(_write(tmp_path, "Text.\n\n```\ncode\n# not heading\n"))
    assert document.sections[0].text == "Text.\n\n```\ncode\n# not heading\n```"
    assert document.warnings == [
        "code fence opened on line 3 is never closed; kept as code to the end of the file"
    ]


def test_unclosed_fence_line_counts_the_frontmatter(tmp_path: Path) -> None:
    document = _parse(_write(tmp_path, "---\ntitle: t\n---\nText.\n\n```\ncode\n"))
    assert document.warnings == [
        "code fence opened on line 6 is never closed; kept as code to the end of the file"
    ]


def test_indented_code_is_kept_verbatim_and_protected(tmp_path: Path) -> None:
    code = "    def f():\n        return  1"
    (section,) = _parse(_write(tmp_path, f"Intro.\n\n{code}\n\nOutro.\n")).sections
    assert section.text == f"Intro.\n\n{code}\n\nOutro."
    start, end = section.protected[0]
    assert section.text[start:end] == code


def test_tables_become_rows_without_the_separator(tmp_path: Path) -> None:
    table = "| Name | Value |\n|:-----|:-----:|\n| **a** | [one](http://x) |\n| b \\| c | `2` |"
    (section,) = _parse(_write(tmp_path, f"Data:\n\n{table}\n\nEnd.\n")).sections
    rows = "Name | Value\na | one\nb | c | 2"
    assert section.text == f"Data:\n\n{rows}\n\nEnd."
    start, end = section.protected[0]
    assert section.text[start:end] == rows


# --------------------------------------------------------------------------------------------------
# inline markup
# --------------------------------------------------------------------------------------------------


def test_script_style_and_inline_html_are_removed(tmp_path: Path) -> None:
    text = (
        "Hello <b>world</b> &amp; all.\n\n<script>\nalert('x');\n\nsteal()\n</script>\n\n"
        "<style>p { color: red }</style>\n\n<!-- hidden\n\nnote -->\n\nAfter.\n"
    )
    (section,) = _parse(_write(tmp_path, text)).sections
    assert section.text == "Hello world & all.\n\nAfter."


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ('See [the docs](https://x.io/a_(b) "Title") now.', "See the docs now."),
        ("An ![alt text](img.png) image.", "An alt text image."),
        ("[![badge](b.svg)](https://ci)", "badge"),
        ("Go to <https://example.com/a_b_c>.", "Go to https://example.com/a_b_c."),
        ("Mail <me@example.com>.", "Mail me@example.com."),
        ("**bold**, __strong__, *it*, _em_, ~~gone~~", "bold, strong, it, em, gone"),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4"),
        ("Use `a *b* <c>` here", "Use a *b* <c> here"),
        ("Escaped \\*stars\\* stay", "Escaped *stars* stay"),
        ("* one\n+ two\n- three\n1. four", "- one\n- two\n- three\n1. four"),
        ("> quoted\n> text", "quoted text"),
    ],
)
def test_inline_markup_is_removed(tmp_path: Path, markdown: str, text: str) -> None:
    assert _parse(_write(tmp_path, markdown)).text == text


def test_reference_links_keep_their_text(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "Read [the guide][g], [this][] and [Guide].\n\n[g]: https://g.io\n[this]: /t\n"
        '[guide]: https://g.io "G"\n\n[not a link] stays.\n',
    )
    (section,) = _parse(path).sections
    assert section.text == "Read the guide, this and Guide.\n\n[not a link] stays."


# --------------------------------------------------------------------------------------------------
# bad input, encodings, limits
# --------------------------------------------------------------------------------------------------


def test_binary_markdown_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "image.md"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    with pytest.raises(DocumentProcessingError) as caught:
        _parse(path)
    assert str(caught.value).startswith(f"{path}: looks like binary data, not Markdown text; ")


def test_zero_byte_markdown_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.md"
    path.write_bytes(b"")
    with pytest.raises(DocumentProcessingError) as caught:
        _parse(path)
    assert str(caught.value) == f"{path}: empty file (0 bytes); nothing to extract."


def test_markdown_with_no_text_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DocumentProcessingError, match="has no text after cleaning"):
        _parse(_write(tmp_path, "---\ntitle: x\n---\n# Heading only\n\n<!-- nothing -->\n"))


def test_bom_crlf_and_invalid_utf8_are_handled(tmp_path: Path) -> None:
    path = tmp_path / "win.md"
    path.write_bytes(
        b"\xef\xbb\xbf---\r\ntitle: Caf\xc3\xa9\r\n---\r\n# H\r\n\r\nna\xc3\xafve \xff ok\r\n"
    )
    document = _parse(path)
    assert document.metadata.title == "Café"
    assert document.metadata.encoding == "utf-8-sig"  # the BOM decided it
    assert document.sections[0].text == "naïve \ufffd ok"
    assert document.warnings == [
        "1 undecodable byte sequence(s) replaced with U+FFFD (decoded as utf-8-sig)"
    ]


def test_overlong_document_is_cut_with_a_warning(tmp_path: Path) -> None:
    path = _write(tmp_path, "# A\n\n" + "x" * 30 + "\n\n# B\n\n" + "y" * 30 + "\n")
    document = _parse(path, DocumentProcessingConfig(max_text_length=40))
    assert [section.text for section in document.sections] == ["x" * 30, "y" * 8]
    assert len(document.text) == 40
    assert document.warnings == [
        "text cut at 40 characters (document_processing.max_text_length); 22 characters dropped"
    ]
