"""Training tokens: normalised rows in, token ids with response-only labels out, packed or not.

- `tokenize_rows` renders conversations with the tokenizer's chat template (or
  `DEFAULT_CHAT_TEMPLATE` when it has none), tokenises the text once with character offsets
  and labels only the response tokens (-100 elsewhere) unless `train_on_prompt`. Text that lies
  far beyond `max_length` tokens is cut before tokenising, so memory does not grow with a
  record. Each response keeps its end-of-turn token in the labels, and an EOS id is appended
  when the text does not end with one, so the model learns to stop. Labels come from character
  spans, never from comparing token ids with the pad id, so an EOS that doubles as padding is
  still learned.
- `pack_rows` concatenates examples up to `max_length` with `position_ids` restarting at 0 for
  each example and no attention mask: transformers then builds a block-diagonal causal mask from
  the position ids (`masking_utils.find_packed_sequence_indices`), so no token attends across an
  example boundary, and the first label of each example is -100 so no example learns to predict
  the next one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from shared_utils.chat_templates import ensure_chat_template, render_with_spans
from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

# Characters per token assumed when a text is cut before tokenising. Tokens of natural text average
# about 4 characters; a cut that leaves too few tokens is made again, longer.
CHARS_PER_TOKEN_GUESS = 16
_CUT_MARGIN_TOKENS = 8


def _messages_within(
    messages: Sequence[Mapping[str, str]], max_chars: int
) -> tuple[list[dict[str, str]], bool]:
    """The turns whose words can fall within the first `max_chars` characters of the rendered
    conversation, the last one cut there; and whether anything was cut.

    A rendered conversation holds every content in order, so a content that starts after
    `max_chars` characters of content renders after `max_chars` too. One later assistant turn
    is kept, empty, so the conversation still has a response to locate (beyond the cut).
    """
    kept: list[dict[str, str]] = []
    total = 0
    cut = False
    for index, message in enumerate(messages):
        room = max_chars - total
        if room <= 0:
            reply = next((m for m in messages[index:] if m["role"] == "assistant"), None)
            if reply is not None:
                kept.append({**reply, "content": ""})
            return kept, True
        content = message["content"]
        if len(content) > room:
            content, cut = content[:room], True
        kept.append({**message, "content": content})
        total += len(content)
    return kept, cut


@dataclass
class TokenizeStats:
    """Counts a user sees in the training summary."""

    examples: int = 0
    truncated: int = 0
    dropped_no_response: int = 0
    response_tokens: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ExampleTokenizer:
    """Turns normalised rows into `input_ids` and `labels` (see the module docstring)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        *,
        train_on_prompt: bool,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ConfigurationError(
                f"tokenizer of {tokenizer.name_or_path!r} has no EOS token; the model could not "
                "learn to stop — use a tokenizer that defines eos_token"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigurationError(
                f"tokenizer of {tokenizer.name_or_path!r} is not a fast tokenizer; response "
                "labels need character offsets — install `tokenizers` or use a fast tokenizer"
            )
        ensure_chat_template(tokenizer)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.train_on_prompt = train_on_prompt
        self.eos_id = int(tokenizer.eos_token_id)
        self.stop_ids = {self.eos_id, *(int(i) for i in stop_token_ids)}
        self.stats = TokenizeStats()

    def fingerprint(self) -> str:
        """Identifies this tokenisation, to key the Arrow cache of its output."""
        parts = [
            str(self.tokenizer.name_or_path),
            str(len(self.tokenizer)),
            str(self.tokenizer.chat_template),
            str(self.max_length),
            str(self.train_on_prompt),
            str(sorted(self.stop_ids)),
        ]
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]

    def text_and_spans(
        self, row: Mapping[str, Any], max_chars: int | None = None
    ) -> tuple[str, list[tuple[int, int]], bool, bool]:
        """Full text, trainable character spans, whether a trailing EOS must be appended, and
        whether the text was cut.

        With `max_chars`, the text (and every message in it) is cut to that many characters
        before it is rendered, so a huge record never reaches the tokenizer whole.
        """
        cut = False
        if row["messages"]:
            messages = row["messages"]
            if max_chars is not None:
                messages, cut = _messages_within(messages, max_chars)
            text, spans = render_with_spans(self.tokenizer, messages)
            append_eos = False
        else:
            prompt, completion = row["prompt"], row["completion"]
            if max_chars is not None and max(len(prompt), len(completion)) > max_chars:
                prompt, completion = prompt[:max_chars], completion[:max_chars]
                cut = True
            text = prompt + completion
            spans, append_eos = [(len(prompt), len(text))], True
        if max_chars is not None and len(text) > max_chars:
            text = text[:max_chars]
            spans = [(start, min(end, max_chars)) for start, end in spans if start < max_chars]
            cut = True
        return text, spans, append_eos, cut

    def _encode(self, texts: list[str], add_special: bool) -> tuple[list[Any], list[Any]]:
        """Token ids and character offsets of each text."""
        encoded = self.tokenizer(texts, add_special_tokens=add_special, return_offsets_mapping=True)
        return encoded["input_ids"], encoded["offset_mapping"]

    def __call__(self, batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
        """A `datasets.map(batched=True)` function: rows in, `input_ids`/`labels`/`length` out.

        Texts are cut to `max_length * CHARS_PER_TOKEN_GUESS` characters before tokenising:
        tokenising a 100 MB record whole, with offsets, takes about 10 GB, and all but its first
        `max_length` tokens are truncated away anyway.
        """
        columns = list(batch)
        rows = [
            dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)
        ]
        max_chars = self.max_length * CHARS_PER_TOKEN_GUESS
        prepared = [self.text_and_spans(row, max_chars) for row in rows]
        examples: list[tuple[list[int], list[int]] | None] = [None] * len(prepared)
        bos = self.tokenizer.bos_token
        for add_special in (True, False):
            # Templates that write the BOS text themselves are tokenised without adding another.
            chosen = [
                i
                for i, (text, *_) in enumerate(prepared)
                if add_special != bool(bos and text.startswith(bos))
            ]
            if not chosen:
                continue
            all_ids, all_offsets = self._encode([prepared[i][0] for i in chosen], add_special)
            for j, i in enumerate(chosen):
                _, spans, append_eos, cut = prepared[i]
                ids, offsets = all_ids[j], all_offsets[j]
                limit = max_chars
                # A cut text must give more tokens than max_length keeps, with a margin for its
                # last word, which the cut may have split. Tokens longer than the guess (runs of
                # spaces in some vocabularies) get a longer cut, up to the whole text.
                while cut and len(ids) < self.max_length + _CUT_MARGIN_TOKENS:
                    limit *= 4
                    text, spans, append_eos, cut = self.text_and_spans(rows[i], limit)
                    (ids,), (offsets,) = self._encode([text], add_special)
                examples[i] = self._label(ids, offsets, spans, append_eos)
        kept = [example for example in examples if example is not None]
        return {
            "input_ids": [ids for ids, _ in kept],
            "labels": [labels for _, labels in kept],
            "length": [len(ids) for ids, _ in kept],
        }

    def _label(
        self,
        input_ids: list[int],
        offsets: list[tuple[int, int]],
        spans: list[tuple[int, int]],
        append_eos: bool,
    ) -> tuple[list[int], list[int]] | None:
        self.stats.examples += 1
        trainable = [False] * len(input_ids)
        for start, end in spans:
            # A token overlapping the span belongs to the response: " three" after a prompt
            # ending in a space starts inside the prompt but is the response's first word.
            # Special tokens added by the tokenizer have s == e and are never labelled.
            inside = [k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
            # A response ends at its first stop token; what follows (a newline) is template glue.
            for k in inside:
                trainable[k] = True
                if input_ids[k] in self.stop_ids:
                    break
        input_ids = list(input_ids)
        ends_with_stop = any(
            keep and t in self.stop_ids for t, keep in zip(input_ids, trainable, strict=True)
        )
        if append_eos or not ends_with_stop:
            input_ids.append(self.eos_id)
            trainable.append(True)
        if len(input_ids) > self.max_length:
            self.stats.truncated += 1
            input_ids = input_ids[: self.max_length]
            trainable = trainable[: self.max_length]
        if not any(trainable):
            self.stats.dropped_no_response += 1
            return None
        if self.train_on_prompt:
            labels = list(input_ids)
        else:
            labels = [
                t if keep else IGNORE_INDEX for t, keep in zip(input_ids, trainable, strict=True)
            ]
        self.stats.tokens += len(input_ids)
        self.stats.response_tokens += sum(1 for label in labels if label != IGNORE_INDEX)
        return input_ids, labels


def tokenize_rows(
    rows: datasets.Dataset, example_tokenizer: ExampleTokenizer, *, batch_size: int = 256
) -> datasets.Dataset:
    """Tokenise normalised rows into a cached Arrow dataset of `input_ids`, `labels`, `length`."""
    import datasets

    fingerprint = hashlib.sha256(
        f"{rows._fingerprint}:{example_tokenizer.fingerprint()}".encode()
    ).hexdigest()[:16]
    datasets.disable_progress_bars()
    tokenized = rows.map(
        example_tokenizer,
        batched=True,
        batch_size=batch_size,
        remove_columns=rows.column_names,
        new_fingerprint=fingerprint,
        load_from_cache_file=False,  # the counts in example_tokenizer.stats come from this pass
    )
    return tokenized


def pack_rows(tokenized: datasets.Dataset, max_length: int) -> datasets.Dataset:
    """Concatenate examples into rows of at most `max_length` tokens (see the module docstring).

    Within each block of 1,000 examples, rows are filled first-fit in decreasing length order,
    which leaves far less padding than filling them in the order the examples come.
    """

    def pack(batch: Mapping[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        order = sorted(range(len(batch["input_ids"])), key=lambda i: -len(batch["input_ids"][i]))
        rows: list[list[int]] = []  # example indices per row
        room: list[int] = []  # tokens still free per row
        for index in order:
            size = len(batch["input_ids"][index])
            target = next((r for r, free in enumerate(room) if free >= size), None)
            if target is None:
                rows.append([])
                room.append(max_length)
                target = len(rows) - 1
            rows[target].append(index)
            room[target] -= size
        packed: dict[str, list[list[int]]] = {
            "input_ids": [],
            "labels": [],
            "position_ids": [],
            "length": [],
        }
        for members in rows:
            ids: list[int] = []
            labels: list[int] = []
            positions: list[int] = []
            for index in members:
                example_ids = batch["input_ids"][index]
                ids.extend(example_ids)
                # The first token of an example must not be predicted from the previous example.
                labels.extend([IGNORE_INDEX, *batch["labels"][index][1:]])
                positions.extend(range(len(example_ids)))
            packed["input_ids"].append(ids)
            packed["labels"].append(labels)
            packed["position_ids"].append(positions)
            packed["length"].append(len(ids))  # type: ignore[arg-type]
        return packed

    import datasets

    datasets.disable_progress_bars()
    return tokenized.map(
        pack,
        batched=True,
        batch_size=1000,
        remove_columns=tokenized.column_names,
        new_fingerprint=hashlib.sha256(
            f"{tokenized._fingerprint}:pack-ffd:{max_length}".encode()
        ).hexdigest()[:16],
    )
