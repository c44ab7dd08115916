"""Training data for causal-LM fine-tuning: JSONL records in, token ids and labels out.

The pipeline is read → validate → normalise → tokenise → (pack) → collate:

- `read_records` streams a JSONL file line by line into a `datasets` Arrow table (memory-mapped
  on disk), so a multi-GB file never sits in a Python list. Every line is validated on the way and
  a bad one raises `DataValidationError` naming `file:line`.
- Every record becomes one normalised row `{"prompt", "completion", "messages"}`: plain `text`
  records are a completion with an empty prompt; `prompt`/`completion` records keep both; alpaca
  (`instruction`/`input`/`output`) and chat (`messages`) records become a conversation.
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
- `CausalLMCollator` pads each batch to its own longest row (dynamic padding).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared_utils.errors import ConfigurationError, DataValidationError

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
RecordFormat = Literal["text", "alpaca", "chat", "prompt_completion"]
ROLES = ("system", "user", "assistant", "tool")

# Used when a tokenizer has no chat template of its own (GPT-2 and DialoGPT have none). Alpaca-style
# headers in plain text, so it needs no new special tokens; every assistant turn ends with EOS.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'assistant' %}### Response:\n{{ message['content'] }}"
    "{{ eos_token }}\n\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


# --------------------------------------------------------------------------------------------------
# Reading and validating records
# --------------------------------------------------------------------------------------------------


def detect_format(record: Mapping[str, Any]) -> RecordFormat | None:
    """The record type a JSONL object holds, or None when it is none the trainer can use."""
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def _string(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataValidationError(
            f"{where}: `{key}` must be a string, got {type(value).__name__} — fix the record"
        )
    return value


def normalize_record(
    record: Mapping[str, Any], record_format: RecordFormat, where: str
) -> dict[str, Any] | None:
    """One normalised row `{"prompt", "completion", "messages"}`, or None for an empty record."""
    if record_format == "text":
        text = _string(record, "text", where)
        return {"prompt": "", "completion": text, "messages": []} if text.strip() else None
    if record_format == "prompt_completion":
        prompt = _string(record, "prompt", where)
        completion = _string(record, "completion", where)
        if not completion.strip():
            return None
        return {"prompt": prompt, "completion": completion, "messages": []}
    if record_format == "alpaca":
        instruction = _string(record, "instruction", where)
        extra = _string(record, "input", where)
        output = _string(record, "output", where)
        if not instruction.strip() or not output.strip():
            return None
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        system = _string(record, "system", where)
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return {"prompt": "", "completion": "", "messages": messages}
    return _normalize_chat(record.get("messages"), where)


def _normalize_chat(messages: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(messages, list):
        raise DataValidationError(
            f"{where}: `messages` must be a list of {{role, content}} objects — fix the record"
        )
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataValidationError(
                f"{where}: messages[{index}] must be an object with `role` and `content`"
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataValidationError(
                f"{where}: messages[{index}].role is {role!r}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise DataValidationError(f"{where}: messages[{index}].content must be a string")
        normalized.append({"role": role, "content": content})
    has_response = any(m["role"] == "assistant" and m["content"].strip() for m in normalized)
    if not has_response:
        return None
    return {"prompt": "", "completion": "", "messages": normalized}


@dataclass
class ReadStats:
    """What reading one file found: usable records, skipped empty ones, the detected type."""

    path: str
    record_format: str
    records: int = 0
    skipped_empty: int = 0


def iter_normalized_records(path: Path, stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Validate and normalise the records of one JSONL file, one line at a time."""
    record_format: RecordFormat | None = None
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            line = _decode_line(raw, where, first=line_number == 1)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataValidationError(
                    f"{where}: not valid JSON ({exc.msg}, column {exc.colno}) — fix or remove the "
                    "line"
                ) from None
            except RecursionError:
                raise DataValidationError(
                    f"{where}: JSON nested too deeply to read — a record is an object of "
                    "strings and lists, a few levels deep; fix or remove the line"
                ) from None
            if not isinstance(record, dict):
                raise DataValidationError(
                    f"{where}: each line must be a JSON object, got {type(record).__name__}"
                )
            found = detect_format(record)
            if found is None:
                keys = ", ".join(sorted(record)) or "none"
                raise DataValidationError(
                    f"{where}: a record the trainer cannot use (keys: {keys}); expected `text`, "
                    "`prompt`+`completion`, alpaca `instruction`+`output`, or chat `messages`"
                )
            if record_format is None:
                record_format = found
                if stats is not None:
                    stats.record_format = found
            elif found != record_format:
                raise DataValidationError(
                    f"{where}: a {found} record in a file of {record_format} records; keep one "
                    "record type per file"
                )
            row = normalize_record(record, found, where)
            if row is None:
                if stats is not None:
                    stats.skipped_empty += 1
                continue
            if stats is not None:
                stats.records += 1
            yield row


