"""Markdown read as CommonMark: what the hand-written block parser got wrong, now read as the spec
says (link reference definitions, containers, nested brackets, entities, raw HTML, lists)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from document_processing.parsers.markdown_parser import MarkdownParser
from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig


def _parse(tmp_path: Path, text: str) -> ParsedDocument:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return MarkdownParser().parse(path, path.name, DocumentProcessingConfig())


BADGES = """# Project

[![Build][build-image]][build-url] [![codecov][codecov-image]][codecov-url]

A library for [parsing][docs].

[docs]: https://docs.example.com
[build-image]: https://ci.example.com/badge.svg
[build-url]: https://ci.example.com
[codecov-image]:
    https://codecov.io/gh/x/y/badge.svg
    "Coverage"
[codecov-url]: <https://codecov.io/gh/x/y>
  'multi-line
  title'

- item with a [local][] link

  [local]: /local
> a quote [q]
>
> [q]: /q
"""


def test_link_reference_definitions_are_never_text(tmp_path: Path) -> None:
    document = _parse(tmp_path, BADGES)
    (section,) = document.sections
    assert section.text == (
        "Build codecov\n\nA library for parsing.\n\n- item with a local link\n\na quote q"
    )
    assert "]:" not in section.text and "https" not in section.text


def test_headings_and_fences_inside_block_quotes_are_read(tmp_path: Path) -> None:
    document = _parse(tmp_path, "# Guide\n\n> ### Note\n> ```sh\n> make test\n> ```\n> Done.\n")
    (section,) = document.sections
    assert section.heading_path == ["Guide"]  # a heading in a quote is the quote's text
    assert section.text == "Note\n\n```\nmake test\n```\n\nDone."
    start, end = section.protected[0]
    assert section.text[start:end] == "```\nmake test\n```"
    assert document.metadata.extra == {"code_languages": "sh"}


@pytest.mark.parametrize(
    ("markdown", "text"),
    [
        ("[a [b] c](/u) and [x](</my url>)", "a [b] c and x"),
        ("&copy &copy; &#169; &#xA9; &MadeUp;", "&copy © © © &MadeUp;"),
        ("`code with &amp;` and \\&amp;", "code with &amp; and &amp;"),
        ("1. - 2. nested\n\n7) seven\n8) eight", "1. - 2. nested\n7. seven\n8. eight"),
        ("- # In a list\n  text", "- In a list text"),
        ("<div>\n*not emphasis in raw HTML*\n</div>", "*not emphasis in raw HTML*"),
        ("Text <script>steal()</script> more", "Text more"),
        ("a <!-- hidden\nnote --> b", "a b"),
        (
            "a <!-- a comment cannot span\n\na blank line -->",
            "a <!-- a comment cannot span\n\na blank line -->",
        ),
        ("*a **b** c* and ~~gone~~", "a b c and gone"),
    ],
)
def test_inline_and_container_markup_follows_commonmark(
    tmp_path: Path, markdown: str, text: str
) -> None:
    assert _parse(tmp_path, markdown).text == text


def test_html_headings_and_tables_in_markdown_become_sections_and_rows(tmp_path: Path) -> None:
    document = _parse(
        tmp_path,
        '<h1 align="center">Widget</h1>\n\n<p align="center">A widget.</p>\n\n'
        "<table><tr><th>Key</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>\n",
    )
    assert document.metadata.title == "Widget"
    (section,) = document.sections
    assert section.heading_path == ["Widget"]
    assert section.text == "A widget.\n\nKey | Value\na | 1"
    start, end = section.protected[0]
    assert section.text[start:end] == "Key | Value\na | 1"


def test_table_and_code_inside_list_items_are_protected(tmp_path: Path) -> None:
    document = _parse(
        tmp_path,
        "- first\n\n  | x | y |\n  |---|---|\n  | 1 | 2 |\n- second\n\n  ```\n  run\n  ```\n",
    )
    (section,) = document.sections
    assert section.text == "- first\n\nx | y\n1 | 2\n\n- second\n\n```\nrun\n```"
    assert [section.text[a:b] for a, b in section.protected] == ["x | y\n1 | 2", "```\nrun\n```"]


def test_hostile_nesting_is_cut_with_a_warning(tmp_path: Path) -> None:
    start = time.perf_counter()
    document = _parse(tmp_path, "Intro.\n\n" + ">" * 20_000 + " deep\n\n" + "[" * 500 + "x\n")
    assert time.perf_counter() - start < 20  # quadratic behaviour would take minutes
    assert document.text == "Intro.\n\n" + "[" * 500 + "x"
    assert document.warnings == [
        "blocks nested more than 100 deep (quotes in quotes, lists in lists) were left out"
    ]
