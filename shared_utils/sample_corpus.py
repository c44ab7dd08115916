"""The sample corpus: a compost handbook, a worm-bin guide and workshop notes, with hand-written
instruction, chat and question records about them.

Plain data, read by two jobs: `document_processing.samples` writes it as documents and data sets
(`create-samples`), and `training_methods.transfer_learning.tiny_model` trains the tiny model's
tokenizer on its text. It lives here so that neither package imports the other for it.
"""

from __future__ import annotations

# The vocabulary the benchmarks draw generated prose from (scripts/benchmark_extract.py,
# scripts/benchmark_parsers.py): the sample corpus's subject, so generated documents read alike.
PROSE_WORDS = (
    "compost soil microorganisms bacteria fungi decompose organic matter carbon nitrogen moisture "
    "oxygen temperature layers browns greens leaves straw cardboard peelings coffee grounds grass "
    "turning aeration pathogens seeds finished crumbly structure nutrients garden beds containers "
    "worms castings bedding harvest sieve screen ratio volume pile heat centre weeks months"
).split()

PDF_TITLE = "Community Compost Handbook"
PDF_AUTHOR = "Riverside Garden Cooperative"

# Each inner list is one PDF page; each string one paragraph.
PDF_PAGES: list[list[str]] = [
    [
        "Composting turns kitchen scraps and garden trimmings into a dark, crumbly material that "
        "feeds the soil. Microorganisms do the work: bacteria and fungi break down organic matter, "
        "and larger decomposers such as worms and beetles finish the job.",
        "A healthy pile needs four things in balance: carbon-rich browns, nitrogen-rich greens, "
        "moisture and oxygen. Dry leaves, straw and shredded cardboard are browns. Vegetable "
        "peelings, coffee grounds and fresh grass clippings are greens.",
        "A good starting ratio is about three parts browns to one part greens by volume. Too many "
        "greens make the pile wet and smelly; too many browns make it slow.",
    ],
    [
        "Choose a level, well-drained spot that is easy to reach in every season. Partial shade "
        "keeps the pile from drying out in summer, and a location near the kitchen garden saves "
        "carrying finished compost across the yard.",
        "Build the pile in layers. Start with coarse material such as twigs to let air in from "
        "below, then alternate browns and greens. Each new addition of kitchen scraps should be "
        "covered with a layer of browns to discourage flies.",
        "The pile should be as damp as a wrung-out sponge. Squeeze a handful: if water drips out, "
        "add browns; if it crumbles apart, add water while turning.",
    ],
    [
        "Turning the pile every one to two weeks supplies oxygen and speeds decomposition. A "
        "well-managed pile heats up to between 55 and 65 degrees Celsius in its centre, which "
        "kills most weed seeds and pathogens.",
        "A pile that does not heat up is usually too small, too dry or short of greens. A pile "
        "that smells of ammonia has too many greens; a pile that smells rotten lacks oxygen.",
        "Never add meat, dairy, oily food or pet waste to a home compost pile. They attract "
        "rodents and can carry pathogens that a small pile does not reliably destroy.",
    ],
    [
        "Compost is finished when it is dark, smells of forest soil and the original materials "
        "can no longer be recognised. Depending on management this takes between two months and "
        "a year.",
        "Sieve the finished compost through a screen with holes of about one centimetre. "
        "Unfinished pieces go back into the next pile as a starter, since they carry the "
        "microorganisms that begin the process again.",
        "Spread two to five centimetres of compost over garden beds in spring, or mix one part "
        "compost with three parts soil for containers. Compost improves soil structure, holds "
        "water and releases nutrients slowly.",
    ],
]

MARKDOWN_GUIDE = """---
title: Worm Bin Guide
author: Riverside Garden Cooperative
date: 2024-03-15
tags: [vermicompost, worms, indoor]
---

# Worm Bin Guide

Worm composting, or vermicomposting, uses red wiggler worms to turn food scraps into castings.
It works indoors, all year, in a bin no bigger than a storage box.

## Setting Up

### Choosing a Bin

Use an opaque plastic or wooden bin about 30 centimetres deep. Drill ventilation holes in the
lid and drainage holes in the bottom, and set the bin on bricks over a tray.

### Bedding

Fill the bin with moist shredded newspaper or cardboard mixed with a handful of garden soil.
The bedding should feel like a wrung-out sponge. <span style="color:red">Never use glossy
paper</span>, which can contain inks that harm worms.

## Feeding

Feed the worms small amounts of chopped fruit and vegetable scraps once or twice a week.
Bury each feeding under the bedding to keep fruit flies away. See the
[cooperative's feeding chart](https://example.org/feeding) for more ideas.

| Food | Feed? | Notes |
|------|:-----:|-------|
| Vegetable peelings | yes | chop them small |
| Coffee grounds | yes | filters too |
| Citrus peel | little | acidic |
| Meat or dairy | no | attracts pests |

## Monitoring

Log the bin's temperature and moisture each week. This short script flags readings outside
the range worms like:

```python
def check_reading(temperature_c: float, moisture_pct: float) -> list[str]:
    problems = []
    if not 15 <= temperature_c <= 25:
        problems.append("temperature outside 15-25 C")
    if not 60 <= moisture_pct <= 80:
        problems.append("moisture outside 60-80 %")
    return problems
```

## Harvesting

After three to four months, move the finished castings to one side and add fresh bedding and
food to the other. Within two weeks most worms migrate to the fresh side, and the castings can
be scooped out and used as a rich soil amendment.
"""

