"""Fine-tuning a causal language model on the user's data (LoRA, QLoRA), and what serves the result:
merge, export to GGUF, chat."""
