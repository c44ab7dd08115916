"""The `chat` command on CPU: the trained template and answer, streaming, the interactive loop."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from shared_utils.errors import ConfigurationError
from tests.finetune_helpers import CHATS, FineTuned

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingStream(io.StringIO):
    """A text stream that remembers each write, to see tokens arrive one piece at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture(scope="module")
def session(finetuned: FineTuned):
    import torch

    from training_methods.transfer_learning.model_source import load_for_inference
    from training_methods.transfer_learning.serving.chat import ChatSession

    model, tokenizer = load_for_inference(None, finetuned.adapter, torch.device("cpu"))
    return ChatSession(model, tokenizer, max_new_tokens=24, temperature=0.0)


def test_one_shot_answers_what_training_taught_and_stops_at_eos(
    finetuned: FineTuned,
    run_main,
) -> None:
    question, answer = CHATS[0]
    status, stdout, stderr = run_main(
        "chat", "--adapter", finetuned.adapter, "--prompt", question, "--temperature", "0",
        "--max-new-tokens", "40",
    )  # fmt: skip
    assert status == 0, stderr
    assert stdout == answer + "\n"  # the memorised answer, then EOS ended generation
    # The merged model (what `export` converts) answers the same.
    status, merged_out, _ = run_main(
        "chat", "--model", finetuned.merged, "--prompt", question, "--temperature", "0"
    )
    assert status == 0 and merged_out == stdout


def test_prompt_is_the_trained_template_with_one_bos(session) -> None:
    from training_methods.transfer_learning.prompting import stop_ids

    session.messages = [{"role": "user", "content": "Hi"}]
    ids = session.prompt_ids()
    tokenizer = session.tokenizer
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert tokenizer.decode(ids) == "<|begin_of_text|><|im_start|>user\nHi<|im_end|>\n" + (
        "<|im_start|>assistant\n"
    )
    assert stop_ids(session.model, tokenizer) == [tokenizer.eos_token_id]


def test_tokens_are_streamed(session) -> None:
    session.messages = []
    stream = RecordingStream()
    answer = session.reply(CHATS[1][0], stream)
    assert answer == CHATS[1][1]
    assert len([w for w in stream.writes if w.strip()]) >= 3  # piece by piece, not one block
    assert stream.getvalue() == answer + "\n"


def test_interactive_loop_keeps_history_resets_and_exits(session) -> None:
    from training_methods.transfer_learning.serving.chat import interactive

    session.messages = []
    out = io.StringIO()
    lines = [CHATS[0][0], "", CHATS[1][0], "/reset", CHATS[2][0], "/exit", "never read"]
    assert interactive(session, lines, out, show_prompt=True) == 3
    assert out.getvalue().startswith("Chat: /reset starts over")
    assert CHATS[0][1] in out.getvalue() and CHATS[2][1] in out.getvalue()
    assert [m["content"] for m in session.messages] == [CHATS[2][0], CHATS[2][1]]


def test_prompt_longer_than_the_context_is_refused(session) -> None:
    session.messages = []
    session.max_new_tokens = 1020  # the tiny model's context is 1024 tokens
    try:
        with pytest.raises(ConfigurationError, match="--max-new-tokens 1020"):
            session.reply(CHATS[0][0], io.StringIO())
    finally:
        session.max_new_tokens = 24


def test_template_less_model_chats_with_the_default_template(tiny_gpt2: Path) -> None:
    import torch

    from training_methods.transfer_learning.model_source import load_for_inference
    from training_methods.transfer_learning.serving.chat import ChatSession

    model, tokenizer = load_for_inference(str(tiny_gpt2), None, torch.device("cpu"))
    chat = ChatSession(model, tokenizer, max_new_tokens=5, temperature=1.0)
    chat.messages = [{"role": "user", "content": "Hi"}]
    assert tokenizer.decode(chat.prompt_ids()) == "### Instruction:\nHi\n\n### Response:\n"
    chat.messages = []
    chat.reply("Hi", io.StringIO())  # sampling on CPU works
    assert len(chat.messages) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--adapter DIR"),
        (["--adapter", "missing-folder"], "no such folder"),
        (["--model", "{tmp}/missing-model", "--prompt", "x"], "could not be loaded"),
    ],
)
def test_chat_bad_input(tmp_path: Path, run_main, args: list[str], message: str) -> None:
    status, _, stderr = run_main("chat", *(a.format(tmp=tmp_path) for a in args))
    assert status == 2 and message in stderr and stderr.count("\n") == 1


@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_chat_script_reads_a_conversation_from_stdin(finetuned: FineTuned) -> None:
    script = Path(__file__).resolve().parent.parent / "scripts" / "chat.py"
    proc = subprocess.run(
        [sys.executable, script, "--adapter", finetuned.adapter, "--temperature", "0"],
        input=f"{CHATS[2][0]}\n",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == CHATS[2][1] + "\n"  # no prompts when stdin is not a terminal
