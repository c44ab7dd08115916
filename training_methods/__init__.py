"""Fine-tuning (LoRA, QLoRA) and reinforcement-learning methods."""
