"""Instruction records that teach a model what a document says, built from the document alone.

Every answer is the document's own text: no record invents anything, and no model is needed. A
small model learns to answer questions about a text when it has seen each fact reached from
several directions, so each fact is approached from several sides (the kinds, `kind` in every
record):

- section: "Write the section "<heading path>" of "<title>"." answered by the section's first
  chunk. Recitation: the text in its own order.
- continuation: the first third of a chunk (cut at a sentence boundary) continued by the rest.
- topic: a question about one key term of the document (a name, a number with its unit, a run of
  content words) answered by the document's sentences that mention it, in document order. Each
  term is asked in `phrasings` differently worded questions, so the model learns to reach the
  sentences from the term, not from one fixed wording. Narrowed topic questions name what the
  sentence is about with two more of its content words ("What do you know about Tamsin Head
  Lighthouse, tower, lantern?"), each pair another: a question a person asks names the subject
  and a word or two of the fact, and these teach the model to reach the one sentence of a
  subject that such words point to (on the knowledge benchmark: 52 of 118 questions answered
  with them, 40 without).
- question: the clause of a sentence that holds a name or number, with a question word in its
  place ("Brannow Fell: a heather-covered hill of how many metres?"), and the whole sentence
  asked the same way (a second wording), answered by the sentence: the model learns to reach a
  sentence from a question about any of its facts and to answer with the document's own words,
  which also answers the questions about the sentence's other facts (an answer that is the fact
  alone taught SmolLM2-135M fewer facts: scripts/benchmark_knowledge.py). The question names
  what the sentence is about when the clause does not: the sentence's own first name, the
  subject of the sentence before ("She crosses ..."), or the section's heading.
- cloze: a sentence with one key term blanked out, answered by the term: retrieval of the fact
  itself from the rest of its sentence.

Sentences come from `sentences.document_sentences`, and the key terms of each from
`key_terms.key_terms`: a token with a digit (and the word after it when that word is not a
function word: "12 euros"), runs of capitalised words, and runs of content words. Function words
come from a short list per language (the language is the one whose list covers most of the
document's words); for a language without a list, the words that occur in the largest share of
the document's sentences stand in for them.
The questions of `topic`, `question` and `cloze` records are worded in the document's language
when `languages.py` has templates for it, else in English.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from document_processing.converters.key_terms import (
    MIN_TERM_CHARS,
    Term,
    has_digit,
    is_capitalised,
    key_terms,
)
from document_processing.converters.languages import (
    DEFAULT_LANGUAGE,
    FUNCTION_WORDS,
    TEMPLATES,
    WORD,
    detect_language,
    fold,
    statistical_function_words,
)
from document_processing.converters.sentences import Sentence, Span, document_sentences
from document_processing.records import ParsedDocument
from shared_utils.config import RECORD_KIND_NAMES

RecordKind = Literal["section", "continuation", "topic", "question", "cloze"]
RECORD_KINDS: tuple[RecordKind, ...] = RECORD_KIND_NAMES  # type: ignore[assignment]

NARROWED_QUESTIONS = 2  # narrowed topic questions per sentence, each with another pair of words
MAX_ANSWER_SENTENCES = 3  # a topic answer: the first sentences that mention the term

BLANK = "_____"


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def record_pair(
    instruction: str, input_text: str, output: str, source: str, chunk_id: str, kind: RecordKind
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One example as an Alpaca record and as a chat ("messages") record."""
    common = {"source": source, "chunk_id": chunk_id, "kind": kind}
    prompt = instruction + ("\n\n" + input_text if input_text else "")
    # prompt/completion repeat the pair in the form TRL's SFTTrainer and MLX-LM read as is.
    alpaca = {
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "prompt": prompt,
        "completion": output,
        **common,
    }
    chat = {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": output},
        ],
        **common,
    }
    return alpaca, chat


def _stable_index(text: str, modulo: int) -> int:
    return zlib.crc32(text.encode("utf-8")) % modulo


