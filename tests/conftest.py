"""Shared fixtures: the sample corpus, a helper that runs the launcher in-process, tiny models,
the tiny Llama fine-tuned on CHATS and its GGUF files, and two fixtures that modules opt into with
`pytestmark = pytest.mark.usefixtures(...)`: one_torch_thread and llama_cpp_without_amx_repacking.
Plain helpers live in finetune_helpers, gguf_models, gguf_roundtrip and rl_helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from document_processing.samples import create_samples
from main import main
from tests.finetune_helpers import FineTuned, finetune_tiny_llama


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


# --------------------------------------------------------------------------------------------------
# Opted into by modules (not autouse)
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models and networks on a shared 2-core machine: a second intra-op thread only adds
    contention (the RL trainer does the same while it runs). The GGUF, export, chat, evaluate,
    model-loading and RL test modules use it for every test."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def llama_cpp_without_amx_repacking() -> None:
    """llama.cpp's AMX kernels segfault on quantised weights (see
    llama_cpp_runtime.avoid_llama_cpp_amx_crash): on such CPUs the files are run without weight
    repacking. The test_gguf* modules use it for every test."""
    try:
        from shared_utils.llama_cpp_runtime import avoid_llama_cpp_amx_crash

        avoid_llama_cpp_amx_crash()
    except ImportError:  # the tests that need llama-cpp-python fail on their own import
        pass


# --------------------------------------------------------------------------------------------------
# The tiny Llama fine-tuned on CHATS, and its GGUF files
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> FineTuned:
    """tiny_llama fine-tuned on CHATS (finetune_helpers.finetune_tiny_llama) and its merge."""
    return finetune_tiny_llama(tmp_path_factory, tiny_llama)


@pytest.fixture(scope="session")
def gguf_files(tmp_path_factory: pytest.TempPathFactory, finetuned: FineTuned) -> dict[str, Path]:
    """The merged fine-tuned model as f32, f16 and q8_0 GGUF files."""
    from training_methods.transfer_learning.serving.gguf.tensors import GGUF_TYPES
    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    folder = tmp_path_factory.mktemp("gguf")
    return {
        kind: write_gguf(finetuned.merged, folder / f"tiny-{kind}.gguf", kind, progress=False).path
        for kind in GGUF_TYPES
    }
