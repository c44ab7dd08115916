"""Fine-tuning a causal language model on the user's data, and what serves the result.

`finetuning` (train-lora, train-qlora), `evaluation` (evaluate) and `serving` (merge, export with
its `gguf` writer, chat) are the three jobs. What they share is here: `model_loading` (a folder,
hub id or .gguf file -> tokenizer and model), `lora_model` (target modules, the peft wrapping),
`merge` (adapter + base -> a plain model) and `tiny_model` (the random Llama of create-samples).
"""
