"""The languages instruction records are worded in: function words, question templates, and
finding a document's language from its words.

A document's language is the one whose short list of function words covers most of its words;
for a language without a list, the words most sentences share stand in for its function words
(`statistical_function_words`), and the questions are worded in English.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# Words of a sentence: letters/digits, joined by inner punctuation ("7:40", "1,200", "re-entry").
WORD = re.compile(r"\w+(?:[’'.,:/-]\w+)*")


def fold(word: str) -> str:
    """The form words are compared in: NFKC-normalised and case-folded."""
    return unicodedata.normalize("NFKC", word).casefold()


# Function words of the languages with templates; enough to find them in running text.
FUNCTION_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        """a about above after again against all also although am an and any are as at be
        because been before being below between both but by can could did do does doing down
        during each either every few for from further had has have having he her here hers
        herself him himself his how however i if in into is it its itself just may me might more
        most much must my myself neither no nor not now of off on once only or other our ours
        ourselves out over own same shall she should so some such than that the their theirs them
        themselves then there these they this those through to too under until up upon us very
        was we were what when where whether which while who whom whose why will with within
        without would yet you your yours yourself yourselves one two three""".split()
    ),
    "de": frozenset(
        """aber alle als also am an auch auf aus bei bin bis bist da damit dann das dass dem den
        der des die dies diese dieser dieses doch dort du durch ein eine einem einen einer eines
        er es für hat hatte ich ihr im in ist ja jede jeder jedes kann kein keine man mit muss
        nach nicht noch nur ob oder ohne sehr sein seine sich sie sind so über um und uns unter
        vom von vor war waren was wenn wer wie wir wird wo zu zum zur""".split()
    ),
    "fr": frozenset(
        """à au aux avec ce ces cet cette dans de des du elle elles en est et été être il ils
        je la le les leur leurs lui mais me même mes moi mon ne nos notre nous on ont ou où par
        pas pour qu que qui sa sans se ses son sont sur ta te tes toi ton tu un une vos votre
        vous y était sont l d qu c n s j""".split()
    ),
    "es": frozenset(
        """a al algo como con cual de del desde donde el ella ellas ellos en entre era es esa
        ese eso esta este esto está están fue ha hay la las le les lo los más me mi muy no nos o
        para pero por que quien se ser si sin sobre son su sus también te tu un una uno y
        ya""".split()
    ),
    "it": frozenset(
        """a ad al alla alle anche che chi ci come con da dal dalla dei del della delle di e è
        era gli ha hanno i il in io la le lei lo loro lui ma mi ne nel nella non o per più quale
        quando questa questo se si sono su sua sue suo suoi tra un una uno""".split()
    ),
    "pt": frozenset(
        """a ao aos as com como da das de do dos e é ela ele eles em entre era essa esse esta
        este foi há isso mais mas me muito na nas não no nos o os ou para pela pelo por que quem
        se sem ser seu sua são também te um uma""".split()
    ),
    "nl": frozenset(
        """aan al als bij dat de den der deze die dit door een en er had heb heeft het hij hoe
        ik in is je kan maar met na naar niet nog of om ook op over te tot uit van voor was wat
        we wel werd wie wij worden zal ze zich zijn zo""".split()
    ),
}


# Per language: topic question phrasings ({term}, {context}: the heading of the sentence's section,
# or the document's title), the overview question ({term}), the cloze instruction ({context},
# {sentence}) and the question words of `question` records: for a count ({unit} follows), a year,
# a date, a clock time and a name.
@dataclass(frozen=True)
class LanguageTemplates:
    topic: tuple[str, ...]
    overview: str
    cloze: str
    count: str
    year: str
    date: str  # a number and a capitalised word: "1 March"
    time: str
    name: str
    question_mark: tuple[str, str] = ("", "?")  # what opens and closes a question


TEMPLATES: dict[str, LanguageTemplates] = {
    "en": LanguageTemplates(
        topic=(
            "What does the text say about {term}?",
            'What does "{context}" say about {term}?',
            "What do you know about {term}?",
        ),
        overview="Tell me everything about {term}.",
        cloze='Fill in the blank ("{context}"): {sentence}',
        count="how many {unit}",
        year="which year",
        date="which date",
        time="what time",
        name="what",
    ),
    "de": LanguageTemplates(
        topic=(
            "Was sagt der Text über {term}?",
            "Was steht in „{context}“ über {term}?",
            "Was weißt du über {term}?",
        ),
        overview="Erzähl mir alles über {term}.",
        cloze="Ergänze die Lücke („{context}“): {sentence}",
        count="wie viele {unit}",
        year="welchem Jahr",
        date="welchem Datum",
        time="wie viel Uhr",
        name="was",
    ),
    "fr": LanguageTemplates(
        topic=(
            "Que dit le texte à propos de {term} ?",
            "Que dit « {context} » à propos de {term} ?",
            "Que sais-tu de {term} ?",
        ),
        overview="Dis-moi tout sur {term}.",
        cloze="Complète le blanc (« {context} ») : {sentence}",
        count="combien de {unit}",
        year="quelle année",
        date="quelle date",
        time="quelle heure",
        name="quoi",
        question_mark=("", " ?"),
    ),
    "es": LanguageTemplates(
        topic=(
            "¿Qué dice el texto sobre {term}?",
            "¿Qué dice «{context}» sobre {term}?",
            "¿Qué sabes de {term}?",
        ),
        overview="Cuéntame todo sobre {term}.",
        cloze="Completa el espacio en blanco («{context}»): {sentence}",
        count="cuántos {unit}",
        year="qué año",
        date="qué fecha",
        time="qué hora",
        name="qué",
        question_mark=("¿", "?"),
    ),
    "it": LanguageTemplates(
        topic=(
            "Che cosa dice il testo su {term}?",
            "Che cosa dice «{context}» su {term}?",
            "Che cosa sai di {term}?",
        ),
        overview="Dimmi tutto su {term}.",
        cloze="Completa lo spazio vuoto («{context}»): {sentence}",
        count="quanti {unit}",
        year="quale anno",
        date="quale data",
        time="che ora",
        name="che cosa",
    ),
    "pt": LanguageTemplates(
        topic=(
            "O que diz o texto sobre {term}?",
            "O que diz «{context}» sobre {term}?",
            "O que sabes sobre {term}?",
        ),
        overview="Conta-me tudo sobre {term}.",
        cloze="Preenche o espaço em branco («{context}»): {sentence}",
        count="quantos {unit}",
        year="que ano",
        date="que data",
        time="que horas",
        name="o quê",
    ),
    "nl": LanguageTemplates(
        topic=(
            "Wat zegt de tekst over {term}?",
            "Wat zegt „{context}” over {term}?",
            "Wat weet je over {term}?",
        ),
        overview="Vertel me alles over {term}.",
        cloze="Vul de lege plek in („{context}”): {sentence}",
        count="hoeveel {unit}",
        year="welk jaar",
        date="welke datum",
        time="hoe laat",
        name="wat",
    ),
}
DEFAULT_LANGUAGE = "en"


def detect_language(words: Sequence[str]) -> str | None:
    """The language whose function words make up most of `words`: at least 15% of them, and
    at least four different ones (a single shared short word such as "on" proves nothing)."""
    if not words:
        return None
    folded = Counter(fold(word) for word in words)
    total = sum(folded.values())
    best, best_share = None, 0.15
    for language, function_words in FUNCTION_WORDS.items():
        found = [word for word in folded if word in function_words]
        share = sum(folded[word] for word in found) / total
        if len(found) >= 4 and share > best_share:
            best, best_share = language, share
    return best


def statistical_function_words(texts: Sequence[str]) -> frozenset[str]:
    """For a language without a list: the words found in 30% or more of the sentences `texts`
    (and in three at least); in running text these are articles, prepositions and auxiliaries."""
    spread: Counter[str] = Counter()
    for text in texts:
        spread.update({fold(m.group()) for m in WORD.finditer(text)})
    floor = max(3, math.ceil(0.3 * len(texts)))
    return frozenset(word for word, count in spread.items() if count >= floor)
