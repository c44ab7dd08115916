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
