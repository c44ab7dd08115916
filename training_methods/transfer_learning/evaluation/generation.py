"""The `evaluate` command's answers: greedy decoding, batched in transformers or by llama.cpp.

- `prompt_token_ids`: each conversation rendered and tokenised by `transfer_learning.prompting`,
  as `chat` does it, so an answer here is the answer `chat --temperature 0` gives.
- `greedy_answers`: batches with left padding (prompts sorted by length, so little padding is
  needed), which gives the answers one-by-one greedy decoding gives; plain argmax, no repetition
  penalty or sampling settings of the model's generation config, like llama.cpp at temperature 0.
- `load_gguf`, `gguf_answers`, `gguf_context`: a GGUF file run in-process by llama.cpp (the engine
  LM Studio uses), through the chat template stored in the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError, DataValidationError
from shared_utils.llama_cpp_runtime import import_llama_cpp
from training_methods.transfer_learning.prompting import Messages, fitted_prompt_ids, stop_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MAX_NEW_TOKENS = 96  # the longest answer, in tokens
DEFAULT_BATCH_SIZE = 8  # questions answered at once by transformers


def prompt_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    max_new_tokens: int,
) -> list[list[int]]:
    """Each conversation rendered with the chat template and tokenised as `chat` does it.
    DataValidationError when one would lose turns to fit the context with the answer (`chat`
    drops them), ConfigurationError when not even its last turn fits."""
    ids = []
    for index, messages in enumerate(prompts):
        prompt, kept = fitted_prompt_ids(model, tokenizer, list(messages), max_new_tokens)
        if len(kept) != len(messages):
            raise DataValidationError(
                f"question {index}: the conversation and --max-new-tokens {max_new_tokens} do not "
                "fit the model's context — shorten the conversation or lower --max-new-tokens"
            )
        ids.append(prompt)
    return ids


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[list[int]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    description: str = "answering",
) -> list[str]:
    """Greedy answers to tokenised prompts, `batch_size` at a time with left padding, cut at the
    first stop id (EOS, end of turn) and decoded without special tokens, as `chat` shows them."""
    import torch
    from tqdm.auto import tqdm

    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    # Similar lengths batched together: less padding, the same answers.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    answers: list[str] = [""] * len(prompt_ids)
    with tqdm(total=len(order), desc=description, unit="q", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (batch, width)
            attention_mask = torch.zeros_like(input_ids)
            for row, index in enumerate(batch):
                ids = prompt_ids[index]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention_mask.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    repetition_penalty=1.0,  # plain argmax, whatever the model's config says
                    eos_token_id=stops,
                    pad_token_id=pad_id,
                )  # (batch, width + generated)
            for row, index in enumerate(batch):
                new_tokens = output[row, width:].tolist()
                end = next((i for i, t in enumerate(new_tokens) if t in stops), len(new_tokens))
                answers[index] = tokenizer.decode(
                    new_tokens[:end], skip_special_tokens=True
                ).strip()
            bar.update(len(batch))
    return answers


def load_gguf(
    gguf: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None, gpu: bool = False
) -> Any:
    """A `llama_cpp.Llama` for the file; one-line ConfigurationError when llama.cpp refuses it."""
    llama_cpp = import_llama_cpp("--gguf runs the file in llama.cpp")
    try:
        return llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=-1 if gpu and llama_cpp.llama_supports_gpu_offload() else 0,
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigurationError(
            f"--gguf {gguf}: llama.cpp cannot load it ({exc}) — give a GGUF file written by "
            "`export` or another llama.cpp-compatible tool"
        ) from None


def gguf_answers(
    llm: Any,
    prompts: Sequence[Messages],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: bool = False,
    description: str = "gguf",
) -> list[str]:
    """Greedy answers of a llama.cpp model (`load_gguf`), through the chat template stored in
    its file, stopped at the EOS stored there."""
    from tqdm.auto import tqdm

    answers = []
    for index, messages in enumerate(
        tqdm(prompts, desc=description, unit="q", disable=not progress)
    ):
        try:
            reply = llm.create_chat_completion(
                messages=messages, temperature=0.0, max_tokens=max_new_tokens
            )
        except ValueError as exc:  # e.g. the prompt does not fit the context
            raise DataValidationError(f"question {index}: llama.cpp refused it ({exc})") from None
        answers.append((reply["choices"][0]["message"]["content"] or "").strip())
    return answers


def gguf_context(prompt_ids: Sequence[list[int]], max_new_tokens: int) -> int:
    """llama.cpp's context: the longest prompt (as the toolkit's tokenizer counts it; an export's
    own tokenizer counts alike, another file's may differ, hence the margin) plus the answer."""
    longest = max(len(ids) for ids in prompt_ids)
    needed = 2 * longest + max_new_tokens + 64
    return max(512, -(-needed // 256) * 256)
