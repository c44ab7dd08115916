"""The prompt a model is asked and the tokens that end its answer.

Messages are rendered with the tokenizer's chat template (the one saved with the adapter, or the
toolkit's default for a tokenizer without one) and tokenised without a second BOS when the
template writes it, exactly as training tokenised them. `chat` (ChatSession) and `evaluate` ask
through here, so an answer `evaluate` scores is the answer `chat --temperature 0` gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared_utils.chat_templates import render_chat_template
from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    """`messages` and the assistant's generation prompt, tokenised as training tokenised them."""
    text = render_chat_template(tokenizer, messages, add_generation_prompt=True)
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def context_length(model: PreTrainedModel) -> int | None:
    """The most tokens the model attends to (prompt and answer), None when its config says not."""
    config = model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def fitted_prompt_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Messages,
    max_new_tokens: int,
) -> tuple[list[int], Messages]:
    """The prompt ids and the messages they hold: the oldest turns dropped until the prompt and
    `max_new_tokens` fit the model's context; ConfigurationError when one message does not."""
    context = context_length(model)
    while True:
        ids = prompt_ids(tokenizer, messages)
        if context is None or len(ids) + max_new_tokens <= context:
            return ids, messages
        if len(messages) <= 1:
            raise ConfigurationError(
                f"the prompt is {len(ids)} tokens and --max-new-tokens {max_new_tokens}, "
                f"more than the model's context of {context} — shorten the prompt or lower "
                "--max-new-tokens"
            )
        messages = messages[2:] if len(messages) > 2 else messages[1:]


def stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS of the tokenizer and of the generation config (some models end turns with several
    tokens, e.g. Llama 3's <|eot_id|> and <|end_of_text|>)."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    extra = configured if isinstance(configured, list) else [configured]
    ids = [tokenizer.eos_token_id, *extra]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))