def _decode_line(raw: bytes, where: str, *, first: bool) -> str:
    """One line of a JSONL file as text; JSON Lines are UTF-8 (a leading BOM is allowed)."""
    if first and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataValidationError(
            f"{where}: the file is UTF-16; JSON Lines must be UTF-8 — convert it (iconv -f UTF-16 "
            "-t UTF-8 IN > OUT)"
        )
    if first and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
            "line) — save the file as UTF-8"
        ) from None


def _rows_generator(path: str, fingerprint: str) -> Iterator[dict[str, Any]]:
    # `fingerprint` only keys the Arrow cache: a changed file gets a new cache entry.
    del fingerprint
    yield from iter_normalized_records(Path(path))


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def read_records(
    path: str | Path, *, flag: str = "--train-data"
) -> tuple[datasets.Dataset, ReadStats]:
    """Stream a JSONL file into a memory-mapped Arrow dataset of normalised rows.

    Raises `DataValidationError` naming `file:line` for the first bad line, and when the file has
    no usable record; `flag` is the command-line flag that names the file (for the message of a
    missing one).
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        what = "evaluation data" if flag == "--eval-data" else "training data"
        raise DataValidationError(
            f"{path}: {what} not found — run `python main.py extract DOCS_DIR data/processed` "
            f"or pass {flag} with an existing file"
        )
    # A first streaming pass validates every line and counts (constant memory); the Arrow cache
    # below is then built from rows known to be good.
    stats = ReadStats(path=str(path), record_format="")
    for _ in iter_normalized_records(path, stats):
        pass
    if stats.records == 0:
        raise DataValidationError(
            f"{path}: no usable record ({stats.skipped_empty} empty skipped) — the file needs "
            "non-empty text, completion, output or assistant messages"
        )
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "completion": datasets.Value("string"),
            "messages": datasets.List(
                {"role": datasets.Value("string"), "content": datasets.Value("string")}
            ),
        }
    )
    previous = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        dataset = datasets.Dataset.from_generator(
            _rows_generator,
            features=features,
            gen_kwargs={"path": str(path), "fingerprint": _file_fingerprint(path)},
        )
    finally:
        datasets.utils.logging.set_verbosity(previous)
    if stats.skipped_empty:
        logger.info("%s: skipped %d empty records", path, stats.skipped_empty)
    return dataset, stats


# --------------------------------------------------------------------------------------------------
# Tokenising with response-only labels
# --------------------------------------------------------------------------------------------------


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer `DEFAULT_CHAT_TEMPLATE` when it has none; True when it was set."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad with EOS when the tokenizer has no pad token; labels never depend on the pad id."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigurationError(
                f"tokenizer of {tokenizer.name_or_path!r} has neither a pad nor an EOS token — "
                "use a causal-LM tokenizer that defines eos_token"
            )
        tokenizer.pad_token = tokenizer.eos_token


# Rendering a chat template takes milliseconds; a template that loops for longer (nested
# `range(100000)` loops run for hours and fill memory) is stopped with an error.
CHAT_TEMPLATE_SECONDS = 5.0


class _TemplateTimeout(Exception):
    """Raised by the SIGALRM handler inside a chat template render that ran out of time."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise `_TemplateTimeout` in the block once `seconds` have passed (SIGALRM).

    Signals reach only the main thread; elsewhere the block runs without a limit.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "setitimer"
    ):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _TemplateTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def render_chat_template(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = False,
) -> str:
    """The conversation rendered with the tokenizer's chat template, as text.

    The template comes with the model, so it is untrusted: transformers runs it in Jinja's
    sandbox, and here it gets `CHAT_TEMPLATE_SECONDS`. A refused or failing template is a
    `ConfigurationError` naming the model, instead of a Jinja traceback.
    """
    import jinja2

    where = f"the chat template of {tokenizer.name_or_path!r}"
    fix = "fix or replace `chat_template` in its tokenizer_config.json (or chat_template.jinja)"
    try:
        with _time_limit(CHAT_TEMPLATE_SECONDS):
            return tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
    except _TemplateTimeout:
        raise ConfigurationError(
            f"{where} ran for more than {CHAT_TEMPLATE_SECONDS:g} s on one conversation; {fix}"
        ) from None
    except jinja2.exceptions.SecurityError as exc:
        raise ConfigurationError(
            f"{where} was refused by the template sandbox ({exc}); {fix}"
        ) from None
    except jinja2.exceptions.TemplateError as exc:
        raise ConfigurationError(f"{where} failed ({type(exc).__name__}: {exc}); {fix}") from None


