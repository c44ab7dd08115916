"""Unit tests of the shared text cleaning: one rule per test, exact expected values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from document_processing.cleaning import clean_text, mark_paragraphs, remove_running_lines

# --------------------------------------------------------------------------------------------------
# clean_text, one rule at a time
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ligature", "expanded"),
    [("ﬀ", "ff"), ("ﬁ", "fi"), ("ﬂ", "fl"), ("ﬃ", "ffi"), ("ﬄ", "ffl"), ("ﬅ", "st"), ("ﬆ", "st")],
)
def test_ligatures_are_expanded(ligature: str, expanded: str) -> None:
    assert clean_text(f"a{ligature}b\nc") == f"a{expanded}b c"


def test_nfkc_normalises_compatibility_forms() -> None:
    # full-width letters, a no-break space, and a decomposed "é" (e + combining acute)
    assert clean_text("ＡＢＣ\u00a0cafe\u0301\n") == "ABC café"


def test_soft_hyphens_are_removed() -> None:
    assert clean_text("hyphen\u00adation works") == "hyphenation works"


def test_soft_hyphen_at_line_end_joins_the_word() -> None:
    assert clean_text("exam\u00ad\nple text") == "example text"


def test_zero_width_characters_are_removed() -> None:
    assert clean_text("zero\u200bwidth\u2060joined\ufeff\n") == "zerowidthjoined"


def test_hyphenated_word_across_lines_is_rejoined() -> None:
    assert clean_text("an exam-\nple of it") == "an example of it"


def test_line_end_hyphen_before_uppercase_or_digit_is_kept_without_the_break() -> None:
    assert clean_text("Jean-\nPaul in 1990-\n2000") == "Jean-Paul in 1990-2000"


def test_dash_after_a_space_is_not_hyphenation() -> None:
    assert clean_text("one -\ntwo") == "one - two"


def test_wrapped_lines_are_joined_into_a_paragraph() -> None:
    assert clean_text("first line\nsecond line\nthird") == "first line second line third"


def test_paragraph_breaks_become_exactly_one_blank_line() -> None:
    assert clean_text("one\n\n\n\n  \n\ntwo\n \t \nthree") == "one\n\ntwo\n\nthree"


def test_carriage_returns_and_form_feeds_are_line_breaks() -> None:
    assert clean_text("a\r\nb\rc\fd") == "a b c\n\nd"


def test_control_characters_are_dropped() -> None:
    assert clean_text("be\x00ll\x07 and\x1b esc\x9f\n") == "bell and esc"


def test_runs_of_spaces_and_tabs_collapse_to_one_space() -> None:
    assert clean_text("a  b\t\tc \t d\n") == "a b c d"


def test_lines_and_result_are_stripped() -> None:
    assert clean_text("  \n  lead   \n  trail  \n\n") == "lead trail"


def test_list_items_keep_their_own_lines() -> None:
    text = "Intro line\n- first\n* second\n• third\n1. fourth\n2) fifth\nwrapped"
    assert clean_text(text) == "Intro line\n- first\n* second\n• third\n1. fourth\n2) fifth wrapped"


def test_a_wrapped_line_starting_with_a_year_is_not_a_list_item() -> None:
    assert clean_text("founded in\n1998. Later") == "founded in 1998. Later"


def test_every_unicode_whitespace_becomes_a_space_or_a_break() -> None:
    spaces = [chr(c) for c in range(0x3001) if chr(c).isspace() and chr(c) not in "\n\r\f\v"]
    cleaned = clean_text("x" + "y".join(spaces) + "z")
    assert {c for c in cleaned if c.isspace()} <= {" ", "\n"}
    assert cleaned.replace(" ", "").replace("\n", "") == "x" + "y" * (len(spaces) - 1) + "z"


def test_empty_and_whitespace_only_text_cleans_to_empty() -> None:
    assert clean_text("") == ""
    assert clean_text(" \n\t\n\x00 ") == ""


# --------------------------------------------------------------------------------------------------
# PDF layout: paragraph breaks from short sentence-ending lines
# --------------------------------------------------------------------------------------------------

PDF_PAGE = (
    "The first paragraph runs across the whole width of the page and\n"
    "continues on a second line that is just as long as the first one\n"
    "and ends here.\n"
    "A second paragraph starts right away, as PDF text has no blank\n"
    "line, and it ends with a quote.”\n"
    "Short line without an end\n"
    "goes on here and ends the text so that it is long enough again."
)


def test_mark_paragraphs_breaks_after_short_sentence_ending_lines() -> None:
    lines = PDF_PAGE.split("\n")
    # "Short line without an end" is short too, but ends no sentence: a wrapped line goes on.
    assert mark_paragraphs(PDF_PAGE).split("\n") == [*lines[:3], "", *lines[3:5], "", *lines[5:]]


def test_clean_text_pdf_layout_builds_paragraphs() -> None:
    assert clean_text(PDF_PAGE, pdf_layout=True) == (
        "The first paragraph runs across the whole width of the page and continues on a second "
        "line that is just as long as the first one and ends here.\n\n"
        "A second paragraph starts right away, as PDF text has no blank line, and it ends with a "
        "quote.”\n\n"
        "Short line without an end goes on here and ends the text so that it is long enough again."
    )


def test_pdf_layout_is_off_by_default() -> None:
    assert "\n" not in clean_text(PDF_PAGE)


def test_mark_paragraphs_leaves_short_texts_and_full_width_lines_alone() -> None:
    assert mark_paragraphs("One.\nTwo.\nThree.") == "One.\nTwo.\nThree."
    full = "a line of forty characters that ends.xx.\n" * 5
    assert mark_paragraphs(full) == full


def test_mark_paragraphs_does_not_split_list_items() -> None:
    text = "A long introduction line that sets the median width, ok\n" * 3 + "- one.\n- two."
    assert mark_paragraphs(text) == text


# --------------------------------------------------------------------------------------------------
# idempotence
# --------------------------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "a",
        "B",
        "é",
        "e\u0301",
        "ﬁ",
        "\u00ad",
        "-",
        "- ",
        "* ",
        "1. ",
        "12) ",
        "• ",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        "\f",
        "\u2028",
        "\u00a0",
        "\u200b",
        "\x00",
        ".",
        "”",
        "word",
        "Word",
        "\u1680",
        "\u3000",
        "\ufeff",
        "_",
    ]
)
_TEXTS = st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=60).map("".join))


@settings(max_examples=400, deadline=None)
@given(_TEXTS)
def test_clean_text_is_idempotent(text: str) -> None:
    once = clean_text(text)
    assert clean_text(once) == once


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_clean_text_pdf_layout_is_idempotent(text: str) -> None:
    once = clean_text(text, pdf_layout=True)
    assert clean_text(once, pdf_layout=True) == once
    assert clean_text(once) == once


@settings(max_examples=300, deadline=None)
@given(_TEXTS)
def test_clean_text_output_shape(text: str) -> None:
    cleaned = clean_text(text)
    assert cleaned == cleaned.strip()
    assert "\n\n\n" not in cleaned and "  " not in cleaned and "\t" not in cleaned
    assert " \n" not in cleaned and "\n " not in cleaned


# --------------------------------------------------------------------------------------------------
# running headers, footers, page numbers
# --------------------------------------------------------------------------------------------------


_BODIES = ["Alpha opens the report.", "Bravo goes on.", "Charlie adds.", "Delta.", "Echo ends."]


def _report_pages() -> list[str]:
    pages = []
    for n, body in enumerate(_BODIES, start=1):
        lines = [body, "It says more."] if n != 3 else [body]
        if n in (2, 4):
            lines.append("This sentence repeats on two pages.")
        pages.append("\n".join(["ACME Report 2024", "", *lines, "", f"Page {n} of 5"]))
    return pages


def test_running_header_and_footer_are_removed() -> None:
    cleaned = remove_running_lines(_report_pages())
    assert cleaned[0] == "\nAlpha opens the report.\nIt says more.\n"
    assert cleaned[1] == "\nBravo goes on.\nIt says more.\nThis sentence repeats on two pages.\n"
    assert cleaned[2] == "\nCharlie adds.\n"
    assert all("ACME" not in page and "of 5" not in page for page in cleaned)


def test_body_line_repeated_on_two_of_five_pages_is_kept() -> None:
    # at the bottom edge of pages 2 and 4 once the footer is ignored, but on only 2 of 5 pages
    cleaned = remove_running_lines(_report_pages())
    assert sum("This sentence repeats on two pages." in page for page in cleaned) == 2


def test_bare_page_numbers_are_removed_when_two_pages_have_them() -> None:
    pages = ["iii\nPreface text here.", "Chapter text.\n- 4 -", "More text.\n5"]
    assert remove_running_lines(pages) == ["Preface text here.", "Chapter text.", "More text."]


def test_a_single_page_number_like_line_is_kept() -> None:
    pages = ["Intro.\n42", "Body.\nEnd of body.", "Other.\nClosing line."]
    assert remove_running_lines(pages) == pages


def test_two_page_documents_need_the_line_on_both_pages() -> None:
    assert remove_running_lines(["Header\nOne.", "Header\nTwo."]) == ["One.", "Two."]
    assert remove_running_lines(["Header\nOne.", "Other\nTwo."]) == ["Header\nOne.", "Other\nTwo."]


def test_header_needs_three_pages_and_half_of_them() -> None:
    pages = ["Draft\nA.", "Draft\nB.", "C start.\nC.", "D start.\nD.", "E start.\nE.", "F.\nF end."]
    assert remove_running_lines(pages) == pages  # on 2 of 6 pages: below both limits
    pages[2] = "Draft\nC."
    assert remove_running_lines(pages)[:3] == ["A.", "B.", "C."]


def test_single_page_is_returned_unchanged() -> None:
    assert remove_running_lines(["Title\nText\n1"]) == ["Title\nText\n1"]
