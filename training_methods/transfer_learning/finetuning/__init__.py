"""LoRA and QLoRA fine-tuning: `train-lora` and `train-qlora`.

`lora_finetuner` holds LoRAFineTuner (the one training loop, on the Hugging Face Trainer: JSONL
records through `shared_utils.data_loader` into a tokenised data set, then the adapter) and
`qlora_finetuner` the same on a 4-bit base; their steps are `trainer` (TrainingArguments, the
guarded Trainer, callbacks), `checkpoints` (checkpoint-N folders, --resume, the best adapter) and
`outputs` (training_summary.json, loss plot, samples); `cli` wires the commands and
`create-samples`.
"""
