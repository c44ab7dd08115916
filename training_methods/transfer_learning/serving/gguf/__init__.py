"""GGUF files from a model folder or an adapter, written by the toolkit itself.

`writer` is the entry point (a model folder -> GGUF files; k-quants by llama.cpp's quantiser);
its parts are `architectures` (supported architectures, their checks and metadata), `tensors`
(GGUF types, the tensor plan, conversion), `tokenizer` (vocabulary, merges, chat template),
`sentencepiece` (tokenizer.model vocabularies) and `file` (streaming, free space, atomic
rename); `lora` writes an adapter alone as a GGUF LoRA file.
"""
