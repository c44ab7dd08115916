"""Fine-tuning a causal language model on the user's data, and what serves the result.

`finetuning` (train-lora, train-qlora), `evaluation` (evaluate) and `serving` (merge, export with
its `gguf` writer, chat) are the three jobs; they import one another never, only what they share,
which is here: `model_loading` (a folder, hub id or .gguf file -> tokenizer and model),
`model_source` (--model/--adapter -> base, adapter and tokenizer; the model loaded to answer),
`prompting` (messages -> prompt ids as training tokenised them, the ids that end a turn),
`lora_model` (target modules, the peft wrapping), `merge` (adapter + base -> a plain model) and
`tiny_model` (the random Llama of create-samples).
"""
