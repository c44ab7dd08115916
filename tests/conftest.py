"""Shared fixtures: the sample corpus and a helper that runs the launcher in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from document_processing.samples import create_samples
from main import main


@pytest.fixture
def samples_dir(tmp_path: Path) -> Path:
    """A fresh copy of the sample corpus; its documents are under `documents/`."""
    root = tmp_path / "samples"
    create_samples(root)
    return root


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]):
    """Run `main(argv)` and return (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        status = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


TOKENIZER_TRAINING_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Documents are cut into chunks for training a language model.",
    "def add(a, b): return a + b",
    "| name | value |",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained here on a few sentences, saved like a hub folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(TOKENIZER_TRAINING_SENTENCES, trainer)
    folder = tmp_path_factory.mktemp("tiny-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A very small random Llama with the sample-corpus tokenizer, saved like a hub folder."""
    from training_methods.transfer_learning.tiny_model import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-llama"),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    """A very small random GPT-2 (Conv1D layers) whose tokenizer has no pad token and no chat
    template, like DialoGPT."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=256,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
