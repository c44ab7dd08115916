"""What takes a trained adapter to a model people run: `merge`, `export` (a merged folder, GGUF
files for llama.cpp, LM Studio and Ollama, an Ollama Modelfile) and `chat`.

`export` is the export command's work, the `gguf` subpackage writes GGUF files, `modelfile` the
Ollama Modelfile next to them, `chat` holds ChatSession and the chat command, `cli` wires the
commands. The merge itself is `transfer_learning.merge`, which training's `--merge` uses as well.
"""
