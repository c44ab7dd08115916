"""Chunk records and instruction records: one fixed schema for every document type, honest
instruction pairs, and files that `datasets.load_dataset("json")` reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from document_processing.converters.chunking import Chunker
from document_processing.converters.sentences import sentence_spans
from document_processing.converters.structure_records import document_instruction_records
from document_processing.records import DocumentMetadata, ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig

PAGE_ONE = (
    "Solar panels turn light into electricity. Their output depends on the angle of the sun. "
    "Dust on the glass lowers it by a few percent. Cleaning twice a year is usually enough."
)
PAGE_TWO = (
    "Inverters convert direct current to alternating current. A string inverter serves many "
    "panels at once. Micro inverters sit behind each panel. They cost more but cope with shade."
)
INSTALL = (
    "Download the archive from the release page. Unpack it into a folder of your choice. "
    "Run the installer and follow the prompts on screen. Restart the shell afterwards."
)
CODE = "```bash\npip install toolkit\ntoolkit --help\n```"
USAGE_BEFORE = "Call the command with a folder of documents. "
USAGE_AFTER = "\n\nThe output lands in the processed folder. Each line is one JSON record."
NOTES = (
    "These notes were written in a hurry. Some of them are wrong. "
    "Check the facts before relying on them. The author takes no responsibility."
)


def pdf_document() -> ParsedDocument:
    return ParsedDocument(
        source="reports/solar.pdf",
        doc_type="pdf",
        metadata=DocumentMetadata(
            title="Solar basics", author="A. Writer", created="2024-01-02T03:04:05", page_count=2
        ),
        sections=[
            Section(PAGE_ONE, pages=[1], engines=["pdfplumber"]),
            Section(PAGE_TWO, pages=[2], engines=["pypdf"]),
        ],
        page_engines={1: "pdfplumber", 2: "pypdf"},
    )


def markdown_document() -> ParsedDocument:
    usage = USAGE_BEFORE + CODE + USAGE_AFTER
    start = len(USAGE_BEFORE)
    return ParsedDocument(
        source="guide.md",
        doc_type="markdown",
        metadata=DocumentMetadata(title="Toolkit guide"),
        sections=[
            Section("A short introduction.", heading_path=["Guide"]),
            Section(INSTALL, heading_path=["Guide", "Install"]),
            Section(usage, heading_path=["Guide", "Usage"], protected=[(start, start + len(CODE))]),
        ],
    )


def text_document() -> ParsedDocument:
    return ParsedDocument(
        source="notes/notes.txt",
        doc_type="text",
        metadata=DocumentMetadata(title="notes", encoding="utf-8"),
        sections=[Section(NOTES)],
    )


DOCUMENTS = [pdf_document, markdown_document, text_document]


@pytest.fixture
def settings() -> DocumentProcessingConfig:
    """The structure-derived kinds only; topic and cloze records have tests of their own."""
    return DocumentProcessingConfig(
        chunk_size=120, overlap_size=40, min_chunk_size=10, record_kinds=["section", "continuation"]
    )


@pytest.fixture
def chunker(settings: DocumentProcessingConfig) -> Chunker:
    return Chunker(settings)


def _type_shape(value: Any) -> Any:
    """The JSON type of a value; lists by their item type."""
    if isinstance(value, dict):
        return {key: _type_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return ["list", sorted({type(item).__name__ for item in value})]
    return type(value).__name__


# --------------------------------------------------------------------------------------------------
# Chunk records
# --------------------------------------------------------------------------------------------------

OPTIONAL_TEXT = {"author", "created", "modified", "encoding"}


def test_chunk_records_share_one_schema(chunker: Chunker) -> None:
    records = [record for make in DOCUMENTS for record in chunker.chunk_document(make())]
    assert {record["type"] for record in records} == {"pdf", "markdown", "text"}
    first = records[0]
    for record in records:
        json.dumps(record)  # JSON-serialisable as is
        assert record.keys() == first.keys()
        assert record["metadata"].keys() == first["metadata"].keys()
        for key in ("text", "source", "title", "type", "chunk_id"):
            assert isinstance(record[key], str)
        meta = record["metadata"]
        for key in ("chunk_index", "total_chunks", "char_start", "char_end", "section_index"):
            assert type(meta[key]) is int
        # No nulls and no empty lists: `datasets` would type such a column from them.
        assert meta["section_path"] and all(isinstance(h, str) for h in meta["section_path"])
        for key in ("page_start", "page_end", "page_count"):
            assert type(meta[key]) is int
        assert type(meta["ocr_confidence"]) is float
        for key in (*OPTIONAL_TEXT, "engine"):
            assert isinstance(meta[key], str)


@pytest.mark.parametrize("make", DOCUMENTS)
def test_chunk_ids_offsets_and_counts(chunker: Chunker, make) -> None:
    doc = make()
    records = chunker.chunk_document(doc)
    assert len(records) > len(doc.sections)  # the fixture texts are longer than one chunk
    for index, record in enumerate(records):
        meta = record["metadata"]
        assert record["chunk_id"] == f"{doc.source}#{index}"
        assert meta["chunk_index"] == index
        assert meta["total_chunks"] == len(records)
        section = doc.sections[meta["section_index"]]
        assert section.text[meta["char_start"] : meta["char_end"]] == record["text"]
        assert len(record["text"]) <= chunker.chunk_size
        assert meta["section_path"] == (section.heading_path or [doc.metadata.title])
        assert record["source"] == doc.source
        assert record["title"] == doc.metadata.title


def test_pdf_chunks_carry_their_page_and_engine(chunker: Chunker) -> None:
    records = chunker.chunk_document(pdf_document())
    by_page = {
        (r["metadata"]["page_start"], r["metadata"]["page_end"], r["metadata"]["engine"])
        for r in records
    }
    assert by_page == {(1, 1, "pdfplumber"), (2, 2, "pypdf")}
    meta = records[0]["metadata"]
    assert (meta["author"], meta["created"], meta["page_count"]) == (
        "A. Writer",
        "2024-01-02T03:04:05",
        2,
    )
    assert meta["encoding"] == ""


def test_chunks_never_cross_sections(chunker: Chunker) -> None:
    doc = markdown_document()
    for record in chunker.chunk_document(doc):
        assert record["text"] in doc.sections[record["metadata"]["section_index"]].text
    text_meta = chunker.chunk_document(text_document())[0]["metadata"]
    assert (text_meta["page_start"], text_meta["engine"], text_meta["encoding"]) == (0, "", "utf-8")


# --------------------------------------------------------------------------------------------------
# Instruction records
# --------------------------------------------------------------------------------------------------


def _instructions(settings: DocumentProcessingConfig, doc: ParsedDocument):
    """(chunk records, Alpaca records, chat records) of `doc` with these settings."""
    chunks = Chunker(settings).chunk_document(doc)
    alpaca, chat = document_instruction_records(doc, chunks, settings)
    return chunks, alpaca, chat


def test_section_records_answer_with_the_first_chunk_of_each_section(
    settings: DocumentProcessingConfig,
) -> None:
    doc = markdown_document()
    chunks, alpaca, _ = _instructions(settings, doc)
    sections = [record for record in alpaca if record["kind"] == "section"]
    assert len(sections) == len(doc.sections)
    for index, section in enumerate(doc.sections):
        first = next(c for c in chunks if c["metadata"]["section_index"] == index)
        (record,) = [r for r in sections if r["chunk_id"] == first["chunk_id"]]
        assert record["output"] == first["text"]
        assert record["input"] == ""
        assert record["instruction"] == (
            f'Write the section "{" > ".join(section.heading_path)}" of "Toolkit guide".'
        )


def test_documents_without_headings_get_no_section_records(
    settings: DocumentProcessingConfig,
) -> None:
    for make in (pdf_document, text_document):
        _, alpaca, _ = _instructions(settings, make())
        assert alpaca and all(record["kind"] == "continuation" for record in alpaca)


@pytest.mark.parametrize("make", DOCUMENTS)
def test_continuations_split_a_chunk_at_a_sentence_boundary(
    settings: DocumentProcessingConfig, make
) -> None:
    chunks, alpaca, _ = _instructions(settings, make())
    text_of = {chunk["chunk_id"]: chunk["text"] for chunk in chunks}
    continuations = [record for record in alpaca if record["kind"] == "continuation"]
    assert continuations
    for record in continuations:
        chunk = text_of[record["chunk_id"]]
        first, rest = record["input"], record["output"]
        assert record["instruction"] == "Continue the text."
        assert first and rest and first.strip() == first and rest.strip() == rest
        assert chunk.startswith(first) and chunk.endswith(rest)
        assert chunk[len(first) : len(chunk) - len(rest)].isspace()  # only the gap is dropped
        assert len(first) + len(rest) < len(chunk)  # input and output share no text
        first_sentences = {first[s:e] for s, e in sentence_spans(first)}
        rest_sentences = {rest[s:e] for s, e in sentence_spans(rest)}
        assert not first_sentences & rest_sentences


def test_continuation_splits_near_one_third() -> None:
    text = "Aa aa. Bb bb. Cc cc. Dd dd. Ee ee. Ff ff."
    doc = ParsedDocument("x.txt", "text", DocumentMetadata(title="x"), [Section(text)])
    settings = DocumentProcessingConfig(
        chunk_size=200, overlap_size=0, min_chunk_size=5, record_kinds=["continuation"]
    )
    _, alpaca, _ = _instructions(settings, doc)
    (record,) = alpaca
    assert (record["input"], record["output"]) == ("Aa aa. Bb bb.", "Cc cc. Dd dd. Ee ee. Ff ff.")


def test_no_continuation_for_one_sentence_or_tiny_chunks() -> None:
    doc = ParsedDocument(
        "x.txt",
        "text",
        DocumentMetadata(title="x"),
        [Section("Only one sentence here, with no end"), Section("Hi. Yo.")],
    )
    settings = DocumentProcessingConfig(
        chunk_size=200, overlap_size=0, min_chunk_size=5, record_kinds=["continuation"]
    )
    assert _instructions(settings, doc)[1:] == ([], [])


def test_code_block_is_not_split_for_a_continuation(settings: DocumentProcessingConfig) -> None:
    chunks, alpaca, _ = _instructions(settings, markdown_document())
    with_code = {chunk["chunk_id"] for chunk in chunks if CODE in chunk["text"]}
    records = [r for r in alpaca if r["kind"] == "continuation" and r["chunk_id"] in with_code]
    assert records
    for record in records:
        assert CODE in record["input"] or CODE in record["output"]


def test_chat_records_mirror_alpaca_records(settings: DocumentProcessingConfig) -> None:
    _, alpaca, chat = _instructions(settings, markdown_document())
    assert len(chat) == len(alpaca)
    for plain, messages in zip(alpaca, chat, strict=True):
        assert set(messages) == {"messages", "source", "chunk_id", "kind"}
        user, assistant = messages["messages"]
        prompt = plain["instruction"] + ("\n\n" + plain["input"] if plain["input"] else "")
        assert user == {"role": "user", "content": prompt}
        assert assistant == {"role": "assistant", "content": plain["output"]}
        for key in ("source", "chunk_id", "kind"):
            assert messages[key] == plain[key]


# --------------------------------------------------------------------------------------------------
# Loading the written files with `datasets`
# --------------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return str(path)


@pytest.fixture
def load_json(tmp_path: Path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()

    def load(files: list[str]):
        return datasets.load_dataset(
            "json", data_files=files, split="train", cache_dir=str(tmp_path / "cache")
        )

    return load


def test_chunk_files_of_every_type_load_together(
    chunker: Chunker, load_json, tmp_path: Path
) -> None:
    per_doc = [chunker.chunk_document(make()) for make in DOCUMENTS]
    mixed = _write_jsonl(tmp_path / "train.jsonl", [r for records in per_doc for r in records])
    loaded = load_json([mixed])
    assert len(loaded) == sum(len(records) for records in per_doc)
    assert loaded[0]["metadata"]["page_start"] == 1
    assert loaded[-1]["metadata"]["author"] == ""

    # One file per document, the text file (no author, no pages) first: with nulls or empty
    # lists `datasets` would type those columns from it and refuse the PDF's values.
    files = [
        _write_jsonl(tmp_path / f"{n}.jsonl", records)
        for n, records in enumerate(reversed(per_doc))
    ]
    loaded = load_json(files)
    assert len(loaded) == sum(len(records) for records in per_doc)
    assert {row["metadata"]["author"] for row in loaded} == {"", "A. Writer"}


def test_instruction_files_load(
    settings: DocumentProcessingConfig, load_json, tmp_path: Path
) -> None:
    alpaca, chat = [], []
    for make in DOCUMENTS:
        doc = make()
        _, plain, messages = _instructions(settings, doc)
        alpaca += plain
        chat += messages
    loaded = load_json([_write_jsonl(tmp_path / "alpaca.jsonl", alpaca)])
    assert loaded.column_names == [
        "instruction",
        "input",
        "output",
        "prompt",
        "completion",
        "source",
        "chunk_id",
        "kind",
    ]
    for row in loaded:
        assert row["prompt"].startswith(row["instruction"]) and row["completion"] == row["output"]
    assert len(loaded) == len(alpaca)
    loaded = load_json([_write_jsonl(tmp_path / "chat.jsonl", chat)])
    assert len(loaded) == len(chat)
    assert loaded[0]["messages"] == chat[0]["messages"]


# --------------------------------------------------------------------------------------------------
# Topic and cloze records: questions about each sentence, answered by the document's own text
# --------------------------------------------------------------------------------------------------

FACTS = (
    "The ferry Wenna Lorne was built in 1978 at the Haskett yard. The ferry leaves Calder Quay "
    "at 8:15 and an adult ticket costs 18 euros. The Isle of Brannoch lies north of the ferry "
    "route. Visitors say the Wenna Lorne is the slowest boat on the coast."
)


def fact_document(text: str = FACTS, title: str = "Island guide") -> ParsedDocument:
    return ParsedDocument(
        "guide.md", "markdown", DocumentMetadata(title=title), [Section(text, ["Ferry"])]
    )


def _fact_records(kinds=("topic", "cloze"), text: str = FACTS, phrasings: int = 2):
    doc = fact_document(text)
    settings = DocumentProcessingConfig(
        chunk_size=400,
        overlap_size=0,
        min_chunk_size=10,
        record_kinds=list(kinds),
        question_phrasings=phrasings,
    )
    return doc, _instructions(settings, doc)[1:]


def test_key_terms_are_names_numbers_with_units_and_repeated_content_words() -> None:
    from document_processing.converters.key_terms import key_terms
    from document_processing.converters.languages import FUNCTION_WORDS

    sentence = "The ferry Wenna Lorne leaves Calder Quay at 8:15 and a ticket costs 18 euros."
    terms = [
        t.text for t in key_terms(sentence, FUNCTION_WORDS["en"], frozenset(), frozenset({"ferry"}))
    ]
    assert terms == ["Wenna Lorne", "Calder Quay", "8:15", "18 euros"]  # names, numbers first
    plain = "The ferry waits at the ticket office."
    terms = [t.text for t in key_terms(plain, FUNCTION_WORDS["en"], frozenset(), {"ferry"})]
    # A run of content words is a term when it holds a word the document repeats; "ticket
    # office" occurs once here, which is most often a passing detail.
    assert terms == ["ferry waits"]
    joined = key_terms("We sailed to the Isle of Brannoch.", FUNCTION_WORDS["en"], frozenset())
    assert [t.text for t in joined] == ["Isle of Brannoch"]
    # A capitalised first word is a name only when the document capitalises it mid-sentence too.
    first = key_terms("Visitors love Ostrelby.", FUNCTION_WORDS["en"], frozenset())
    assert [t.text for t in first] == ["Ostrelby"]


def test_topic_answers_are_sentences_of_the_document_that_hold_the_term() -> None:
    doc, (alpaca, chat) = _fact_records(kinds=("topic",))
    assert alpaca and {r["kind"] for r in alpaca} == {"topic"}
    sentences = [s.strip() + "." for s in FACTS.split(".") if s.strip()]
    for record in alpaca:  # grounded: every answer is sentences copied from the document
        assert record["input"] == ""
        assert all(part + "." in sentences for part in record["output"][:-1].split(". "))
    per_sentence = [
        r
        for r in alpaca
        if not r["instruction"].startswith("Tell me everything") and ", " not in r["instruction"]
    ]
    for record in per_sentence:
        term = record["instruction"].split("about ", 1)[1].rstrip("?.")
        assert term.casefold() in record["output"].casefold()
    # Each sentence is asked about under two of its terms, in two different wordings.
    built = [r for r in per_sentence if r["output"].startswith("The ferry Wenna Lorne was built")]
    assert len(built) == 2 and len({r["instruction"].split(" about")[0] for r in built}) == 2
    # A name mentioned in two sentences gets an overview answered by both.
    (overview,) = [r for r in alpaca if r["instruction"] == "Tell me everything about Wenna Lorne."]
    assert overview["output"].startswith("The ferry Wenna Lorne was built")
    assert overview["output"].endswith("slowest boat on the coast.")
    assert [r["messages"][1]["content"] for r in chat] == [r["output"] for r in alpaca]


def test_narrowed_topics_name_the_subject_with_two_more_words_of_the_sentence() -> None:
    from document_processing.converters.instruction_records import NARROWED_QUESTIONS

    _, (alpaca, _) = _fact_records(kinds=("topic",))
    narrowed = [r for r in alpaca if ", " in r["instruction"]]
    sentence = "The ferry leaves Calder Quay at 8:15 and an adult ticket costs 18 euros."
    mine = [r for r in narrowed if r["output"] == sentence]
    assert len(mine) == NARROWED_QUESTIONS
    words = {"ferry", "leaves", "Calder", "Quay", "adult", "ticket", "costs", "euros"}
    pairs = set()
    for record in mine:
        term = record["instruction"].split("about ", 1)[1].rstrip("?.")
        # What the sentence is about (the ferry of the sentence before), then two of its own
        # content words: no function word, no number.
        about, first, second = term.split(", ")
        assert about == "Wenna Lorne" and {first, second} <= words
        pairs.add((first, second))
    assert len(pairs) == NARROWED_QUESTIONS  # each question with another pair
    # Every sentence with two content words besides its subject gets them, answered by itself.
    assert {r["output"] for r in narrowed} == {s.strip() + "." for s in FACTS.split(".")[:-1]}


def test_question_phrasings_sets_the_topic_records_per_sentence() -> None:
    _, (one, _) = _fact_records(kinds=("topic",), phrasings=1)
    _, (three, _) = _fact_records(kinds=("topic",), phrasings=3)
    assert len(one) < len(three)


def test_cloze_records_blank_a_name_or_number_that_the_answer_fills_back() -> None:
    from document_processing.converters.instruction_records import BLANK

    _, (alpaca, _) = _fact_records(kinds=("cloze",))
    answers = {r["output"] for r in alpaca}
    assert {"1978", "8:15", "18 euros", "Wenna Lorne"} <= answers
    for record in alpaca:
        blanked = record["instruction"].split(": ", 1)[1]
        assert blanked.count(BLANK) == 1
        assert blanked.replace(BLANK, record["output"]) in FACTS


def test_question_records_ask_for_each_fact_in_the_words_of_its_clause() -> None:
    _, (alpaca, _) = _fact_records(kinds=("question",))
    assert alpaca and {r["kind"] for r in alpaca} == {"question"}
    asked = {r["instruction"]: r["output"] for r in alpaca}
    built = "The ferry Wenna Lorne was built in 1978 at the Haskett yard."
    leaves = "The ferry leaves Calder Quay at 8:15 and an adult ticket costs 18 euros."
    # A year, a clock time, a count with its unit and a name each get their question word; the
    # answer is the document's sentence that holds the fact.
    assert asked["The ferry Wenna Lorne was built in which year at the Haskett yard?"] == built
    assert asked["The ferry what was built in 1978 at the Haskett yard?"] == built
    # A sentence that opens with a function word and no name of its own ("The ferry leaves
    # ...") is about the subject of the sentence before it, which the question names.
    when = (
        "Wenna Lorne: The ferry leaves Calder Quay at what time and an adult ticket costs 18 euros?"
    )
    assert asked[when] == leaves
    # A long sentence is cut to the words around the fact.
    price = "Wenna Lorne: leaves Calder Quay at 8:15 and an adult ticket costs how many euros?"
    assert asked[price] == leaves
    assert asked["The what lies north of the ferry route?"] == (
        "The Isle of Brannoch lies north of the ferry route."
    )
    for question, answer in asked.items():
        assert answer in FACTS and answer != question.rstrip("?") + "."


def test_a_question_without_a_name_says_which_section_it_is_about() -> None:
    text = "The tower is 31 metres tall. The Wenna Lorne sails at 8:15 from the Calder Quay."
    _, (alpaca, _) = _fact_records(kinds=("question",), text=text)
    asked = [r["instruction"] for r in alpaca]
    # "The tower" alone does not say which tower: the section's heading does.
    assert "Ferry: The tower is how many metres tall?" in asked
    assert "The Wenna Lorne sails at what time from the Calder Quay?" in asked


def test_the_question_is_the_clause_that_holds_the_fact() -> None:
    text = (
        "Its only town is Ostrelby, on the eastern shore, home to around 1,140 people all year "
        "round. The Wenna Lorne leaves at 7:30 each day."
    )
    _, (alpaca, _) = _fact_records(kinds=("question",), text=text)
    asked = {r["instruction"]: r["output"] for r in alpaca}
    # Commas before a space end a clause; the one inside "1,140" and the colon of "7:30" do not.
    ostrelby, ferry = text[: text.index(" The Wenna")], "The Wenna Lorne leaves at 7:30 each day."
    assert asked["Ostrelby: home to around how many people all year round?"] == ostrelby
    assert asked["The Wenna Lorne leaves at what time each day?"] == ferry
    # Each fact is also asked in the words of its whole sentence: a second wording.
    whole = (
        "Its only town is Ostrelby, on the eastern shore, home to around how many people all "
        "year round?"
    )
    assert asked[whole] == ostrelby
    assert sum("at what time" in question for question in asked) == 1  # one clause: one question


def test_dates_are_asked_as_dates() -> None:
    _, (alpaca, _) = _fact_records(
        kinds=("question",), text="Membership runs from 1 March each year."
    )
    assert [r["instruction"] for r in alpaca] == [
        "Ferry: Membership runs from which date each year?"
    ]


def test_records_are_worded_in_the_document_language() -> None:
    german = (
        "Die Fähre Wenna Lorne wurde im Jahr 1978 in der Werft von Haskett gebaut. Die Fähre "
        "fährt um 8:15 ab, und eine Karte kostet 18 Euro. Die Wenna Lorne ist das langsamste "
        "Boot der Küste, und sie ist grün."
    )
    _, (alpaca, _) = _fact_records(kinds=("topic", "question", "cloze"), text=german)
    questions = [r["instruction"] for r in alpaca]
    assert any(q.startswith("Was sagt der Text über") for q in questions)
    assert any(q.startswith("Ergänze die Lücke") for q in questions)
    assert "Die Fähre Wenna Lorne wurde im Jahr welchem Jahr in der Werft von Haskett gebaut?" in (
        questions
    )
    assert not any("What" in q or "Fill in" in q for q in questions)


def test_a_language_without_a_list_falls_back_to_the_words_every_sentence_shares() -> None:
    from document_processing.converters.languages import (
        detect_language,
        statistical_function_words,
    )
    from document_processing.converters.sentences import document_sentences

    subjects = ["Lautta", "Majakka", "Satama", "Museo", "Kirkko", "Tori", "Silta", "Saari"]
    colours = ["vihreä", "punainen", "harmaa", "valkoinen", "sininen", "musta", "keltainen"]
    finnish = " ".join(
        f"{subject} on {colours[n % len(colours)]} ja se on {1900 + 7 * n} rakennettu."
        for n, subject in enumerate(subjects)
    )
    doc = fact_document(finnish)
    sentences = document_sentences(doc)
    assert detect_language([w for s in sentences for w in s.text.split()]) is None
    common = statistical_function_words([s.text for s in sentences])
    assert {"on", "ja", "se"} <= common and not {"lautta", "majakka"} & common
    _, (alpaca, _) = _fact_records(kinds=("topic",), text=finnish)
    assert alpaca and all(r["output"] in finnish for r in alpaca)


def test_a_sentence_cut_by_a_page_break_is_joined_again() -> None:
    from document_processing.converters.sentences import document_sentences

    def pdf(second: str, pages: tuple[int, int] = (1, 2)) -> ParsedDocument:
        first = "The survey began in June. Silt washes off the Gallow plantation, which was planted"
        sections = [Section(first, ["Causes"], [pages[0]]), Section(second, ["Causes"], [pages[1]])]
        return ParsedDocument("report.pdf", "pdf", DocumentMetadata(title="Report"), sections)

    texts = [s.text for s in document_sentences(pdf("in 1971, and clogs the gravel. Trout went."))]
    assert texts == [
        "The survey began in June.",
        "Silt washes off the Gallow plantation, which was planted in 1971, and clogs the gravel.",
        "Trout went.",
    ]
    # A new sentence on the next page, or a section that is not on the next page, stays apart.
    assert len(document_sentences(pdf("In 1971 it was planted."))) == 3
    assert len(document_sentences(pdf("in 1971, and it clogs.", pages=(1, 3)))) == 3


def test_record_kinds_come_from_the_config_and_are_range_checked() -> None:
    from shared_utils.errors import ConfigurationError

    settings = DocumentProcessingConfig(record_kinds=["cloze"], question_phrasings=3)
    doc = fact_document()
    _, alpaca, _ = _instructions(settings, doc)
    assert {r["kind"] for r in alpaca} == {"cloze"}
    for bad in (["quiz"], []):
        with pytest.raises(ConfigurationError, match="document_processing.record_kinds"):
            DocumentProcessingConfig(record_kinds=bad).check()
    with pytest.raises(ConfigurationError, match="document_processing.question_phrasings"):
        DocumentProcessingConfig(question_phrasings=0).check()


def test_extract_record_kinds_flag(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Island guide\n\n## Ferry\n\n" + FACTS, encoding="utf-8")
    out = tmp_path / "out"
    status, _, _ = run_main("extract", docs, out, "--instruction-format", "--record-kinds", "topic")
    assert status == 0
    kinds = {json.loads(line)["kind"] for line in (out / "chat" / "train.jsonl").open()}
    assert kinds == {"topic"}
    status, _, err = run_main("extract", docs, out, "--record-kinds", "quiz")
    assert status == 2 and "quiz: use one or more of section, continuation, topic, question" in err
