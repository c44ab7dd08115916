"""A tiny Llama-architecture model for offline demos and tests.

Randomly initialised (about 3.7 million parameters) with a byte-level BPE tokenizer trained on the
sample corpus (`shared_utils.sample_corpus.sample_corpus_texts`), saved with `save_pretrained` like
a hub folder, so training and chat load it through the same `from_pretrained` call a hub id takes.
The tokenizer follows the ChatML convention of Qwen-style models:
`<|im_start|>role\\n...<|im_end|>`, EOS is `<|im_end|>` (generation stops at the end of an
assistant turn) and padding has its own `<|endoftext|>` token. Its pre-tokenizer is the GPT-2
byte-level regex, which llama.cpp knows as `gpt-2`.

The weights are initialised wider than Llama's 0.02: with a frozen random output head of width
0.02, no adapter can make the logits confident, and LoRA alone could not fit even a handful of
sentences. With 0.1 a LoRA run on the sample data visibly learns in a minute on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from shared_utils.sample_corpus import sample_corpus_texts

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [BOS_TOKEN, PAD_TOKEN, "<|im_start|>", EOS_TOKEN]

CHATML_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 2048):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Like Llama: encoding with special tokens prepends BOS.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    output_dir: str | Path,
    texts: Iterable[str] | None = None,
    *,
    hidden_size: int = 256,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 8,
    num_key_value_heads: int = 4,
    intermediate_size: int = 688,
    max_position_embeddings: int = 1024,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write a random tiny Llama and its tokenizer to `output_dir`; returns the folder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(texts if texts is not None else sample_corpus_texts())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