def render_with_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """The chat-template text of a conversation and the character spans of its responses.

    Each response span runs from the end of the generation prompt that precedes it to the end of
    the rendered turn, so it holds the assistant's words and the template's end-of-turn text.
    """
    spans: list[tuple[int, int]] = []
    messages = list(messages)
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[: last_assistant + 1]  # trailing user turns have no response to learn
    text = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render_chat_template(tokenizer, messages[:index], add_generation_prompt=True)
        full = render_chat_template(tokenizer, messages[: index + 1])
        if not prompt.startswith(text) or not full.startswith(prompt):
            raise ConfigurationError(
                f"the chat template of {tokenizer.name_or_path!r} rewrites earlier turns, so "
                "response tokens cannot be located; set a template whose renders are prefixes of "
                "each other"
            )
        spans.append((len(prompt), len(full)))
        text = full
    return text, spans


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
        train_on_prompt: bool = False,
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


# --------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------


# Batch lengths are rounded up to a multiple of this: CPU kernels (oneDNN, above all in bf16) build
# and cache a plan per input shape, and a few shapes instead of one per length trains 1.4x faster
# on CPU (measured on SmolLM2-135M); the padding carries no label, so the loss is the same.
PAD_TO_MULTIPLE_OF = 16


class CausalLMCollator:
    """Pads a batch to its longest row: input ids with the pad id, labels with -100.

    Unpacked rows get an attention mask (1 for tokens, 0 for padding). Packed rows carry
    `position_ids` and no attention mask, so the model masks attention per packed example;
    their padding gets positions of its own, forming a separate block no real token sees.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in features[0]
        input_ids, labels, attention, positions = [], [], [], []
        for feature in features:
            ids = list(feature["input_ids"])
            pad = longest - len(ids)
            input_ids.append(ids + [self.pad_token_id] * pad)
            labels.append(list(feature["labels"]) + [IGNORE_INDEX] * pad)
            attention.append([1] * len(ids) + [0] * pad)
            if packed:
                positions.append(list(feature["position_ids"]) + list(range(pad)))
        batch = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        if packed:
            batch["position_ids"] = torch.tensor(positions, dtype=torch.long)
        else:
            batch["attention_mask"] = torch.tensor(attention, dtype=torch.long)
        return batch


class DataLoaderFactory:
    """Builds tokenised datasets and their collator from JSONL files for one tokenizer."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 512,
        *,
        train_on_prompt: bool = False,
        packing: bool = False,
        seed: int = 42,
        stop_token_ids: Sequence[int] = (),
    ) -> None:
        ensure_pad_token(tokenizer)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.packing = packing
        self.seed = seed
        self.example_tokenizer = ExampleTokenizer(
            tokenizer, max_length, train_on_prompt=train_on_prompt, stop_token_ids=stop_token_ids
        )
        self.read_stats: list[ReadStats] = []

    @property
    def collator(self) -> CausalLMCollator:
        return CausalLMCollator(int(self.tokenizer.pad_token_id), PAD_TO_MULTIPLE_OF)

    @property
    def tokenize_stats(self) -> TokenizeStats:
        return self.example_tokenizer.stats

    def load_rows(self, path: str | Path, *, flag: str = "--train-data") -> datasets.Dataset:
        rows, stats = read_records(path, flag=flag)
        self.read_stats.append(stats)
        return rows

    def build_dataset(self, rows: datasets.Dataset, *, shuffle: bool = False) -> datasets.Dataset:
        """Tokenise (and pack when configured) normalised rows."""
        tokenized = tokenize_rows(rows, self.example_tokenizer)
        if len(tokenized) == 0:
            raise DataValidationError(
                f"no example has a response token left within max_length={self.max_length} — "
                "raise max_length or shorten the prompts"
            )
        if self.packing:
            if shuffle:
                tokenized = tokenized.shuffle(seed=self.seed)
            tokenized = pack_rows(tokenized, self.max_length)
        return tokenized
