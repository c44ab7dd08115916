"""The `chat` command: talk to a model, or a base model with an adapter, in the terminal.

The prompt is rendered exactly as training rendered it (`transfer_learning.prompting`: the
tokenizer's chat template, the one saved with the adapter or the toolkit's default, tokenised
without a second BOS when the template writes it), and the oldest turns are dropped when the
conversation outgrows the context. Generation stops at EOS, the end-of-turn token the model
learned. Tokens are printed as they are generated (a transformers streamer). An adapter is merged
into its base (reloaded in 16/32 bits) before chatting, so `chat` answers what `export` writes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from training_methods.transfer_learning.model_source import load_for_inference
from training_methods.transfer_learning.prompting import Messages, fitted_prompt_ids, stop_ids

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"
DEFAULT_MAX_NEW_TOKENS = 256  # the longest answer, in tokens
DEFAULT_TEMPERATURE = 0.7  # sampling temperature; 0 is greedy


def _streamer_class():
    from transformers import TextStreamer

    class StreamTo(TextStreamer):
        """A TextStreamer that writes to a given stream and keeps the whole text."""

        def __init__(self, tokenizer, stream: TextIO) -> None:  # noqa: ANN001
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.stream = stream
            self.text = ""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            self.text += text
            self.stream.write(text)
            if stream_end:
                self.stream.write("\n")
            self.stream.flush()

    return StreamTo


@dataclass
class ChatSession:
    """A conversation with one model: `reply` adds a user turn and streams the answer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    messages: Messages = field(default_factory=list)

    def prompt_ids(self) -> list[int]:
        """The conversation so far as prompt ids; the oldest turns are dropped when it would not
        fit the context."""
        ids, self.messages = fitted_prompt_ids(
            self.model, self.tokenizer, self.messages, self.max_new_tokens
        )
        return ids

    def reply(self, user_text: str, stream: TextIO) -> str:
        import torch

        self.messages.append({"role": "user", "content": _valid_text(user_text)})
        input_ids = torch.tensor([self.prompt_ids()], device=self.model.device)
        streamer = _streamer_class()(self.tokenizer, stream)
        sampling = (
            {"do_sample": True, "temperature": self.temperature}
            if self.temperature > 0
            else {"do_sample": False}
        )
        stops = stop_ids(self.model, self.tokenizer)
        pad_id = self.tokenizer.pad_token_id
        self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=self.max_new_tokens,
            eos_token_id=stops,
            pad_token_id=pad_id if pad_id is not None else stops[0],
            streamer=streamer,
            **sampling,
        )
        answer = streamer.text.strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def _valid_text(text: str) -> str:
    """`text` with bytes that are not UTF-8 (held as lone surrogates when they came from the
    command line) replaced by U+FFFD, which any tokenizer takes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def interactive(
    session: ChatSession, lines: Iterable[str], out: TextIO, *, show_prompt: bool
) -> int:
    """The read-reply loop; returns how many answers were given. `/reset` forgets the
    conversation, `/exit`, `/quit` or end of input leave."""
    answers = 0
    if show_prompt:
        out.write(f"Chat: {RESET_COMMAND} starts over, {EXIT_COMMANDS[0]} or Ctrl-D leaves.\n")
    iterator = iter(lines)
    while True:
        if show_prompt:
            out.write("you> ")
            out.flush()
        line = next(iterator, None)
        if line is None:
            if show_prompt:
                out.write("\n")
            return answers
        text = line.strip()
        if not text:
            continue
        if text in EXIT_COMMANDS:
            return answers
        if text == RESET_COMMAND:
            session.messages.clear()
            continue
        if show_prompt:
            out.write("model> ")
        session.reply(text, out)
        answers += 1


def run_chat(
    *,
    model: str | None,
    adapter: str | None,
    prompt: str | None,
    max_new_tokens: int,
    temperature: float,
    device: torch.device,
    seed: int,
    lines: Iterable[str] | None = None,
    out: TextIO | None = None,
) -> int:
    """One answer to `prompt`, or a conversation read from `lines` (stdin); returns the number of
    answers given."""
    from transformers.trainer_utils import set_seed

    out = out if out is not None else sys.stdout
    loaded, tokenizer = load_for_inference(model, adapter, device)
    set_seed(seed)
    session = ChatSession(loaded, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature)
    if prompt is not None:
        session.reply(prompt, out)
        return 1
    if lines is None and hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # a byte that is not UTF-8 becomes U+FFFD
    stdin_lines = lines if lines is not None else sys.stdin
    return interactive(session, stdin_lines, out, show_prompt=lines is None and sys.stdin.isatty())
