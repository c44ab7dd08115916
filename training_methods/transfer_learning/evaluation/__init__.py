"""`evaluate`: did the fine-tuning teach the documents? The base model, the fine-tuned one and
its GGUF asked the same questions.

`run` is the command's work and report, `question_files` reads the questions, `generation`
answers them (transformers in batches, llama.cpp for GGUF) in the prompt `chat` asks
(`transfer_learning.prompting`), `scoring` scores the answers, `cli` wires the command.
"""