class FactRecordBuilder:
    """The `topic` and `cloze` records of one document."""

    def __init__(
        self, doc: ParsedDocument, chunks: Sequence[dict[str, Any]], phrasings: int
    ) -> None:
        self.doc = doc
        self.title = doc.metadata.title or doc.source
        self.chunks = chunks
        self.phrasings = phrasings
        self.sentences = document_sentences(doc)
        words = [m.group() for s in self.sentences for m in WORD.finditer(s.text)]
        self.language = detect_language(words)
        self.function_words = (
            FUNCTION_WORDS[self.language]
            if self.language
            else statistical_function_words([s.text for s in self.sentences])
        )
        self.templates = TEMPLATES[self.language or DEFAULT_LANGUAGE]
        counts = Counter(fold(word) for word in words)
        self.repeated = frozenset(word for word, count in counts.items() if count >= 2)
        self.mid_capitals = frozenset(
            fold(m.group())
            for s in self.sentences
            for k, m in enumerate(WORD.finditer(s.text))
            if k > 0 and is_capitalised(m.group())
        )

    def chunk_id(self, sentence: Sentence) -> str:
        """The id of the chunk that holds the start of `sentence`."""
        for record in self.chunks:
            meta = record["metadata"]
            if (
                meta["section_index"] == sentence.section_index
                and meta["char_start"] <= sentence.start < meta["char_end"]
            ):
                return record["chunk_id"]
        return self.chunks[0]["chunk_id"] if self.chunks else f"{self.doc.source}#0"

    def context(self, sentence: Sentence) -> str:
        """What a question about `sentence` is asked within: the heading of its section (what
        "the tower" of a sentence is), or the document's title for text before any heading."""
        path = self.doc.sections[sentence.section_index].heading_path
        heading = path[-1] if path else ""
        return heading if heading and fold(heading) != fold(self.title) else self.title

    def records(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """`topic` records: each sentence asked about under up to `phrasings` of its key terms
        (names first), each time in another wording, then narrowed to it by what it is about
        and two more of its words (`narrowed_topics`), and for every name the document mentions
        in two or more sentences, an overview answered by the first of them. `question` records:
        each sentence asked back with one of its names or numbers replaced by a question word,
        answered by the sentence. `cloze` records: each sentence with one of its names or
        numbers blanked out, answered by it."""
        pairs = []
        templates = self.templates
        names: dict[str, tuple[str, list[Sentence]]] = {}
        # What the sentences of a section are about: the first name of the latest sentence that
        # does not open with a function word ("Gullhaven Harbour is ...", not "She ...").
        subject: str | None = None
        subject_section = -1
        for sentence in self.sentences:
            terms = key_terms(sentence.text, self.function_words, self.mid_capitals, self.repeated)
            facts = [t for t in terms if _is_fact(t.text)]
            keys = [t for t in terms if is_capitalised(t.text) and not has_digit(t.text)]
            keys += [t for t in terms if not _is_fact(t.text)]
            where = (self.doc.source, self.chunk_id(sentence))
            context = self.context(sentence)
            first = _stable_index(sentence.text, len(templates.topic))
            for offset, term in enumerate(keys[: self.phrasings]):
                template = templates.topic[(first + offset) % len(templates.topic)]
                question = template.format(context=context, term=term.text)
                pairs.append(record_pair(question, "", sentence.text, *where, "topic"))
            for term in keys:
                if is_capitalised(term.text):
                    entry = names.setdefault(fold(term.text), (term.text, []))
                    if sentence not in entry[1]:
                        entry[1].append(sentence)
            own = [t for t in keys if self.is_name(t)]
            words = WORD.findall(sentence.text)
            opening = words and fold(words[0]) in self.function_words
            # "She crosses from Calder Quay": about the subject before, not its own first name.
            continues = opening and not (
                own and len(WORD.findall(sentence.text, 0, own[0].start)) < SUBJECT_WORDS
            )
            if sentence.section_index != subject_section:
                subject, subject_section = None, sentence.section_index
            if own and (subject is None or not continues):
                subject = own[0].text
            for term in facts:
                about = subject if subject and fold(subject) != fold(term.text) else context
                for question in self.fact_questions(sentence.text, term, about):
                    pairs.append(record_pair(question, "", sentence.text, *where, "question"))
                blanked = sentence.text[: term.start] + BLANK + sentence.text[term.end :]
                instruction = templates.cloze.format(context=context, sentence=blanked)
                pairs.append(record_pair(instruction, "", term.text, *where, "cloze"))
            about = subject or context
            for offset, question in enumerate(self.narrowed_topics(sentence.text, about), 1):
                template = templates.topic[(first + offset) % len(templates.topic)]
                question = template.format(context=context, term=question)
                pairs.append(record_pair(question, "", sentence.text, *where, "topic"))
        for term, mentioned in names.values():
            if len(mentioned) < 2:
                continue
            answer = " ".join(s.text for s in mentioned[:MAX_ANSWER_SENTENCES])
            question = templates.overview.format(term=term)
            where = (self.doc.source, self.chunk_id(mentioned[0]))
            pairs.append(record_pair(question, "", answer, *where, "topic"))
        return pairs

    def narrowed_topics(self, sentence: str, about: str) -> list[str]:
        """What `sentence` is about with two more of its content words, NARROWED_QUESTIONS times
        with another pair: "Tamsin Head Lighthouse, tower, lantern". Content words are the
        sentence's words that are not function words, numbers or words of `about`; a sentence
        with fewer than two gets none."""
        skip = {fold(word) for word in WORD.findall(about)}
        words: dict[str, str] = {}
        for word in WORD.findall(sentence):
            folded = fold(word)
            if len(word) < MIN_TERM_CHARS or has_digit(word) or folded in self.function_words:
                continue
            if folded not in skip:
                words.setdefault(folded, word)
        content = list(words.values())
        if len(content) < 2:
            return []
        first = _stable_index(sentence, len(content))
        pairs = []
        for k in range(NARROWED_QUESTIONS):
            a = content[(first + 2 * k) % len(content)]
            b = content[(first + 2 * k + 1) % len(content)]
            if a != b and f"{about}, {a}, {b}" not in pairs:
                pairs.append(f"{about}, {a}, {b}")
        return pairs

    def is_name(self, term: Term) -> bool:
        """Every word of `term` capitalised but its function words, and a first word of the
        sentence only when the document capitalises it mid-sentence too ("Nobody may ..." is not
        a name)."""
        words = term.text.split()
        if term.start == 0 and fold(words[0]) not in self.mid_capitals:
            return False
        return all(is_capitalised(w) or fold(w) in self.function_words for w in words)

    def fact_questions(self, sentence: str, term: Term, about: str) -> list[str]:
        """The questions whose answer is `term`, in two wordings: its clause of `sentence`
        (`fact_question`) and the whole sentence, when they differ."""
        short = self.fact_question(sentence, term, about, _clause(sentence, term))
        whole = self.fact_question(sentence, term, about, (0, len(sentence)))
        return [short] if whole == short else [short, whole]

    def fact_question(self, sentence: str, term: Term, about: str, span: Span) -> str:
        """A question whose answer is `term`: the `span` of `sentence` that holds it, with a
        question word in its place, after what the sentence is about when the span does not say
        it. "Brannow Fell: a heather-covered hill of how many metres?" for the clause of "The
        highest ground is Brannow Fell, a heather-covered hill of 212 metres."."""
        start, end = span
        text = sentence[start : term.start] + self.question_word(term) + sentence[term.end : end]
        text = text.strip(" .!;:,")
        if fold(about) not in fold(text):
            text = f"{about}: {text}"
        elif not text[:1].isupper() and start == 0:
            text = text[:1].upper() + text[1:]
        opening, closing = self.templates.question_mark
        return f"{opening}{text}{closing}"

    def question_word(self, term: Term) -> str:
        """The question word for a fact of `term`'s shape: a clock time, a year, a date, a count
        with its unit, or a name."""
        templates = self.templates
        first, *rest = term.text.split()
        if not has_digit(first):
            return templates.name
        if _CLOCK_TIME.fullmatch(first):
            return templates.time
        if _YEAR.fullmatch(first) and not rest:
            return templates.year
        if rest and is_capitalised(rest[0]):
            return templates.date
        return templates.count.format(unit=" ".join(rest)).strip()


def _clause(sentence: str, term: Term) -> Span:
    """The span of `sentence` between the punctuation marks around `term`, at most
    CLAUSE_WORDS words on each side; the whole sentence when that leaves too few words."""
    start = max((m.end() for m in _CLAUSE_MARK.finditer(sentence, 0, term.start)), default=0)
    following = _CLAUSE_MARK.search(sentence, term.end)
    end = following.start() if following else len(sentence)
    before = list(WORD.finditer(sentence, start, term.start))
    after = list(WORD.finditer(sentence, term.end, end))
    if len(before) + len(after) < MIN_CLAUSE_WORDS:
        return 0, len(sentence)
    if len(before) > CLAUSE_WORDS:
        start = before[-CLAUSE_WORDS].start()
    if len(after) > CLAUSE_WORDS:
        end = after[CLAUSE_WORDS - 1].end()
    return start, end


# A comma, semicolon or colon before a space (not "1,140" or "7:30"), brackets, bars and dashes.
_CLAUSE_MARK = re.compile(r"[,;:](?=\s)|[()|—–]")
CLAUSE_WORDS = 10
SUBJECT_WORDS = 3  # a name this close to the start of a sentence is what the sentence is about
MIN_CLAUSE_WORDS = 3
_CLOCK_TIME = re.compile(r"\d{1,2}[:.]\d{2}")
_YEAR = re.compile(r"1[0-9]{3}|20[0-9]{2}")


def _is_fact(text: str) -> bool:
    """A name or a number: what a question about the sentence most often asks for."""
    return has_digit(text) or is_capitalised(text)


__all__ = [
    "RECORD_KINDS",
    "FactRecordBuilder",
    "RecordKind",
    "record_pair",
]
