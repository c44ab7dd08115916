"""Chat templates: the toolkit's default template, and conversations rendered as text safely.

A chat template comes with the model, so it is untrusted: `render_chat_template` runs it in
transformers' Jinja sandbox with a time limit, and turns a refused, failing or endless template into
a one-line `ConfigurationError`. `render_with_spans` also gives the character spans of the
responses, which the tokeniser (`shared_utils.training_tokens`) labels.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer `DEFAULT_CHAT_TEMPLATE` when it has none; True when it was set."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


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