TEXT_NOTES = (
    "Notes from the autumn workshop – compost café\n"
    "\n"
    "Our volunteers met at the community café to compare results from this year's piles. "
    "Marie's “lasagne” method, with thin alternating layers, produced finished compost in "
    "eleven weeks, the fastest of the season.\n"
    "\n"
    "The naïve approach of piling everything at once and never turning it still worked, but "
    "took almost a year and the pile smelled sour after heavy rain.\n"
    "\n"
    "Next season we will test leaf mould: autumn leaves alone, kept moist in wire cages, left "
    "for eighteen months. Leaf mould is low in nutrients but excellent for soil structure.\n"
)

INSTRUCTIONS: list[dict[str, str]] = [
    {
        "instruction": "What ratio of browns to greens should a new compost pile start with?",
        "input": "",
        "output": "Start with about three parts browns to one part greens by volume.",
    },
    {
        "instruction": "Classify each material as a brown or a green.",
        "input": "dry leaves, coffee grounds, straw, grass clippings",
        "output": "Browns: dry leaves, straw. Greens: coffee grounds, grass clippings.",
    },
    {
        "instruction": "How moist should a compost pile be?",
        "input": "",
        "output": "As damp as a wrung-out sponge: no water should drip out when you squeeze it.",
    },
    {
        "instruction": "My compost pile smells of ammonia. What is wrong?",
        "input": "",
        "output": "It has too many greens. Mix in browns such as dry leaves or cardboard.",
    },
    {
        "instruction": "Why should meat and dairy stay out of a home compost pile?",
        "input": "",
        "output": "They attract rodents and can carry pathogens a small pile does not destroy.",
    },
    {
        "instruction": "How do you know compost is finished?",
        "input": "",
        "output": "It is dark, smells of forest soil, and the original materials are gone.",
    },
    {
        "instruction": "Which worms are used in a worm bin?",
        "input": "",
        "output": "Red wiggler worms.",
    },
    {
        "instruction": "How often should worms in a bin be fed?",
        "input": "",
        "output": "Once or twice a week, small amounts of chopped scraps buried in the bedding.",
    },
]

CHATS: list[list[dict[str, str]]] = [
    [
        {"role": "user", "content": "How often should I turn my compost pile?"},
        {"role": "assistant", "content": "Every one to two weeks, to supply oxygen."},
    ],
    [
        {"role": "user", "content": "My pile is not heating up. Why?"},
        {
            "role": "assistant",
            "content": "It is usually too small, too dry or short of greens.",
        },
    ],
    [
        {"role": "user", "content": "What temperature does a good pile reach?"},
        {"role": "assistant", "content": "Between 55 and 65 degrees Celsius in its centre."},
        {"role": "user", "content": "Does that kill weed seeds?"},
        {"role": "assistant", "content": "Yes, most weed seeds and pathogens."},
    ],
    [
        {"role": "user", "content": "How do I harvest worm castings?"},
        {
            "role": "assistant",
            "content": "Move the castings to one side, add fresh food to the other, wait two "
            "weeks for the worms to migrate, then scoop the castings out.",
        },
    ],
    [
        {"role": "user", "content": "How much compost should I spread on a bed?"},
        {"role": "assistant", "content": "Two to five centimetres, in spring."},
    ],
]


# Questions about the documents for `evaluate`, worded unlike the text; `answers` hold the fact.
QUESTIONS: list[dict[str, object]] = [
    {
        "question": "How long did Marie's lasagne compost take to finish?",
        "answers": ["eleven weeks"],
    },
    {
        "question": "How long will the leaf mould test at the workshop run?",
        "answers": ["eighteen months"],
    },
    {
        "question": "How deep should the container for a worm bin be?",
        "answers": ["30 centimetres", "30 cm"],
    },
    {
        "question": "What size should the holes of the compost sieve be?",
        "answers": ["one centimetre", "1 cm"],
    },
    {
        "question": "How hot does the middle of a well-kept compost heap get?",
        "answers": ["55 and 65", "55 to 65", "55-65"],
    },
    {
        "question": "Which kind of worm goes into a vermicomposting bin?",
        "answers": ["red wiggler"],
    },
]


def sample_corpus_texts() -> list[str]:
    """Every text of the sample corpus, to train the tiny tokenizer on."""
    texts = [paragraph for page in PDF_PAGES for paragraph in page]
    texts += [MARKDOWN_GUIDE, TEXT_NOTES]
    for record in INSTRUCTIONS:
        texts += [record["instruction"], record["input"], record["output"]]
    texts += [message["content"] for chat in CHATS for message in chat]
    return [text for text in texts if text]
